"""`ckptfs seal` and `ckptfs status` on a store's inbox, with or without a mount daemon.

With a daemon serving the store, `ckptfs seal` leaves a request in `spool/requests/` and
waits for the outcome in the store (the version) or the spool (an error file). With
none, it seals here, through the same Inbox code the daemon runs.
"""
import os
import time

import trio

from ckptfs.meta.layout import units_asked

from . import daemonlock
from .inbox import Inbox
from .sealer import UnitState
from .spool import REQUESTS, Spool, write_json_atomically


def seal_offline(store, project: str, run: str, path: str) -> tuple[list[str], list[str]]:
    """Seal the unit at `path` of run p/r (every unit of the run for ""): (lines saying
    what was sealed, errors)."""
    inbox = Inbox(store, seal_after=0.0, daemon=False)
    keys = _requested_keys(inbox, (project, run), path)
    sealed, errors = [], []

    async def seal_all():
        for key in keys:
            before = inbox.counters["versions_sealed"]
            await inbox.sealer.seal(key)
            state = inbox.sealer.units.get(key)
            if inbox.counters["versions_sealed"] > before:
                sealed.append(f"sealed {'/'.join(key[:3]).rstrip('/')}: {inbox.sealer.last_sealed}")
            elif state is not None and state.error:
                errors.append(state.error)
    try:
        trio.run(seal_all)
    finally:
        inbox.close()
    return sealed, errors


def _requested_keys(inbox: Inbox, run: tuple, path: str) -> list[tuple]:
    keys = []
    for unit in units_asked(inbox.units_of(*run), path):
        key = (*run, unit.path, None)
        inbox.sealer.units.setdefault(key, UnitState(unit)).requested = True
        keys.append(key)
    keys += [k for k, s in inbox.sealer.units.items()
             if k[:2] == run and k[3] is not None and (not path or k[2] == path)]
    return keys


def nothing_waits(store, project: str, run: str, path: str) -> str | None:
    """Why `ckptfs seal P/R/PATH` has nothing to do, or None."""
    spool = Spool(store.path)
    if path and (os.path.lexists(os.path.join(spool.run_dir(project, run), path))
                 or any(u.path == path for _b, u in spool.removed_batches(project, run))):
        return None
    if not path and (spool.units(project, run) or spool.removed_batches(project, run)):
        return None
    ref = f"{project}/{run}/{path}".rstrip("/")
    docs = store.catalog_documents(project, run, fields=[("inbox",)]) if path else []
    if any(_written_at(d, path) or d["version"] == path for d in docs):
        return f"{ref} is already sealed"
    return f"nothing of {ref} waits in the inbox"


def request_seal(store_path: str, project: str, run: str, path: str) -> None:
    spool = Spool(store_path)
    write_json_atomically(spool.area(REQUESTS, spool.new_id() + ".json"),
                          {"project": project, "run": run, "path": path})


def wait_for_seal(store_path: str, project: str, run: str, path: str, start_seq: int,
                  timeout: float) -> str:
    """Wait until the daemon sealed what was asked ("sealed …") or failed ("…")."""
    from ckptfs.store import Store
    spool = Spool(store_path)
    asked = time.time()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pending = any(not path or u.path == path or path.startswith(u.path + "/")
                      or u.path.startswith(path + "/")
                      for u in spool.units(project, run)) or \
            any(not path or u.path == path for _b, u in spool.removed_batches(project, run))
        with Store.open(store_path) as s:
            new = [d for d in s.catalog_documents(project, run, fields=[("inbox",)])
                   if d["seq"] > start_seq and _written_at(d, path)]
        if new and not pending:
            return "sealed " + ", ".join(f"{project}/{run}/{d['version']}" for d in new)
        failure = _newest_error(spool, f"{project}/{run}", asked)
        if failure:
            return failure
        if daemonlock.holder(store_path) is None:
            return (f"the mount daemon stopped before it sealed {project}/{run}/{path}; "
                    "run `ckptfs seal` again").replace("/;", ";")
        time.sleep(0.2)
    return (f"{project}/{run}/{path} was not sealed within {timeout:.0f} s (files still open "
            "in it?)").replace("//", "/")


def _written_at(doc: dict, path: str) -> bool:
    where = (doc.get("inbox") or {}).get("path") if isinstance(doc.get("inbox"), dict) else None
    if not path:
        return True
    return where is not None and (where == path or path.startswith(where + "/")
                                  or where.startswith(path + "/"))


def _newest_error(spool: Spool, run_rel: str, since: float) -> str | None:
    base = spool.area("errors", run_rel)
    for dirpath, _dirs, files in os.walk(base):
        for name in files:
            full = os.path.join(dirpath, name)
            if os.stat(full).st_mtime >= since:
                with open(full, errors="replace") as f:
                    return f.readline().strip()
    return None


def spooled_units(store) -> list[dict]:
    """What waits in the inbox of a store no daemon serves (for `ckptfs status`)."""
    spool = Spool(store.path)
    out = []
    for p, r in spool.runs():
        for unit in spool.units(p, r):
            out.append({"version": f"{p}/{r}/{unit.path}".rstrip("/"), "kind": unit.kind,
                        "state": "spooled", "age_seconds": None, "error": None})
        for _batch, unit in spool.removed_batches(p, r):
            out.append({"version": f"{p}/{r}/{unit.path}", "kind": unit.kind,
                        "state": "removed, not sealed yet", "age_seconds": None, "error": None})
    return out
