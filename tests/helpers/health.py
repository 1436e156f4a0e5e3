"""What tests/store/test_health.py and test_metrics.py share: a store of two projects
and three runs, built once per module through the API."""
import json
import os

import pytest

from ckptfs.meta.seal import archive_directory
from ckptfs.store import Store
from tests.helpers.samples import make_checkpoint
from tests.helpers.stores import copy_store

NOBODY = {"uid": 65534, "gids": [65534], "pid": 1}
RUNS = {("nlp", "run-1"): (100, 200, 300), ("nlp", "run-2"): (100,), ("cv", "r"): (50,)}
WITH_ACCURACY = ("nlp", "run-1", 300)  # the one version whose ckptfs.json gives `accuracy`
ACCURACY_SCHEMA = {"type": "object", "required": ["metrics"], "properties": {
    "metrics": {"type": "object", "required": ["accuracy"]}}}


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """Two projects, three runs, five versions (RUNS)."""
    root = tmp_path_factory.mktemp("health")
    path = str(root / "store")
    with Store.init(path) as s:
        for (project, run), steps in RUNS.items():
            for step in steps:
                src = make_checkpoint(root / "src" / project / run / f"step-{step}", step=step,
                                      seed=len(run))
                if (project, run, step) == WITH_ACCURACY:
                    with open(os.path.join(src, "ckptfs.json"), "w") as f:
                        json.dump({"metrics": {"accuracy": 0.9}}, f)
                archive_directory(s, src, project, run, f"step-{step}")
    return path


@pytest.fixture
def s(template, tmp_path):
    """An open copy of the template store of this test's own."""
    with Store.open(copy_store(template, tmp_path / "store")) as opened:
        yield opened
