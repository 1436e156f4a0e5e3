"""What the test_access.py files of several levels (store, unit, cli, mount) share."""
import os
import tempfile

from ckptfs.store import Store

NOBODY = 65534
USERS_GROUP = 100


def public_dir() -> str:
    """A directory other users can enter (pytest's tmp_path lives under a 0700 one)."""
    path = tempfile.mkdtemp(prefix="ckptfs-access-", dir="/tmp")
    os.chmod(path, 0o755)
    return path


def grant(store, project, role, principal="user:nobody"):
    with Store.open(store) as s:
        s.grant(project, principal, role)
