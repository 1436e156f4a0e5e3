"""Stores on disk as test data."""
import shutil

from ckptfs.store import Store


def copy_store(src: str, dest) -> str:
    """A copy of the store at `src` in `dest` (a test may then damage or change it)."""
    shutil.copytree(src, str(dest))
    return str(dest)


def new_store(tmp_path, name="store") -> str:
    """An empty store made in tmp_path/name (closed again): its path."""
    path = str(tmp_path / name)
    Store.init(path).close()
    return path
