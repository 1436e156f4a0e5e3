"""What the kernel says of a mount point: a live mount, a dead one, or none.

A mount daemon that dies (SIGKILL, a crash) leaves its mount point mounted with nobody
answering: every `stat` of it fails with ENOTCONN ("Transport endpoint is not
connected"), so it looks like neither a directory nor a mount point to `os.path`
(once the kernel's cached attributes of the root expire; statfs fails at once).
/proc/self/mountinfo still lists it, with the store it served (`fsname=ckptfs:STORE`).

`ckptfs mount` checks its mount point here before it starts a daemon (no pyfuse3 or
trio is imported for that), and detaches a dead mount its store's last daemon left.
"""
import errno
import logging
import os
import subprocess
from dataclasses import dataclass

from ckptfs.store import StoreError
from ckptfs.store.location import store_label

log = logging.getLogger("ckptfs.fs")

FSNAME_PREFIX = "ckptfs:"
DEAD_ERRNOS = (errno.ENOTCONN, errno.ECONNABORTED)


@dataclass
class MountEntry:
    mountpoint: str
    fstype: str
    source: str

    @property
    def store(self) -> str | None:
        """The store a ckptfs mount serves (None for other file systems)."""
        if self.fstype.startswith("fuse") and self.source.startswith(FSNAME_PREFIX):
            return self.source[len(FSNAME_PREFIX):]
        return None


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def mount_table() -> list[MountEntry]:
    entries = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            try:
                tail = fields.index("-")
                entries.append(MountEntry(_unescape(fields[4]), fields[tail + 1],
                                          _unescape(fields[tail + 2])))
            except (ValueError, IndexError):
                continue
    return entries


def absolute(path: str) -> str:
    """`path` made absolute with its parent's symlinks resolved, without a stat of `path`
    itself (which a dead mount would answer with ENOTCONN)."""
    path = os.path.abspath(path)
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def entry_at(path: str) -> MountEntry | None:
    """The mount at `path` (the last one mounted there), if any."""
    where = absolute(path)
    found = [e for e in mount_table() if e.mountpoint == where]
    return found[-1] if found else None


def is_dead(path: str) -> bool:
    """Is `path` a mount point whose daemon is gone? statfs asks the daemon every time
    (a stat may be answered from the kernel's attribute cache for a while)."""
    try:
        os.stat(path)
        os.statvfs(path)
        return False
    except OSError as e:
        return e.errno in DEAD_ERRNOS and entry_at(path) is not None


def dead_mounts_of(store_path: str) -> list[str]:
    """Mount points of `store_path` left dead by a daemon that died."""
    store = store_label(store_path)
    return [e.mountpoint for e in mount_table() if e.store == store and is_dead(e.mountpoint)]


def detach(path: str) -> str | None:
    """Unmount a dead mount (lazily if a process still has it open): None, or why not."""
    tries = (["fusermount3", "-u", path], ["fusermount3", "-uz", path], ["umount", "-l", path])
    why = "fusermount3 failed"
    for command in tries:
        try:
            done = subprocess.run(command, capture_output=True, text=True)
        except FileNotFoundError:
            continue
        if done.returncode == 0 or entry_at(path) is None:
            return None
        why = done.stderr.strip() or why
    return why


def check_mountpoint(mountpoint: str):
    if is_dead(mountpoint):
        raise StoreError(dead_mount_message(mountpoint))
    if not os.path.isdir(mountpoint):
        raise StoreError(f"mount point {mountpoint} is not a directory")
    if os.path.ismount(mountpoint):
        raise StoreError(f"{mountpoint} is already a mount point (unmount it first: "
                         f"ckptfs umount {mountpoint})")


def dead_mount_message(mountpoint: str) -> str:
    entry = entry_at(mountpoint)
    served = f" (it served {entry.store})" if entry and entry.store else ""
    return (f"{mountpoint} is a dead mount: the daemon serving it died{served}; run "
            f"`ckptfs umount {mountpoint}` first")


def detach_dead_mount_of(store_path: str, mountpoint: str) -> bool:
    """A mount point left dead by a daemon of this same store is detached, so that
    `ckptfs mount` after a crash just works; True if it was. A dead mount of anything
    else is left alone (check_mountpoint then says so)."""
    if not is_dead(mountpoint):
        return False
    entry = entry_at(mountpoint)
    if entry is None or entry.store != store_label(store_path):
        return False
    why = detach(mountpoint)
    if why:
        raise StoreError(f"cannot detach the dead mount at {mountpoint}: {why}")
    log.info("detached the dead mount of %s at %s", store_path, mountpoint)
    return True
