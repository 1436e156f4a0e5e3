"""Fixtures of the CLI level."""
import os
import shutil
import subprocess

import pytest

from ckptfs.store import Store
from tests.helpers.access import public_dir
from tests.helpers.samples import make_checkpoint


@pytest.fixture
def open_store(tmp_path):
    """A store whose files everyone may read and write (how several users share one for
    the CLI, docs/access.md), enforced, with two projects; nobody reads `vision`."""
    base = public_dir()
    store = os.path.join(base, "open")
    with Store.init(store) as s:
        s.import_directory(make_checkpoint(tmp_path / "a", step=1), "vision", "r", "v1")
        s.import_directory(make_checkpoint(tmp_path / "b", step=2), "nlp", "r", "v1")
        s.grant("vision", "user:nobody", "reader")
        s.set_enforcement(True)
    subprocess.run(["chmod", "-R", "a+rwX", store], check=True)
    yield store
    shutil.rmtree(base, ignore_errors=True)
