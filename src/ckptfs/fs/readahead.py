"""The mount's read-ahead: how much the kernel reads ahead of a sequential reader.

A FUSE mount is a "backing device" of its own, /sys/class/bdi/MAJOR:MINOR, whose
read_ahead_kb the kernel sets to 128 KiB. With 1024 KiB, the kernel asks the daemon for
1 MiB reads (FUSE's largest) and several ahead, so the daemon's decoders are never idle
waiting for the next request: cold reads of a model run 1.1-1.5 times as fast
(docs/benchmarks.md). Writing read_ahead_kb needs root; `ckptfs mount` says how when it
cannot. Neither pyfuse3 nor trio is needed here.

The device is found in /proc/self/mountinfo, not by a stat of the mount point: the daemon
sets it between the mount and its first answer to the kernel, where a stat of the mount
would wait on the daemon itself.
"""
import os
import re

READ_AHEAD_KB = 1024


def _unescape(field: str) -> str:
    """A path of /proc/self/mountinfo: space, tab, newline and backslash are \\ooo."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def device_of(mountpoint: str) -> str | None:
    """"MAJOR:MINOR" of the file system mounted at `mountpoint` (the last mounted there),
    or None if nothing is."""
    # realpath of the mount point itself would stat it: through the mount, which the
    # kernel holds until the daemon answers its INIT (a daemon waiting on itself).
    parent, name = os.path.split(os.path.abspath(mountpoint))
    target = os.path.join(os.path.realpath(parent), name)
    found = None
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4 and _unescape(fields[4]) == target:
                    found = fields[2]
    except OSError:
        return None
    return found


def read_ahead_path(mountpoint: str) -> str | None:
    device = device_of(mountpoint)
    return f"/sys/class/bdi/{device}/read_ahead_kb" if device else None


def read_ahead_kb(mountpoint: str) -> int | None:
    """The mount's read-ahead in KiB, None if it cannot be read."""
    path = read_ahead_path(mountpoint)
    try:
        with open(path) as f:
            return int(f.read())
    except (OSError, TypeError, ValueError):
        return None


def raise_read_ahead(mountpoint: str, kb: int = READ_AHEAD_KB) -> str | None:
    """Set the mount's read-ahead to `kb` unless it is that much already; None when done,
    else why not (not root, no such device)."""
    path = read_ahead_path(mountpoint)
    if path is None:
        return f"{mountpoint} is not in the mount table"
    current = read_ahead_kb(mountpoint)
    if current is not None and current >= kb:
        return None
    try:
        with open(path, "w") as f:
            f.write(str(kb))
    except OSError as e:
        return f"{path}: {e.strerror}"
    return None


def read_ahead_hint(mountpoint: str, kb: int = READ_AHEAD_KB) -> str | None:
    """One line telling how to raise the mount's read-ahead if it is below `kb`, else
    None."""
    current = read_ahead_kb(mountpoint)
    path = read_ahead_path(mountpoint)
    if current is None or path is None or current >= kb:
        return None
    return (f"read-ahead of {mountpoint} is {current} KiB: cold reads are faster "
            f"with {kb} (as root: echo {kb} > {path})")
