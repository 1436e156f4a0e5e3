"""The names under STORE/spool/ (the map is in ckptfs/spool/__init__.py), and how a
small JSON record is kept there: written whole or not at all, read as None if absent
or damaged."""
import json
import os
from urllib.parse import quote

from ckptfs.store.location import local_dir_of
from ckptfs.store.private import make_private_dirs, private_opener

SPOOL = "spool"
INBOX, REMOVED, STAGING, SEALING, VIEWS = "inbox", "removed", "staging", "sealing", "views"
ERRORS, PROVENANCE, REQUESTS, ANNOTATIONS = "errors", "provenance", "requests", "annotations"
ERROR_SUFFIX = ".error"
STAGED_PACKS = "staged-packs"    # ids of packs opened ahead of a seal, one per line (hex)
LOCK_NAME = "daemon.lock"
RUNNING_MARKER = "daemon.running"
DAEMON_STATS = "daemon-stats.json"  # the running daemon's counters, for `ckptfs serve`


def spool_path(store_path: str, *parts: str) -> str:
    """STORE/spool, or a path below it. `store_path` is a store as users name it (a
    directory, or an s3:// URL whose spool is in this machine's cache directory) or
    the directory of its local state (`Store.path`)."""
    return os.path.join(local_dir_of(store_path), SPOOL, *parts)


def unit_key(unit_path: str) -> str:
    """A unit's path as one file name (for provenance and annotation records)."""
    return "u" + quote(unit_path, safe="")


def write_json_atomically(path: str, doc) -> None:
    make_private_dirs(os.path.dirname(path))
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", opener=private_opener) as f:
            json.dump(doc, f)
        os.replace(tmp, path)
    except BaseException:
        unlink_if_present(tmp)  # e.g. a full disk cut it short: no half record left
        raise


def read_json(path: str, default=None):
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return default


def unlink_if_present(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False
