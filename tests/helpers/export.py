"""What the test_export.py files of several levels (cli, mount) share."""
from types import SimpleNamespace

import pytest

from ckptfs.meta.seal import archive_directory
from ckptfs.store import Store
from tests.helpers.cli import run_cli_checked
from tests.helpers.samples import make_checkpoint, make_hf_checkpoint


def ck(*args, rc=0):
    return run_cli_checked(*args, rc=rc)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A store with p/r/v1 (subdirectory, symlink, empty file, mode 0640, an mtime to
    the nanosecond) and nlp/run/step-100 -> step-200 (HF checkpoints with metrics and a
    ckptfs.json; step-200 has the alias `production`)."""
    root = tmp_path_factory.mktemp("source")
    src = SimpleNamespace(root=root, store=str(root / "store"))
    with Store.init(src.store) as store:
        archive_sample_versions(store, src)
    return src


def archive_sample_versions(store, src: SimpleNamespace):
    """Make the checkpoints of `source` under `src.root` and archive them into `store`;
    their directories become `src.v1`, `src.step100`, `src.step200`."""
    root = src.root
    src.v1 = make_checkpoint(root / "src" / "v1", step=100)
    src.step100 = make_hf_checkpoint(root / "src" / "step-100", step=100, eval_loss=0.7, user={
        "tags": ["candidate"], "notes": "warmup fixed",
        "lineage": {"data": {"name": "wiki", "version": "v3"}}})
    src.step200 = make_hf_checkpoint(root / "src" / "step-200", step=200, eval_loss=0.4)
    archive_directory(store, src.v1, "p", "r", "v1")
    archive_directory(store, src.step100, "nlp", "run", "step-100")
    archive_directory(store, src.step200, "nlp", "run", "step-200")
    store.set_alias("nlp", "run", "production", "step-200")


@pytest.fixture
def target(tmp_path):
    """A second, empty store to import into."""
    path = str(tmp_path / "target")
    Store.init(path).close()
    return path
