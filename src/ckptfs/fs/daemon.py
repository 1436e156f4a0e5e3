"""Running the mount: `serve` mounts and serves until unmounted or signalled.

`ckptfs mount` (background) starts `serve` in a new session and waits on a pipe until
the file system is mounted, like sshfs; `-f` runs `serve` in the foreground. The checks
before a mount (the mount point, a dead mount, a daemon already serving the store) are
in mounts.py and ckptfs.spool.daemon, which need neither pyfuse3 nor trio.
"""
import ctypes
import logging
import os
import signal

# numpy decodes chunks; the CLI imports it lazily (most commands never decode), but the
# daemon will: loaded here, at start, a first read does not pay for it (about 100 ms with
# a cold page cache: the cold read of a 91 MB file went from ~550 to ~330 MB/s).
import numpy  # noqa: F401
import pyfuse3
import trio

from ckptfs.spool import daemon as spool_daemon
from ckptfs.store import Store
from ckptfs.store.location import local_dir_of, store_label
from ckptfs.store.private import make_private_dirs, private_open

from .follow import DEFAULT_POLL_INTERVAL, JournalFollower
from .inbox import Inbox
from .mounts import check_mountpoint
from .ops import CkptfsOperations
from .readahead import READ_AHEAD_KB, raise_read_ahead, read_ahead_kb

log = logging.getLogger("ckptfs.fs")


def setup_logging(store_path: str, level: str, foreground: bool) -> str:
    log_dir = os.path.join(local_dir_of(store_path), "logs")
    make_private_dirs(log_dir)
    log_path = os.path.join(log_dir, "mount.log")
    os.close(private_open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND))
    handlers = [logging.FileHandler(log_path)]
    if foreground:
        handlers.append(logging.StreamHandler())
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=handlers,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    return log_path


class DaemonParts:
    """What a daemon holds while it serves a store: the store, the spool's lock, the inbox
    (with its sealer) and the file-system operations. `serve` builds them, and so do the
    in-process tests of the operations (tests/fs), the same way."""

    def __init__(self, store_path: str, mountpoint: str, seal_after: float,
                 poll_interval: float = DEFAULT_POLL_INTERVAL):
        self.store = Store.open(store_path)
        self.lock = self.inbox = None
        try:
            # Before the inbox recovers anything: the spool is this daemon's alone.
            self.lock = spool_daemon.acquire(store_path, spool_daemon.DAEMON,
                                             os.path.abspath(mountpoint))
            self.inbox = Inbox(self.store, seal_after)
            self.inbox.mountpoint = os.path.realpath(mountpoint)
            self.ops = CkptfsOperations(self.store, self.inbox)
            if self.store.backend.shared:  # others write it too: follow their commits
                self.ops.follower = JournalFollower(self.store, poll_interval)
        except BaseException:
            self.close()
            raise

    def close(self, clean: bool = True) -> None:
        """Close in order: the inbox, the store, then the lock (the spool is left in
        order). `clean=False` leaves the inbox as a killed daemon would (its spool,
        staged packs and running marker stay; the next start recovers them)."""
        if clean and self.inbox is not None:
            self.inbox.close()
        self.store.close()
        if self.lock is not None:
            self.lock.release()


def serve(store_path: str, mountpoint: str, *, allow_other=False, seal_after=5.0,
          ready_fd: int | None = None, poll_interval: float = DEFAULT_POLL_INTERVAL):
    """Mount STORE at MOUNTPOINT and serve until unmounted, SIGTERM or SIGINT."""
    check_mountpoint(mountpoint)
    limit_malloc_arenas()
    parts = DaemonParts(store_path, mountpoint, seal_after, poll_interval)
    try:
        options = set(pyfuse3.default_options)
        options |= {"fsname=ckptfs:" + store_label(store_path), "subtype=ckptfs"}
        if allow_other:
            options.add("allow_other")
        parts.ops.enable_writeback_cache = writeback_cache_wanted()
        if parts.store.enforcing():
            # Roles decide (docs/access.md), not the modes the mount shows: the kernel
            # must not refuse a writer's mkdir in a root-owned inbox directory first.
            options.discard("default_permissions")
            log.info("roles are enforced: the daemon checks every request")
        pyfuse3.init(parts.ops, mountpoint, options)
    except BaseException:
        parts.close()
        raise
    log.info("mounted %s at %s (writeback cache %s)", store_path, mountpoint,
             "on" if parts.ops.enable_writeback_cache else "off")
    try:
        trio.run(_main_loop, parts.inbox, parts.ops, mountpoint, ready_fd)
    finally:
        pyfuse3.close(unmount=True)
        parts.close()
        log.info("unmounted %s", mountpoint)


MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)


def limit_malloc_arenas() -> None:
    """Let glibc's malloc keep at most MALLOC_ARENAS arenas (unless MALLOC_ARENA_MAX
    says otherwise). The daemon's threads (FUSE loop, streams, encoders, decoders, pack
    closers) each allocate and free buffers of megabytes; by default glibc gives each
    busy thread an arena of its own and keeps what was freed in it, so the daemon's
    memory grew with the number of threads rather than with what it holds: a 2 GB
    delta step peaked at 233 MB, 155 MB with two arenas (docs/benchmarks.md). Called
    before the daemon starts its threads; no effect where malloc is not glibc's."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_ARENA_MAX, MALLOC_ARENAS)


def writeback_cache_wanted() -> bool:
    """The kernel's writeback cache (ops.CkptfsOperations), unless CKPTFS_WRITEBACK_CACHE=0
    turns it off: a baseline for benchmarks, or a way round a kernel that misbehaves."""
    return os.environ.get("CKPTFS_WRITEBACK_CACHE", "1") != "0"


async def _main_loop(inbox, ops, mountpoint, ready_fd):
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_serving, mountpoint, ready_fd)
        nursery.start_soon(_stop_on_signals, nursery.cancel_scope)
        nursery.start_soon(inbox.run)
        nursery.start_soon(ops.watch_deletions)
        nursery.start_soon(ops.keep_counters_file)
        if ops.follower is not None:
            nursery.start_soon(ops.follower.run)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


async def _stop_on_signals(scope):
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("signal %s: unmounting", signal.Signals(signum).name)
            pyfuse3.terminate()
            return


async def _serving(mountpoint: str, ready_fd: int | None):
    """Once the kernel's INIT is answered (a stat through the mount waits for it), raise
    the mount's read-ahead (fs/readahead.py: the INIT reply would set it back), then
    tell a background `ckptfs mount` we serve: its first read finds the read-ahead set."""
    try:
        await trio.to_thread.run_sync(os.stat, mountpoint)
        problem = raise_read_ahead(mountpoint, READ_AHEAD_KB)
        if problem:  # `ckptfs mount` says how to raise it
            log.warning("read-ahead left at %s KiB: %s", read_ahead_kb(mountpoint), problem)
        else:
            log.info("read-ahead %s KiB", read_ahead_kb(mountpoint))
    except OSError as e:
        log.warning("read-ahead not checked: %s", e)
    if ready_fd is not None:
        os.write(ready_fd, b"ok\n")
        os.close(ready_fd)
