"""Fixtures of the fs level: a sealed store to serve, the daemon's parts over it
(tests/fs/driver.py: built as `ckptfs.fs.daemon.serve` builds them, with no mount), and
a Driver making the kernel's calls."""
import os

import pyfuse3
import pytest

from ckptfs.meta.seal import archive_directory
from ckptfs.store import Store
from tests.fs.driver import QUIET, Daemon, Kernel, serving
from tests.helpers.samples import make_checkpoint
from tests.helpers.stores import copy_store


@pytest.fixture(scope="session")
def sealed_template(tmp_path_factory):
    """A store with p/r/v1 sealed from the sample checkpoint (as `ckptfs import` seals
    it), made once: (store path, source directory)."""
    root = tmp_path_factory.mktemp("fs-template")
    path = str(root / "store")
    src = make_checkpoint(root / "src" / "v1", step=100)
    with Store.init(path) as store:
        archive_directory(store, src, "p", "r", "v1")
    return path, src


@pytest.fixture
def sealed_store(sealed_template, tmp_path):
    """A copy of the template store of this test's own: (store path, source directory)."""
    return copy_store(sealed_template[0], tmp_path / "store"), sealed_template[1]


@pytest.fixture
def kernel(monkeypatch) -> Kernel:
    """The kernel's side of readdir replies and cache invalidations (driver.Kernel)."""
    kernel = Kernel()
    monkeypatch.setattr(pyfuse3, "readdir_reply", kernel.readdir_reply)
    monkeypatch.setattr(pyfuse3, "invalidate_entry_async", kernel.invalidate_entry_async)
    return kernel


@pytest.fixture
def daemon(sealed_store, tmp_path, kernel):
    """The daemon's parts over `sealed_store`, not started (a test picks seal_after)."""
    mountpoint = str(tmp_path / "mnt")
    os.mkdir(mountpoint)
    parts = Daemon(sealed_store[0], mountpoint)
    yield parts
    parts.stop()


@pytest.fixture
async def fs(daemon, nursery):
    """The daemon serving with a quiet period of an hour: a unit is sealed only when
    asked (a .seal marker, the user.ckptfs.seal attribute)."""
    return serving(daemon, nursery, QUIET)


@pytest.fixture
async def eager_fs(daemon, nursery):
    """The daemon serving with no quiet period: a unit is due once its files are closed."""
    return serving(daemon, nursery, 0.0)
