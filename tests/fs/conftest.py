"""The daemon's parts built as `ckptfs.fs.daemon.serve` builds them (the store, the
daemon lock, the Inbox with its Sealer, CkptfsOperations), in-process and with no
mount: pyfuse3.init is never called, the tests make the calls the kernel would make."""
import os

import pyfuse3
import pytest

from ckptfs.fs import daemonlock
from ckptfs.fs.inbox import Inbox
from ckptfs.fs.ops import CkptfsOperations
from ckptfs.meta.seal import archive_directory
from ckptfs.store import Store
from tests.fs.driver import Driver, readdir_reply
from tests.helpers.samples import make_checkpoint
from tests.helpers.stores import copy_store

QUIET = 3600.0  # seconds: nothing is sealed for being quiet unless a test asks for it


class Daemon:
    """What serve() holds while it serves: open with `start`, closed with `stop`."""

    def __init__(self, store_path: str, mountpoint: str):
        self.store_path, self.mountpoint = store_path, mountpoint
        self.store = self.inbox = self.ops = self.lock = None

    def start(self, seal_after: float = QUIET) -> "Daemon":
        self.store = Store.open(self.store_path)
        self.lock = daemonlock.acquire(self.store_path, daemonlock.DAEMON, self.mountpoint)
        self.inbox = Inbox(self.store, seal_after)
        self.inbox.mountpoint = self.mountpoint
        self.ops = CkptfsOperations(self.store, self.inbox)
        return self

    def stop(self):
        if self.store is None:
            return
        self.inbox.close()
        self.store.close()
        self.lock.release()
        self.store = self.inbox = self.ops = self.lock = None


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
def daemon(sealed_store, tmp_path, monkeypatch):
    """The daemon's parts over `sealed_store`, not started (a test picks seal_after)."""
    monkeypatch.setattr(pyfuse3, "readdir_reply", readdir_reply)
    mountpoint = str(tmp_path / "mnt")
    os.mkdir(mountpoint)
    parts = Daemon(sealed_store[0], mountpoint)
    yield parts
    parts.stop()


def serving(daemon: Daemon, nursery, seal_after: float) -> Driver:
    """A Driver over the started daemon, whose background work (the sealer, the
    preparer) runs until the test ends."""
    daemon.start(seal_after)
    nursery.start_soon(daemon.inbox.run)
    return Driver(daemon.ops, daemon.inbox)


@pytest.fixture
async def fs(daemon, nursery):
    """The daemon serving with a quiet period of an hour: a unit is sealed only when
    asked (a .seal marker, the user.ckptfs.seal attribute)."""
    return serving(daemon, nursery, QUIET)


@pytest.fixture
async def eager_fs(daemon, nursery):
    """The daemon serving with no quiet period: a unit is due once its files are closed."""
    return serving(daemon, nursery, 0.0)
