"""A store's health and storage figures from the store alone (index, journal, packs),
for the dashboard (`ckptfs serve`: the health and storage pages) and the Prometheus
exposition (ckptfs.web.metrics). What waits in the mount's inbox is the spool's:
ckptfs.spool.health adds it and gives the whole `health(store, now=None)`.

`store_health(store, now, actor)` and `storage(store, actor)` return plain,
JSON-serialisable dicts. Where each figure comes from (docs/monitoring.md says the same
for the metrics):

* versions sealed, their time and bytes: the index's version records and tombstones
  (a deleted version was sealed all the same);
* damage: what the index records (a read that failed, `verify`, `rebuild-index`);
* the last verify and the packs written since it began (unverified):
  `logs/last-verify.json` (store/verify.py) and the packs' times;
* access changes and refusals: the journal (read once, then only what was appended);
* versions missing required metadata: those that do not satisfy their project's
  current schema (`ckptfs schema set`: a schema's `required` is what a project
  requires); versions sealed before the schema was set or tightened;
* what `gc --dry-run` would reclaim: the garbage collector's own dry run.

`actor` ({"uid", "gids", "pid"}; None: this process) limits everything about a project
to the projects it may read, as `ckptfs ls STORE` and `audit` do; store-wide figures
(packs, the last verify, totals) show no project's content and are always given, as
`ckptfs stats` and `verify` give them (docs/access.md).
"""
import json
import threading
import time
from collections import deque
from datetime import datetime, timedelta, timezone

from ckptfs.store import StoreError
from ckptfs.store.backend import BackendUnavailableError
from ckptfs.store.names import ALL_PROJECTS
from ckptfs.store.pack import pack_objects
from ckptfs.store.verify import load_last_verify

from .schema import failures
from .sidecar import version_sidecar

HOURS_SHOWN = 48
ACCESS_CHANGES = ("access.granted", "access.revoked", "access.enforcement")
ACCESS_REFUSED = "access.refused"
UNREACHABLE = (StoreError, BackendUnavailableError, OSError)


