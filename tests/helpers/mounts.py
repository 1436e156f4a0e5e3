"""The kernel's side of a mount: is it in the mount table, and taking it down."""
import os
import subprocess


def is_mounted(mountpoint: str) -> bool:
    """Listed in the mount table: live, or dead (its daemon killed: os.path.ismount says
    False then, as every stat of it fails with ENOTCONN)."""
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == os.path.abspath(mountpoint) for line in f)


def unmount(mountpoint: str):
    """Unmount, lazily if a process still holds it, so no test leaves a stale mount (nor
    a dead one)."""
    if is_mounted(mountpoint):
        if subprocess.run(["fusermount3", "-u", mountpoint], capture_output=True).returncode:
            subprocess.run(["fusermount3", "-uz", mountpoint], capture_output=True)
