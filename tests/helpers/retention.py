"""What the test_retention.py files of several levels (unit, cli, store) share."""
import shutil
from datetime import datetime, timezone

import pytest

from ckptfs.meta.seal import archive_directory
from ckptfs.store import Store
from tests.helpers.samples import make_hf_checkpoint

NOW = datetime(2025, 6, 1, tzinfo=timezone.utc)


# -- a real store ----------------------------------------------------------------------------
# ref -> (eval_loss, explicit parent)
VERSIONS = {
    "nlp/base/s1": (0.50, None), "nlp/base/s2": (0.20, None), "nlp/base/s3": (0.40, None),
    "nlp/base/s4": (0.45, None), "nlp/base/s5": (0.60, None),
    "nlp/ft/f1": (0.30, "nlp/base/s3"),
    "cv/r/c1": (0.90, None), "cv/r/c2": (0.80, None),
}


@pytest.fixture(scope="module")
def catalog_store(tmp_path_factory) -> str:
    """Eight versions in three runs; nlp/ft/f1 is a fine-tune of nlp/base/s3; alias
    production on nlp/base/s1; nlp's primary metric eval_loss (min)."""
    root = tmp_path_factory.mktemp("retention")
    path = str(root / "store")
    with Store.init(path) as store:
        for i, (ref, (loss, parent)) in enumerate(VERSIONS.items()):
            p, r, v = ref.split("/")
            user = {"lineage": {"parent": dict(zip(("project", "run", "version"),
                                                   parent.split("/")))}} if parent else None
            src = make_hf_checkpoint(root / "src" / ref, 10 * (i + 1), seed=i, eval_loss=loss,
                                     user=user)
            archive_directory(store, src, p, r, v)
        store.set_alias("nlp", "base", "production", "s1")
        store.update_project_settings("nlp", {"primary_metric": "eval_loss", "mode": "min"})
    return path


@pytest.fixture
def store_copy(catalog_store, tmp_path) -> str:
    path = str(tmp_path / "store")
    shutil.copytree(catalog_store, path)
    return path