# -- time ----------------------------------------------------------------------------------------
def parse_time(text: str) -> datetime:
    """A journal time ("2026-12-03T23:10:32.123456Z") as an aware datetime."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def iso(moment: datetime | float | None) -> str | None:
    if moment is None:
        return None
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment, timezone.utc)
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def as_utc(now: datetime | None) -> datetime:
    now = now or datetime.now(timezone.utc)
    return now if now.tzinfo else now.replace(tzinfo=timezone.utc)


# -- who may see what ----------------------------------------------------------------------------
class Visibility:
    """Which projects the actor may read (asked once per project per call)."""

    def __init__(self, store, actor: dict | None):
        self.store, self.actor = store, actor
        self._known: dict[str, bool] = {}

    def project(self, project: str | None) -> bool:
        """Project None (something of no project, e.g. a refusal at the inbox's top):
        whoever may read every project."""
        project = project or ALL_PROJECTS
        if project not in self._known:
            self._known[project] = self.store.allowed(self.actor, project, "reader")
        return self._known[project]

    def version(self, name: str) -> bool:
        return self.project(name.split("/", 1)[0])


_VERSIONS: dict[str, tuple[int, list[dict]]] = {}  # store path -> (journal seq, records)


def live_versions(store) -> list[dict]:
    """The index records of the versions in the store, read again only when the journal
    moved on (a page and a scrape both ask; 10,000 records take a while to decode).
    Callers must not change them."""
    seq = store.applied_seq()
    cached = _VERSIONS.get(store.path)
    if cached is None or cached[0] != seq:
        cached = _VERSIONS[store.path] = (seq, store.all_versions())
    return cached[1]


def sealed_records(store, visible: Visibility) -> list[dict]:
    """The index records of every version ever sealed that the actor may see: the live
    ones and the deleted ones' (each with `deleted`)."""
    live = [r for r in live_versions(store) if visible.project(r["project"])]
    gone = [dict(t["record"], deleted=True) for t in store.tombstones()
            if visible.project(t["record"]["project"])]
    return live + gone


# -- health ---------------------------------------------------------------------------------------
def store_health(store, now: datetime | None = None, actor: dict | None = None) -> dict:
    """The store's side of the health page (module docstring). `now` (UTC) places the
    48 hourly bins and measures ages."""
    now = as_utc(now)
    visible = Visibility(store, actor)
    records = sealed_records(store, visible)
    return {
        "now": iso(now),
        "sealed_per_hour": sealed_per_hour(records, now),
        "versions_sealed": sealed_totals(records),
        "damaged_versions": damaged_versions(store, visible),
        "verify": verify_report(store, now),
        "access": access_events(store, visible),
        "missing_required_metadata": missing_required_metadata(store, visible),
    }


def sealed_per_hour(records: list[dict], now: datetime) -> list[dict]:
    """Versions sealed (and their logical bytes) in each of the last 48 hours, oldest
    first; the last bin is the hour under way."""
    this_hour = now.replace(minute=0, second=0, microsecond=0)
    first = this_hour - timedelta(hours=HOURS_SHOWN - 1)
    bins = [{"hour": iso(first + timedelta(hours=i)), "versions": 0, "logical_bytes": 0}
            for i in range(HOURS_SHOWN)]
    for record in records:
        sealed = parse_time(record["sealed_at"])
        slot = int((sealed - first).total_seconds() // 3600)
        if 0 <= slot < HOURS_SHOWN and sealed <= now:
            bins[slot]["versions"] += 1
            bins[slot]["logical_bytes"] += record["logical_bytes"]
    return bins


def sealed_totals(records: list[dict]) -> dict:
    """Per project, every version ever sealed (deleted ones too): how many, their
    logical bytes and the bytes they added to storage. They only grow: counters."""
    totals: dict[str, dict] = {}
    for record in records:
        t = totals.setdefault(record["project"], {"versions": 0, "logical_bytes": 0,
                                                  "stored_bytes": 0})
        t["versions"] += 1
        t["logical_bytes"] += record["logical_bytes"]
        t["stored_bytes"] += record["new_stored_bytes"]
    return dict(sorted(totals.items()))


# -- damage, verify ------------------------------------------------------------------------------
def damaged_versions(store, visible: Visibility) -> list[dict]:
    """The damage the index records (by a read that failed, `verify` or
    `rebuild-index`), of the versions the actor may see."""
    return [{"version": f"{d['project']}/{d['run']}/{d['version']}",
             "files": sorted(d.get("files") or {}), "file_list_lost": bool(d.get("manifest"))}
            for d in store.version_damage() if visible.project(d["project"])]


def verify_report(store, now: datetime) -> dict:
    """The last complete verify (when, whether it found damage) and the packs written
    after it began (not verified yet): how many, and the oldest one's age."""
    last = load_last_verify(store.path)
    since = last["started_at"] if last else None
    try:
        packs = pack_objects(store.backend)
    except UNREACHABLE:  # an object store that cannot be reached
        packs = None
    unverified = None if packs is None else [
        info.mtime for info in packs.values()
        if since is None or info.mtime is None or info.mtime >= since]
    known_times = [t for t in unverified or () if t is not None]
    return {
        "last": None if last is None else {
            "started_at": iso(last["started_at"]), "finished_at": iso(last["finished_at"]),
            "finished_at_unix": last["finished_at"],
            "age_seconds": round(now.timestamp() - last["finished_at"], 1),
            **{k: v for k, v in last.items() if k not in ("started_at", "finished_at")}},
        "packs": None if packs is None else len(packs),
        "pack_bytes": None if packs is None else sum(i.size for i in packs.values()),
        "unverified_packs": None if unverified is None else len(unverified),
        "oldest_unverified_pack_age_seconds":
            round(now.timestamp() - min(known_times), 1) if known_times else None,
    }


# -- the journal: access changes ------------------------------------------------------------------
class JournalTally:
    """Counts of journal entries by (type, project), kept per store and brought up to
    date by reading only the entries appended since (the journal only grows)."""

    def __init__(self):
        self.seq = 0
        self.counts: dict[tuple[str, str | None], int] = {}
        self.lock = threading.Lock()

    def update(self, store) -> dict:
        with self.lock:
            if store.journal.last_seq() < self.seq:  # another store made at the same path
                self.seq, self.counts = 0, {}
            for entry in store.journal.entries(after_seq=self.seq, verify_chain=False):
                key = (entry["type"], entry.get("project"))
                self.counts[key] = self.counts.get(key, 0) + 1
                self.seq = entry["seq"]
            return dict(self.counts)


_TALLIES: dict[str, JournalTally] = {}


def journal_counts(store) -> dict:
    tally = _TALLIES.setdefault(store.path, JournalTally())
    return tally.update(store)


def access_events(store, visible: Visibility) -> dict:
    """Per project ("*": store-wide), how many access changes (grants, revokes,
    enforcement switched) and refusals the journal holds."""
    out: dict[str, dict] = {}
    for (kind, project), n in journal_counts(store).items():
        if kind not in ACCESS_CHANGES and kind != ACCESS_REFUSED:
            continue
        scope = project or ALL_PROJECTS
        if not visible.project(scope):
            continue
        counts = out.setdefault(scope, {"changes": 0, "refusals": 0})
        counts["refusals" if kind == ACCESS_REFUSED else "changes"] += n
    return dict(sorted(out.items()))


def audit_log(store, actor: dict | None = None, project: str | None = None,
              user: str | None = None, event: str | None = None, limit: int = 200) -> list[dict]:
    """The newest `limit` journal entries the actor may see (as `ckptfs audit` shows
    them), newest first; only those of `project`, of `user` (a name, or a uid as
    digits) and of type `event` (e.g. "access.granted", or a prefix ending in ".":
    "access.") when given."""
    newest = deque(maxlen=max(0, limit))
    for entry in store.journal.entries(verify_chain=False):
        if project is not None and entry.get("project") != project:
            continue
        if user is not None and user not in (entry.get("user"), str(entry.get("uid"))):
            continue
        if event is not None and not (entry["type"] == event or
                                      (event.endswith(".") and entry["type"].startswith(event))):
            continue
        if store.entry_visible(actor, entry):
            newest.append(entry)
    return list(reversed(newest))


# -- required metadata ------------------------------------------------------------------------------
class SchemaChecks:
    """Which versions fail their project's current schema, for one store. A version's
    result is kept under (its seq, its tags, the schema): after a seal only the new
    version is checked; after a schema change, that project's versions again."""

    def __init__(self):
        self.seq = None
        self.results: dict[tuple, list[str]] = {}
        self.lock = threading.Lock()

    def findings(self, store) -> dict[str, list[str]]:
        with self.lock:
            seq = store.applied_seq()
            if seq != self.seq:
                self.results = self._check(store)
                self.seq = seq
            return {key[0]: found for key, found in self.results.items() if found}

    def _check(self, store) -> dict[tuple, list[str]]:
        results = {}
        for project in store.projects():
            schema = store.project_schema(project)
            if schema is None:
                continue
            schema_key = json.dumps(schema, sort_keys=True)
            for doc in store.catalog_documents(project):
                p, r, v = doc["project"], doc["run"], doc["version"]
                key = (f"{p}/{r}/{v}", doc["seq"], tuple(doc.get("tags") or ()), schema_key)
                if key not in self.results:
                    self.results[key] = failures(schema, version_sidecar(doc, store.walk(p, r, v)))
                results[key] = self.results[key]
        return results


_SCHEMA_CHECKS: dict[str, SchemaChecks] = {}


def missing_required_metadata(store, visible: Visibility) -> list[dict]:
    """Versions whose sidecar does not satisfy their project's current schema
    ({"version", "failures"}), of the projects the actor may read."""
    checks = _SCHEMA_CHECKS.setdefault(store.path, SchemaChecks())
    return [{"version": name, "failures": found}
            for name, found in sorted(checks.findings(store).items()) if visible.version(name)]


# -- storage -------------------------------------------------------------------------------------
def storage(store, actor: dict | None = None, reclaimable: bool = True) -> dict:
    """Logical against stored bytes per project and run, and over time by seal date;
    dedup and compression ratios; with `reclaimable`, what `gc --dry-run` would
    reclaim.

    A version's stored bytes are those its seal added (new chunks, after compression):
    a chunk shared by later versions counts once, for the version that stored it first.
    `store` is the whole store as `ckptfs stats` gives it (not restricted)."""
    visible = Visibility(store, actor)
    versions = [r for r in live_versions(store) if visible.project(r["project"])]
    return {
        "store": store_totals(store),
        "projects": _by(versions, lambda r: r["project"]),
        "runs": _by(versions, lambda r: f"{r['project']}/{r['run']}"),
        "timeline": timeline(versions),
        "gc": gc_dry_run(store, actor) if reclaimable else None,
    }


def _figures(records) -> dict:
    logical = sum(r["logical_bytes"] for r in records)
    unique = sum(r["new_raw_bytes"] for r in records)
    stored = sum(r["new_stored_bytes"] for r in records)
    return {"versions": len(records), "logical_bytes": logical, "unique_bytes": unique,
            "stored_bytes": stored,
            "dedup_ratio": round(logical / unique, 3) if unique else None,
            "compression_ratio": round(unique / stored, 3) if stored and unique else None,
            "ratio": round(logical / stored, 3) if stored else None}


def _by(records: list[dict], key) -> dict:
    groups: dict[str, list] = {}
    for record in records:
        groups.setdefault(key(record), []).append(record)
    return {name: _figures(group) for name, group in sorted(groups.items())}


def timeline(records: list[dict]) -> list[dict]:
    """By seal date (UTC days with a seal), the logical and stored bytes of the versions
    sealed up to the end of that day, in all and per project (still present ones)."""
    by_day: dict[str, list] = {}
    for record in records:
        by_day.setdefault(record["sealed_at"][:10], []).append(record)
    total = {"logical_bytes": 0, "stored_bytes": 0}
    per_project: dict[str, dict] = {}
    out = []
    for day in sorted(by_day):
        for record in by_day[day]:
            figures = per_project.setdefault(record["project"],
                                             {"logical_bytes": 0, "stored_bytes": 0})
            for target in (total, figures):
                target["logical_bytes"] += record["logical_bytes"]
                target["stored_bytes"] += record["new_stored_bytes"]
        out.append({"date": day, "versions": len(by_day[day]), **total,
                    "projects": {p: dict(f) for p, f in sorted(per_project.items())}})
    return out


def store_totals(store) -> dict:
    """The index's figures of the whole store (no listing of the packs)."""
    st = store.index_stats()
    return {k: st[k] for k in ("projects", "runs", "versions", "deleted_versions", "files",
                               "logical_bytes", "unique_bytes", "stored_bytes", "chunks")} | {
        "dedup_ratio": round(st["dedup_ratio"], 3),
        "compression_ratio": round(st["compression_ratio"], 3)}


def refusal_reason(store, refused, actor: dict | None) -> str:
    """Why the estimate is not shown, naming the project only to an actor who may read
    it (the refusal's own words name the project)."""
    if store.allowed(actor, refused.project, "reader"):
        return str(refused)
    return ("retention would delete versions in a project you may not read; only its "
            "maintainers see what gc would reclaim")


def gc_dry_run(store, actor: dict | None = None) -> dict:
    """What `ckptfs gc --dry-run` says it would do, or why it cannot be said: a plan
    that deletes versions is for maintainers of their projects (asked first, so a
    page view journals no refusal), a store that cannot be reached."""
    started = time.monotonic()
    try:
        refused = store.retention.refusal(store.plan_retention().deletions, actor)
        if refused is not None:
            return {"available": False, "reason": refusal_reason(store, refused, actor)}
        report = store.collect_garbage(dry_run=True, actor=actor)
    except UNREACHABLE as e:
        return {"available": False, "reason": str(e)}
    return {"available": True,
            "versions_deleted": [d.ref for d in report.deletions],
            "reclaimed_bytes": max(0, report.pack_bytes_before - report.pack_bytes_after),
            "freed_chunks": report.freed_chunks, "freed_bytes": report.freed_bytes,
            "freed_by_deletions": report.freed_by_deletions,
            "pack_bytes_before": report.pack_bytes_before,
            "pack_bytes_after": report.pack_bytes_after,
            "packs_rewritten": len(report.packs_rewritten),
            "packs_dropped": len(report.packs_dropped),
            "seconds": round(time.monotonic() - started, 3)}
