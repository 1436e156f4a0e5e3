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
        projects = list(space["projects"])
        yield from per_project(PROJECT_GAUGES, GaugeMetricFamily, space["projects"])
        yield from per_project(SEALED_COUNTERS, CounterMetricFamily, report["versions_sealed"])
        yield from per_project(COUNTED_GAUGES, GaugeMetricFamily,
                               counted_by_project(report, projects))
        yield from per_project(ACCESS_COUNTERS, CounterMetricFamily,
                               access_by_project(report, projects))
        yield from unlabelled(GaugeMetricFamily, store_gauges(space, report))
        yield from unlabelled(CounterMetricFamily, daemon_counters(report))
        yield from unlabelled(GaugeMetricFamily, gc_gauges(gc_estimate(self.store, self.actor)))


# (metric name, help, the key of a project's figures); counters' names get `_total`.
PROJECT_GAUGES = (
    ("ckptfs_versions", "Versions in the store (not deleted), per project.", "versions"),
    ("ckptfs_logical_bytes", "Bytes of the files of the versions in the store, as written.",
     "logical_bytes"),
    ("ckptfs_stored_bytes", "Bytes the seals of the project's versions added to storage "
     "(after dedup and compression).", "stored_bytes"),
)
SEALED_COUNTERS = (
    ("ckptfs_versions_sealed", "Versions ever sealed (deleted ones too).", "versions"),
    ("ckptfs_sealed_logical_bytes", "Logical bytes of every version ever sealed: rate() is "
     "the ingest throughput.", "logical_bytes"),
    ("ckptfs_sealed_stored_bytes", "Bytes the seals added to storage, ever.", "stored_bytes"),
)
COUNTED_GAUGES = (
    ("ckptfs_versions_missing_required_metadata", "Versions that do not satisfy their "
     "project's current schema.", "missing_required_metadata"),
    ("ckptfs_damaged_versions", "Versions with recorded damage (a read that failed, verify, "
     "rebuild-index).", "damaged_versions"),
    ("ckptfs_seal_failures", "Units of the inbox that failed to seal or were refused and "
     "still wait (their .error files; project \"*\": outside any project).", "seal_failures"),
    ("ckptfs_inbox_pending_versions", "Units waiting in the inbox to be sealed.",
     "pending_inbox"),
)
ACCESS_COUNTERS = (
    ("ckptfs_access_changes", "Access changes journaled: grants, revokes, enforcement on/off "
     "(project \"*\": store-wide).", "changes"),
    ("ckptfs_access_refusals", "Refused requests journaled.", "refusals"),
)


def per_project(table, family_type, by_project: dict):
    """One family per row of `table`, a sample per project of `by_project`."""
    for name, doc, key in table:
        family = family_type(name, doc, labels=["project"])
        for project, figures in sorted(by_project.items()):
            family.add_metric([project], figures[key])
        yield family


def unlabelled(family_type, figures):
    """A family per (name, help, value); a value of None is left out (not known)."""
    for name, doc, value in figures:
        if value is not None:
            yield family_type(name, doc, value=value)


def project_of_item(item: dict) -> str:
    """The project of a health item: its own `project`, else its version's first part;
    "*" for something of no project."""
    if "project" in item:
        return item["project"] or "*"
    return item["version"].split("/", 1)[0]


def counted_by_project(report: dict, projects: list[str]) -> dict[str, dict]:
    """{project: {list name: how many of its items}} for COUNTED_GAUGES, 0 for every
    project that has versions (so an alert sees the first)."""
    lists = {"missing_required_metadata": report["missing_required_metadata"],
             "damaged_versions": report["read_errors"]["damaged_versions"],
             "seal_failures": report["seal_failures"], "pending_inbox": report["pending_inbox"]}
    counts = {p: dict.fromkeys(lists, 0) for p in projects}
    for list_name, items in lists.items():
        for item in items:
            counts.setdefault(project_of_item(item), dict.fromkeys(lists, 0))[list_name] += 1
    return counts


def access_by_project(report: dict, projects: list[str]) -> dict[str, dict]:
    """Every project shown (0 if nothing happened yet), so increase() sees the first."""
    zero = {"changes": 0, "refusals": 0}
    return {p: report["access"].get(p, zero) for p in {*projects, "*", *report["access"]}}


def store_gauges(space: dict, report: dict) -> list[tuple]:
    totals, verify, last = space["store"], report["verify"], report["verify"]["last"]
    return [
        ("ckptfs_store_logical_bytes", "Logical bytes of every version in the store.",
         totals["logical_bytes"]),
        ("ckptfs_store_unique_bytes", "Bytes of the distinct chunks stored, before "
         "compression.", totals["unique_bytes"]),
        ("ckptfs_store_stored_bytes", "Bytes of the distinct chunks stored, after "
         "compression.", totals["stored_bytes"]),
        ("ckptfs_store_dedup_ratio", "Logical bytes per unique byte.", totals["dedup_ratio"]),
        ("ckptfs_store_compression_ratio", "Unique bytes per stored byte.",
         totals["compression_ratio"]),
        # None while an object store does not answer: left out
        ("ckptfs_packs", "Pack files in the store.", verify["packs"]),
        ("ckptfs_pack_bytes", "Bytes of the pack files on storage.", verify["pack_bytes"]),
        ("ckptfs_inbox_oldest_pending_age_seconds", "Age of the oldest unit waiting in the "
         "inbox (0: none).", report["oldest_pending_age_seconds"] or 0),
        ("ckptfs_daemon_up", "1 if a mount daemon serves the store.",
         1 if report["daemon"]["running"] else 0),
        # left out until a verify ran
        ("ckptfs_last_verify_timestamp_seconds", "When the last complete verify ended (Unix "
         "time).", None if last is None else last["finished_at_unix"]),
        ("ckptfs_last_verify_success", "1 if the last verify found no damage.",
         None if last is None else int(bool(last["ok"]))),
        ("ckptfs_unverified_packs", "Packs written since the last verify began (all of them "
         "if none ran).", verify["unverified_packs"]),
        ("ckptfs_oldest_unverified_pack_age_seconds", "Age of the oldest pack no verify has "
         "checked (0: none).", None if verify["unverified_packs"] is None
         else verify["oldest_unverified_pack_age_seconds"] or 0),
    ]


def daemon_counters(report: dict) -> list[tuple]:
    """Since the daemon started (0 when none runs): rate() and increase() take a restart
    for the counter reset it is."""
    daemon = report["daemon"]
    return [(f"ckptfs_daemon_{key}", f"{doc}, since it started.", daemon[key] or 0)
            for key, doc in (("versions_sealed", "Versions the mount daemon sealed"),
                             ("seal_failures", "Seals that failed in the mount daemon"),
                             ("read_errors", "Reads of sealed files that failed (EIO) in "
                              "the mount"),
                             ("bytes_sealed", "Logical bytes the mount daemon sealed"))]


def gc_gauges(estimate: dict) -> list[tuple]:
    """Left out for a user who may not plan the deletions, or a store that did not
    answer."""
    available = estimate.get("available")
    return [("ckptfs_gc_reclaimable_bytes", "Bytes of storage `ckptfs gc` would reclaim now "
             "(its dry run).", estimate["reclaimed_bytes"] if available else None),
            ("ckptfs_gc_versions_to_delete", "Versions the retention policies would delete.",
             len(estimate["versions_deleted"]) if available else None)]


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
