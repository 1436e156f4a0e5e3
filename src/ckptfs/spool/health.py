"""The inbox's side of a store's health, and the whole `health(store, now=None)` that
`ckptfs serve`'s health page and /metrics show (the store's side is
ckptfs.meta.health; this module is in the spool package because it reads the spool).

What it reads:

* seal failures: the error files of the spool (`spool/errors/`): a unit of the inbox
  that failed to seal (it does not satisfy its project's schema, it holds an unsafe
  pickle, the disk was full) or was refused, for as long as it waits there; and the
  running daemon's count since it started;
* pending inbox versions and their age: the running daemon's own report
  (`spool/daemon-stats.json`, rewritten every few seconds) when one serves the store,
  else the spool's files (a unit's age: its oldest file's modification time);
* read errors: the running daemon's count of failed reads since it started, with the
  damage the index records (ckptfs.meta.health).
"""
import os
from datetime import datetime

from ckptfs.meta.health import Visibility, as_utc, iso, store_health, storage

__all__ = ["health", "storage"]  # storage: ckptfs.meta.health's, given here too

from . import daemon as spool_daemon
from .directory import Spool
from .layout import ERROR_SUFFIX, ERRORS

DAEMON_COUNTERS = ("versions_sealed", "seal_failures", "seal_retries", "bytes_sealed",
                   "read_errors")


def health(store, now: datetime | None = None, actor: dict | None = None) -> dict:
    """Versions sealed per hour over the last 48 h, seal failures, pending inbox
    versions with their age, read errors, the last verify and the oldest unverified
    pack, access changes, versions missing required metadata (docs/monitoring.md).
    `actor` (None: this process) sees only the projects it may read."""
    now = as_utc(now)
    visible = Visibility(store, actor)
    daemon = daemon_report(store)
    pending = pending_inbox(store, visible, daemon, now)
    report = store_health(store, now, actor)
    report.update(
        daemon=public_daemon(daemon),
        seal_failures=seal_failures(store, visible, now),
        pending_inbox=pending,
        oldest_pending_age_seconds=max((p["age_seconds"] for p in pending
                                        if p["age_seconds"] is not None), default=None),
        read_errors={"since_mount": (daemon["stats"] or {}).get("read_errors"),
                     "damaged_versions": report.pop("damaged_versions")})
    return report


def daemon_report(store) -> dict:
    """Whether a mount daemon serves the store, and its counters (its spool file)."""
    serving = spool_daemon.serving(store.path)
    stats = spool_daemon.running_stats(store.path) if serving else None
    return {"running": serving is not None, "serving": serving or {}, "stats": stats}


def public_daemon(daemon: dict) -> dict:
    """The daemon as the health page shows it; its counters are since it started (None
    when no daemon runs, or it has not written them yet)."""
    stats = daemon["stats"] or {}
    return {"running": daemon["running"], "pid": daemon["serving"].get("pid"),
            "mountpoint": daemon["serving"].get("mountpoint"),
            "since": daemon["serving"].get("since"),
            "counters_at": iso(stats.get("written_at")),
            **{name: stats.get(name) for name in DAEMON_COUNTERS}}


def seal_failures(store, visible: Visibility, now: datetime) -> list[dict]:
    """The error files of the spool, oldest first: {"path" (below inbox/), "project",
    "error" (its first line), "at", "age_seconds"}. Something refused at the inbox's
    top (no project) is shown to whoever may read every project."""
    base = Spool(store.path).area(ERRORS)
    found = []
    for dirpath, _dirs, files in os.walk(base):
        for name in files:
            if name.endswith(ERROR_SUFFIX):
                failure = _failure(base, os.path.join(dirpath, name), now)
                if failure is not None and visible.project(failure["project"]):
                    found.append(failure)
    return sorted(found, key=lambda f: f["at"])


def _failure(base: str, path: str, now: datetime) -> dict | None:
    rel = os.path.relpath(path, base)[:-len(ERROR_SUFFIX)].replace(os.sep, "/")
    try:
        at = os.stat(path).st_mtime
        with open(path, errors="replace") as f:
            first_line = f.readline().strip()
    except OSError:
        return None  # cleared meanwhile (sealed after all)
    return {"path": rel, "project": rel.split("/", 1)[0] if "/" in rel else None,
            "error": first_line, "at": iso(at), "age_seconds": round(now.timestamp() - at, 1)}


def pending_inbox(store, visible: Visibility, daemon: dict, now: datetime) -> list[dict]:
    """What waits in the inbox ({"version", "kind", "state", "age_seconds", "error"}):
    as the running daemon last reported it (ages brought up to `now`), else as the
    spool holds it."""
    if daemon["stats"] is not None:
        late = max(0.0, now.timestamp() - daemon["stats"].get("written_at", now.timestamp()))
        # Its refusals (paths refused at the inbox or project level) are not versions:
        # they are among the seal failures (their error files).
        items = [dict(item, age_seconds=None if item.get("age_seconds") is None
                      else round(item["age_seconds"] + late, 1))
                 for item in daemon["stats"].get("pending_inbox_versions") or []
                 if item.get("state") != "refused"]
    else:
        held = not daemon["running"] and spool_daemon.last_daemon_died(store.path)
        items = spooled_units(store, now, held)
    return [item for item in items if visible.version(item["version"])]


def spooled_units(store, now: datetime, held: bool) -> list[dict]:
    """The units in the spool when no daemon reports on them; a unit's age is its
    oldest file's. `held`: the last daemon died, so they wait for a write or `ckptfs
    seal`."""
    spool = Spool(store.path)
    state = "held (its daemon died)" if held else "spooled"
    out = []
    for p, r in spool.runs():
        run_dir = spool.run_dir(p, r)
        for unit in spool.units(p, r):
            out.append({"version": f"{p}/{r}/{unit.path}".rstrip("/"), "kind": unit.kind,
                        "state": state, "error": None,
                        "age_seconds": _age_of_oldest(run_dir, unit.members, now)})
    return out


def _age_of_oldest(root: str, members, now: datetime) -> float | None:
    times = []
    for member in members:
        try:
            times.append(os.lstat(os.path.join(root, member)).st_mtime)
        except OSError:
            continue  # sealed or removed meanwhile
    return round(now.timestamp() - min(times), 1) if times else None
