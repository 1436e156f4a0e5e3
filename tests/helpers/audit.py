"""What the test_audit.py files of several levels (cli, mount) share."""
import os
import shutil

import pytest

from ckptfs.store import Store
from tests.helpers.samples import make_checkpoint


@pytest.fixture
def audited(tmp_path):
    """A store with six journal entries: its creator's admin grant, two seals, two alias
    moves, one setting."""
    store = str(tmp_path / "store")
    with Store.init(store) as s:
        s.import_directory(make_checkpoint(tmp_path / "a", step=1), "nlp", "run", "v1")
        s.import_directory(make_checkpoint(tmp_path / "b", step=2), "nlp", "run", "v2")
        s.set_alias("nlp", "run", "prod", "v1")
        s.set_alias("nlp", "run", "prod", "v2")
        s.update_project_settings("nlp", {"primary_metric": "loss"})
    journal = os.path.join(store, "journal", "journal.jsonl")
    shutil.copy(journal, tmp_path / "journal.orig")
    with open(journal, "rb") as f:
        lines = f.read().splitlines(keepends=True)
    assert len(lines) == 6
    return store, journal, lines
