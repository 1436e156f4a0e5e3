"""The Prometheus text exposition of a store (`ckptfs serve`: GET /metrics).

`render(store, actor=None) -> bytes` asks ckptfs.spool.health for the figures and
hands them to prometheus_client as a custom collector in a private registry (nothing
of the process's own metrics, nothing global). Every metric is named `ckptfs_…` with
its unit; counters end in `_total` and only grow while the store lives (they come from
the index and the journal, so a restart of `ckptfs serve` does not reset them), except
the `ckptfs_daemon_…` ones, which count since the mount daemon started.
docs/monitoring.md lists them with what they mean and the alert rules built on them.

The garbage collector's dry run (`ckptfs_gc_reclaimable_bytes`) reads every chunk's
liveness: it is computed again only when the journal moved on, or after
GC_ESTIMATE_SECONDS.
"""
import threading
import time

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ckptfs.meta.health import gc_dry_run
from ckptfs.spool.health import health, storage

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
GC_ESTIMATE_SECONDS = 300.0


def render(store, actor: dict | None = None) -> bytes:
    """The exposition of `store`, as `actor` (None: this process) may see it."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store, actor))
    return generate_latest(registry)


class StoreCollector:
    """One scrape: the figures are read when prometheus_client collects."""

    def __init__(self, store, actor: dict | None):
        self.store, self.actor = store, actor

    def collect(self):
        report = health(self.store, actor=self.actor)
        space = storage(self.store, self.actor, reclaimable=False)
        yield from project_metrics(space, report)
        yield from store_metrics(space, report)
        yield from inbox_metrics(report, list(space["projects"]))
        yield from verify_metrics(report)
        yield from access_metrics(report, list(space["projects"]))
        yield from gc_metrics(gc_estimate(self.store, self.actor))


def _gauge(name: str, doc: str, value=None, labels=()) -> GaugeMetricFamily:
    if labels:
        return GaugeMetricFamily(name, doc, labels=labels)
    return GaugeMetricFamily(name, doc, value=value)


def _per_project(family, by_project: dict, key=None):
    for project, figures in sorted(by_project.items()):
        family.add_metric([project], figures if key is None else figures[key])
    return family


def _count_by_project(items: list[dict], project_of) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        project = project_of(item) or "*"
        counts[project] = counts.get(project, 0) + 1
    return counts


def _with_zeros(counts: dict[str, int], projects) -> dict[str, int]:
    return {p: counts.get(p, 0) for p in {*projects, *counts}}


def project_metrics(space: dict, report: dict):
    projects, sealed = space["projects"], report["versions_sealed"]
    yield _per_project(_gauge("ckptfs_versions", "Versions in the store (not deleted), per "
                              "project.", labels=["project"]), projects, "versions")
    yield _per_project(_gauge("ckptfs_logical_bytes", "Bytes of the files of the versions in "
                              "the store, as written, per project.", labels=["project"]),
                       projects, "logical_bytes")
    yield _per_project(_gauge("ckptfs_stored_bytes", "Bytes the seals of the project's "
                              "versions added to storage (after dedup and compression).",
                              labels=["project"]), projects, "stored_bytes")
    yield _per_project(CounterMetricFamily("ckptfs_versions_sealed", "Versions ever sealed "
                                           "(deleted ones too), per project.",
                                           labels=["project"]), sealed, "versions")
    yield _per_project(CounterMetricFamily("ckptfs_sealed_logical_bytes", "Logical bytes of "
                                           "every version ever sealed: rate() is the ingest "
                                           "throughput.", labels=["project"]),
                       sealed, "logical_bytes")
    yield _per_project(CounterMetricFamily("ckptfs_sealed_stored_bytes", "Bytes the seals "
                                           "added to storage, ever.", labels=["project"]),
                       sealed, "stored_bytes")
    missing = _count_by_project(report["missing_required_metadata"],
                                lambda item: item["version"].split("/", 1)[0])
    yield _per_project(_gauge("ckptfs_versions_missing_required_metadata", "Versions that do "
                              "not satisfy their project's current schema.",
                              labels=["project"]),
                       _with_zeros(missing, projects))
    damaged = _count_by_project(report["read_errors"]["damaged_versions"],
                                lambda item: item["version"].split("/", 1)[0])
    yield _per_project(_gauge("ckptfs_damaged_versions", "Versions with recorded damage (a "
                              "read that failed, verify, rebuild-index).", labels=["project"]),
                       _with_zeros(damaged, projects))


def store_metrics(space: dict, report: dict):
    totals, verify = space["store"], report["verify"]
    yield _gauge("ckptfs_store_logical_bytes", "Logical bytes of every version in the store.",
                 totals["logical_bytes"])
    yield _gauge("ckptfs_store_unique_bytes", "Bytes of the distinct chunks stored, before "
                 "compression.", totals["unique_bytes"])
    yield _gauge("ckptfs_store_stored_bytes", "Bytes of the distinct chunks stored, after "
                 "compression.", totals["stored_bytes"])
    yield _gauge("ckptfs_store_dedup_ratio", "Logical bytes per unique byte.",
                 totals["dedup_ratio"])
    yield _gauge("ckptfs_store_compression_ratio", "Unique bytes per stored byte.",
                 totals["compression_ratio"])
    if verify["packs"] is not None:  # None: an object store that did not answer
        yield _gauge("ckptfs_packs", "Pack files in the store.", verify["packs"])
        yield _gauge("ckptfs_pack_bytes", "Bytes of the pack files on storage.",
                     verify["pack_bytes"])


def inbox_metrics(report: dict, projects: list[str]):
    """`projects`: shown with 0 when nothing of theirs waits or failed."""
    failures = _count_by_project(report["seal_failures"], lambda f: f["project"])
    yield _per_project(_gauge("ckptfs_seal_failures", "Units of the inbox that failed to "
                              "seal or were refused and still wait (their .error files).",
                              labels=["project"]), _with_zeros(failures, projects))
    pending = _count_by_project(report["pending_inbox"],
                                lambda item: item["version"].split("/", 1)[0])
    yield _per_project(_gauge("ckptfs_inbox_pending_versions", "Units waiting in the inbox "
                              "to be sealed.", labels=["project"]),
                       _with_zeros(pending, projects))
    yield _gauge("ckptfs_inbox_oldest_pending_age_seconds", "Age of the oldest unit waiting "
                 "in the inbox (0: none).", report["oldest_pending_age_seconds"] or 0)
    daemon = report["daemon"]
    yield _gauge("ckptfs_daemon_up", "1 if a mount daemon serves the store.",
                 1 if daemon["running"] else 0)
    # Since the daemon started (0 when none runs): rate() and increase() take a restart
    # for the counter reset it is.
    for name, doc in (("versions_sealed", "Versions the mount daemon sealed"),
                      ("seal_failures", "Seals that failed in the mount daemon"),
                      ("read_errors", "Reads of sealed files that failed (EIO) in the mount"),
                      ("bytes_sealed", "Logical bytes the mount daemon sealed")):
        yield CounterMetricFamily(f"ckptfs_daemon_{name}", f"{doc}, since it started.",
                                  value=daemon[name] or 0)


def verify_metrics(report: dict):
    verify = report["verify"]
    last = verify["last"]
    if last is not None:
        yield _gauge("ckptfs_last_verify_timestamp_seconds", "When the last complete "
                     "verify ended (Unix time).", last["finished_at_unix"])
        yield _gauge("ckptfs_last_verify_success", "1 if the last verify found no damage.",
                     1 if last["ok"] else 0)
    if verify["unverified_packs"] is not None:
        yield _gauge("ckptfs_unverified_packs", "Packs written since the last verify began "
                     "(all of them if none ran).", verify["unverified_packs"])
        yield _gauge("ckptfs_oldest_unverified_pack_age_seconds", "Age of the oldest pack no "
                     "verify has checked (0: none).",
                     verify["oldest_unverified_pack_age_seconds"] or 0)


def access_metrics(report: dict, projects: list[str]):
    """Every project shown (0 if nothing happened yet), so increase() sees the first."""
    zero = {"changes": 0, "refusals": 0}
    access = {p: report["access"].get(p, zero) for p in {*projects, "*", *report["access"]}}
    yield _per_project(CounterMetricFamily("ckptfs_access_changes", "Access changes "
                                           "journaled: grants, revokes, enforcement on/off "
                                           "(project \"*\": store-wide).", labels=["project"]),
                       access, "changes")
    yield _per_project(CounterMetricFamily("ckptfs_access_refusals", "Refused requests "
                                           "journaled.", labels=["project"]),
                       access, "refusals")


def gc_metrics(estimate: dict | None):
    if estimate is not None and estimate.get("available"):
        yield _gauge("ckptfs_gc_reclaimable_bytes", "Bytes of storage `ckptfs gc` would "
                     "reclaim now (its dry run).", estimate["reclaimed_bytes"])
        yield _gauge("ckptfs_gc_versions_to_delete", "Versions the retention policies would "
                     "delete.", len(estimate["versions_deleted"]))


# -- the garbage collector's estimate, cached -------------------------------------------------------
_GC_CACHE: dict[tuple, tuple[int, float, dict]] = {}
_GC_LOCK = threading.Lock()


def gc_estimate(store, actor: dict | None) -> dict:
    """The gc dry run of ckptfs.meta.health, again only when the journal moved on or
    it is older than GC_ESTIMATE_SECONDS."""
    key = (store.path, repr(actor))
    seq = store.applied_seq()
    with _GC_LOCK:
        cached = _GC_CACHE.get(key)
        if cached is None or cached[0] != seq or time.monotonic() - cached[1] > GC_ESTIMATE_SECONDS:
            cached = (seq, time.monotonic(), gc_dry_run(store, actor))
            _GC_CACHE[key] = cached
        return cached[2]
