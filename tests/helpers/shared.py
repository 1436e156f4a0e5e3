"""Several "machines" on one shared store without an object store: each a `Store` with a
local directory of its own (its index, spool, locks) over ONE backend that says it is
shared. The engine then behaves as on S3 (random pack ids, pack index objects, commits
that race for journal seqs), and tests of that logic run on a plain directory."""
import os

from ckptfs.store import Store
from ckptfs.store.backend import LocalBackend
from ckptfs.store.config import StoreConfig


class SharedDirectory(LocalBackend):
    """A directory used as a shared backend (the objects are files, as locally)."""
    shared = True


def shared_store(root: str) -> None:
    """Make a new store in `root`."""
    Store.init(root).close()


def open_machine(root: str, local_dir: str) -> Store:
    """The store in `root` as a machine whose own state is in `local_dir` sees it."""
    backend = SharedDirectory(root)
    for sub in ("index", "spool"):
        os.makedirs(os.path.join(local_dir, sub), exist_ok=True)
    return Store(local_dir, StoreConfig.load(backend), backend=backend)
