"""The kernel mount: `mount` mounts a store through the real `ckptfs mount` and takes
every mount down in teardown."""
import os

import pytest

from tests.helpers.cli import run_cli_checked
from tests.helpers.mounts import unmount
from tests.helpers.samples import make_checkpoint


@pytest.fixture
def mount(tmp_path):
    """mount(store_path, *options) -> mount point, via the real `ckptfs mount`; every mount
    is unmounted in teardown, even after a failure."""
    if not os.path.exists("/dev/fuse"):
        pytest.skip("/dev/fuse is missing: FUSE tests need it (they run in CI as root)")
    mounted = []

    def do_mount(store_path, *options):
        mountpoint = tmp_path / f"mnt{len(mounted)}"
        mountpoint.mkdir()
        mounted.append(str(mountpoint))
        run_cli_checked("mount", store_path, mountpoint, *options)
        return str(mountpoint)
    yield do_mount
    for mountpoint in mounted:
        unmount(mountpoint)


@pytest.fixture
def source(tmp_path):
    """A small sample checkpoint (see samples.make_checkpoint), in a directory named v1.

    Its directories are dated in the past: rsync compares a directory's mtime to the
    second before restoring it, so a source made in the same second as the copy would
    keep the copy's own mtime (on any file system) and the mtime checks would flake."""
    path = make_checkpoint(tmp_path / "src" / "v1", step=100, scale=2)
    for dirpath, _, _ in sorted(os.walk(path), reverse=True):  # children before parents
        os.utime(dirpath, ns=(1_700_000_000_123_456_789, 1_700_000_000_123_456_789))
    return path
