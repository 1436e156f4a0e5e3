"""Running the mount: `serve` mounts and serves until unmounted or signalled.

`ckptfs mount` (background) starts `serve` in a new session and waits on a pipe until
the file system is mounted, like sshfs; `-f` runs `serve` in the foreground.
"""
import logging
import os
import signal

import pyfuse3
import trio

from ckptfs.store import Store, StoreError
from ckptfs.store.private import make_private_dirs, private_open

from . import daemonlock, mounts
from .inbox import Inbox
from .ops import CkptfsOperations

log = logging.getLogger("ckptfs.fs")


def setup_logging(store_path: str, level: str, foreground: bool) -> str:
    log_dir = os.path.join(store_path, "logs")
    make_private_dirs(log_dir)
    log_path = os.path.join(log_dir, "mount.log")
    os.close(private_open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND))
    handlers = [logging.FileHandler(log_path)]
    if foreground:
        handlers.append(logging.StreamHandler())
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=handlers,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    return log_path


def check_mountpoint(mountpoint: str):
    if mounts.is_dead(mountpoint):
        raise StoreError(dead_mount_message(mountpoint))
    if not os.path.isdir(mountpoint):
        raise StoreError(f"mount point {mountpoint} is not a directory")
    if os.path.ismount(mountpoint):
        raise StoreError(f"{mountpoint} is already a mount point (unmount it first: "
                         f"ckptfs umount {mountpoint})")


def dead_mount_message(mountpoint: str) -> str:
    entry = mounts.entry_at(mountpoint)
    served = f" (it served {entry.store})" if entry and entry.store else ""
    return (f"{mountpoint} is a dead mount: the daemon serving it died{served}; run "
            f"`ckptfs umount {mountpoint}` first")


def check_store_free(store_path: str):
    """Refuse early, with the first mount point, if a daemon already serves the store
    (the daemon's own lock decides; this only spares starting one)."""
    holder = daemonlock.holder(store_path)
    if holder is not None:
        raise daemonlock.StoreBusy(daemonlock.busy_message(store_path, holder), holder)


def detach_dead_mount_of(store_path: str, mountpoint: str) -> bool:
    """A mount point left dead by a daemon of this same store is detached, so that
    `ckptfs mount` after a crash just works; True if it was. A dead mount of anything
    else is left alone (check_mountpoint then says so)."""
    if not mounts.is_dead(mountpoint):
        return False
    entry = mounts.entry_at(mountpoint)
    if entry is None or entry.store != os.path.abspath(store_path):
        return False
    why = mounts.detach(mountpoint)
    if why:
        raise StoreError(f"cannot detach the dead mount at {mountpoint}: {why}")
    log.info("detached the dead mount of %s at %s", store_path, mountpoint)
    return True


def serve(store_path: str, mountpoint: str, *, allow_other=False, seal_after=5.0,
          ready_fd: int | None = None):
    """Mount STORE at MOUNTPOINT and serve until unmounted, SIGTERM or SIGINT."""
    store = Store.open(store_path)
    lock = inbox = None
    try:
        check_mountpoint(mountpoint)
        # Before the inbox recovers anything: the spool is this daemon's alone.
        lock = daemonlock.acquire(store_path, daemonlock.DAEMON, os.path.abspath(mountpoint))
        inbox = Inbox(store, seal_after)
        inbox.mountpoint = os.path.realpath(mountpoint)
        ops = CkptfsOperations(store, inbox)
        options = set(pyfuse3.default_options)
        options |= {"fsname=ckptfs:" + os.path.abspath(store_path), "subtype=ckptfs"}
        if allow_other:
            options.add("allow_other")
        if store.enforcing():
            # Roles decide (docs/access.md), not the modes the mount shows: the kernel
            # must not refuse a writer's mkdir in a root-owned inbox directory first.
            options.discard("default_permissions")
            log.info("roles are enforced: the daemon checks every request")
        pyfuse3.init(ops, mountpoint, options)
    except BaseException:
        if inbox is not None:
            inbox.close()
        store.close()
        if lock is not None:
            lock.release()
        raise
    log.info("mounted %s at %s", store_path, mountpoint)
    if ready_fd is not None:
        os.write(ready_fd, b"ok\n")
        os.close(ready_fd)
    try:
        trio.run(_main_loop, inbox, ops, mountpoint)
    finally:
        pyfuse3.close(unmount=True)
        inbox.close()
        store.close()
        lock.release()  # last: the spool is left in order
        log.info("unmounted %s", mountpoint)


READ_AHEAD_KB = 1024


async def _main_loop(inbox, ops, mountpoint):
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signals, nursery.cancel_scope)
        nursery.start_soon(inbox.run)
        nursery.start_soon(ops.watch_deletions)
        nursery.start_soon(_raise_read_ahead, mountpoint)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


async def _stop_on_signals(scope):
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("signal %s: unmounting", signal.Signals(signum).name)
            pyfuse3.terminate()
            return


async def _raise_read_ahead(mountpoint: str):
    """Ask the kernel for 1 MiB read-ahead on this mount (its default, 128 KiB, halves
    sequential reads through FUSE). Needs root; otherwise the default stays."""
    try:
        # stat goes through our own file system: on a worker thread, once we serve.
        st = await trio.to_thread.run_sync(os.stat, mountpoint)
        path = f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/read_ahead_kb"
        with open(path, "w") as f:
            f.write(str(READ_AHEAD_KB))
        log.info("read-ahead set to %d KiB (%s)", READ_AHEAD_KB, path)
    except OSError as e:
        log.info("read-ahead left at the kernel default: %s", e)
