"""Who works on a store's spool, and did the last daemon die.

One process at a time works on a store's spool: `STORE/spool/daemon.lock`. The mount
daemon holds an exclusive flock on it for its whole life; `ckptfs seal` with no daemon
holds it while it seals. Two daemons on one store would share the spool (each clears the
other's staging, discards the other's packs as a dead daemon's, seals the same unit
twice), so the second is refused. The kernel releases the lock when its holder dies,
however it dies: a killed daemon never leaves a stale lock. The file says who holds it
(pid, host, mount point), for the messages and for `ckptfs status`.

`STORE/spool/daemon.running` (the daemon's pid) is written when a daemon starts and
removed when it stops cleanly: found with no daemon holding the lock, it says the last
one died, and the units it left are held until written again or sealed by hand.
"""
import fcntl
import json
import os
import socket
import time

from ckptfs.store import StoreError
from ckptfs.store.private import make_private_dirs, private_open, private_opener

from .layout import (DAEMON_STATS, LOCK_NAME, RUNNING_MARKER, read_json, spool_path,
                     unlink_if_present, write_json_atomically)

DAEMON, SEAL = "daemon", "seal"


class StoreBusy(StoreError):
    """Another process holds the store's spool (a mount daemon, or `ckptfs seal`)."""

    def __init__(self, message: str, holder: dict):
        super().__init__(message)
        self.holder = holder


class SpoolLock:
    """The held lock; `release` (or the holder's death) frees it."""

    def __init__(self, fd: int):
        self.fd = fd

    def release(self):
        if self.fd is not None:
            os.close(self.fd)  # closing the only descriptor drops the flock
            self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def lock_path(store_path: str) -> str:
    return spool_path(store_path, LOCK_NAME)


def try_acquire(store_path: str, role: str, mountpoint: str | None = None
                ) -> tuple[SpoolLock | None, dict | None]:
    """(the lock, None), or (None, what its holder recorded) if another process holds it."""
    path = lock_path(store_path)
    try:
        make_private_dirs(os.path.dirname(path))
        fd = private_open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC)
    except PermissionError:
        # A user who may not write the spool may still ask a running daemon to seal.
        held_by = holder(store_path)
        if held_by is None:
            raise
        return None, held_by
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        held_by = _read_record(fd)
        os.close(fd)
        return None, held_by
    except BaseException:
        os.close(fd)
        raise
    record = {"role": role, "pid": os.getpid(), "host": socket.gethostname(),
              "mountpoint": mountpoint, "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode() + b"\n", 0)
    return SpoolLock(fd), None


def acquire(store_path: str, role: str, mountpoint: str | None = None) -> SpoolLock:
    """The lock, or StoreBusy saying who holds it."""
    lock, holder = try_acquire(store_path, role, mountpoint)
    if lock is None:
        raise StoreBusy(busy_message(store_path, holder), holder)
    return lock


def holder(store_path: str) -> dict | None:
    """What the process holding the store's lock recorded ({} if it had no time to say
    yet), or None if nobody holds it. Needs only read access to the store."""
    try:
        fd = os.open(lock_path(store_path), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None  # we could lock it: nobody holds it (ours goes with the close)
    except BlockingIOError:
        return _read_record(fd)
    finally:
        os.close(fd)


def serving(store_path: str) -> dict | None:
    """What the mount daemon serving the store recorded (pid, mountpoint), if one runs:
    the holder of its lock (a pid file could name a pid the system has given to
    another)."""
    held_by = holder(store_path)
    return held_by if held_by is not None and held_by.get("role") == DAEMON else None


def check_free(store_path: str) -> None:
    """StoreBusy, naming the holder, if a process works on the store's spool (`ckptfs
    mount` asks before it starts a daemon; the daemon's own lock decides)."""
    held_by = holder(store_path)
    if held_by is not None:
        raise StoreBusy(busy_message(store_path, held_by), held_by)


def busy_message(store_path: str, holder: dict | None) -> str:
    holder = holder or {}
    who = f"pid {holder.get('pid', '?')}" + (f" on {holder['host']}"
                                              if holder.get("host") != socket.gethostname()
                                              and holder.get("host") else "")
    if holder.get("role") == DAEMON:
        where = holder.get("mountpoint") or "?"
        return (f"store {store_path} is already mounted at {where} (daemon {who}); one "
                f"daemon per store: use that mount, or `ckptfs umount {where}` first")
    if holder.get("role") == SEAL:
        return (f"store {store_path} is busy: `ckptfs seal` ({who}) is sealing its inbox; "
                "try again when it ends")
    return f"store {store_path} is busy: another process ({who}) holds {LOCK_NAME}"


def _read_record(fd: int) -> dict:
    try:
        record = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


# -- the running marker ----------------------------------------------------------------------
def last_daemon_died(store_path: str) -> bool:
    """Did a daemon start on this store and not stop cleanly? (Ask with its lock held,
    or with no daemon serving: a running daemon has its marker too.)"""
    return os.path.exists(spool_path(store_path, RUNNING_MARKER))


def mark_running(store_path: str) -> None:
    """A daemon starts (after it took the lock and looked at last_daemon_died)."""
    with open(spool_path(store_path, RUNNING_MARKER), "w", opener=private_opener) as f:
        f.write(str(os.getpid()))


def mark_stopped(store_path: str) -> None:
    """The daemon stops cleanly: what it leaves in the spool is in order."""
    unlink_if_present(spool_path(store_path, RUNNING_MARKER))


# -- the running daemon's counters -------------------------------------------------------------
def write_stats(store_path: str, stats: dict) -> None:
    """The daemon's side: its counters and pending units, replaced whole (a reader never
    sees half a file). `stats` gets the daemon's pid and the time it was written."""
    write_json_atomically(spool_path(store_path, DAEMON_STATS),
                          {**stats, "pid": os.getpid(), "written_at": time.time()})


def running_stats(store_path: str) -> dict | None:
    """What the mount daemon serving the store wrote last, or None when no daemon
    serves it (a file left by a daemon that stopped is not its successor's)."""
    serving_daemon = serving(store_path)
    if serving_daemon is None:
        return None
    stats = read_json(spool_path(store_path, DAEMON_STATS))
    if not isinstance(stats, dict) or stats.get("pid") != serving_daemon.get("pid"):
        return None
    return stats
