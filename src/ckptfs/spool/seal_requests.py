"""`ckptfs seal` and `ckptfs status` from outside the daemon.

With a daemon serving the store, `ckptfs seal` leaves a request in `spool/requests/`
(`request_seal`); the daemon takes it on its next round (`take_requests`); the command
waits for the outcome (`wait_for_seal`): the version in the store, an error file in the
spool, or the daemon gone. What waits in the inbox is read from the spool alone
(`nothing_waits`, `spooled_units`), with or without a daemon.
"""
import os
import time

from ckptfs.store import Store

from . import daemon
from .directory import Spool
from .layout import REQUESTS, read_json, write_json_atomically


def request_seal(store_path: str, project: str, run: str, path: str) -> None:
    """Ask the running daemon to seal the unit at `path` of run p/r ("": all of it)."""
    spool = Spool(store_path)
    # The pid too: two `ckptfs seal` started within a millisecond get the same id.
    write_json_atomically(spool.area(REQUESTS, f"{spool.new_id()}-{os.getpid()}.json"),
                          {"project": project, "run": run, "path": path})


def take_requests(spool: Spool) -> list[tuple[str, str, str]]:
    """The daemon's side: (project, run, path) of each request waiting, oldest first;
    each is taken (removed) once. A damaged request is dropped."""
    base = spool.area(REQUESTS)
    taken = []
    for name in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        request = read_json(os.path.join(base, name))
        try:
            os.unlink(os.path.join(base, name))
        except FileNotFoundError:
            continue
        if not isinstance(request, dict):
            continue
        asked = (request.get("project"), request.get("run"), request.get("path", ""))
        if all(isinstance(part, str) for part in asked):
            taken.append(asked)
    return taken


def wait_for_seal(store_path: str, project: str, run: str, path: str, start_seq: int,
                  timeout: float) -> str:
    """Wait until the daemon sealed what was asked ("sealed …") or failed ("…")."""
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
        failure = spool.newest_error(f"{project}/{run}", asked)
        if failure:
            return failure
        if daemon.holder(store_path) is None:
            return (f"the mount daemon stopped before it sealed {project}/{run}/{path}; "
                    "run `ckptfs seal` again").replace("/;", ";")
        time.sleep(0.2)
    return (f"{project}/{run}/{path} was not sealed within {timeout:.0f} s (files still open "
            "in it?)").replace("//", "/")


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


def _written_at(doc: dict, path: str) -> bool:
    """Was version `doc` written at `path` of its run directory (or above, or below)?"""
    where = (doc.get("inbox") or {}).get("path") if isinstance(doc.get("inbox"), dict) else None
    if not path:
        return True
    return where is not None and (where == path or path.startswith(where + "/")
                                  or where.startswith(path + "/"))


def spooled_units(store) -> list[dict]:
    """What waits in the inbox of a store no daemon serves (for `ckptfs status`): of the
    projects the caller may read, as the mount's stats.json shows them."""
    spool = Spool(store.path)
    runs = spool.runs()
    readable = set(store.readable_projects(None, sorted({p for p, _ in runs})))
    out = []
    for p, r in runs:
        if p not in readable:
            continue
        for unit in spool.units(p, r):
            out.append({"version": f"{p}/{r}/{unit.path}".rstrip("/"), "kind": unit.kind,
                        "state": "spooled", "age_seconds": None, "error": None})
        for _batch, unit in spool.removed_batches(p, r):
            out.append({"version": f"{p}/{r}/{unit.path}", "kind": unit.kind,
                        "state": "removed, not sealed yet", "age_seconds": None, "error": None})
    return out
