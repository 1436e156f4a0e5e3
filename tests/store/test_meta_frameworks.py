"""A real Hugging Face Trainer checkpoint (a tiny model trained a few steps on the CPU,
nothing downloaded) sealed into a store: clean scan, its metadata in the sidecar. Skipped
where transformers is not installed. Metadata read from the files alone:
tests/unit/test_meta_frameworks.py."""
import os

from ckptfs.meta.seal import archive_directory
from ckptfs.meta.sidecar import sidecar_of
from ckptfs.store import Store
from tests.helpers import meta_frameworks as helpers

trainer_run = helpers.trainer_run  # a fixture (tests/helpers/meta_frameworks.py)


def test_trainer_checkpoint_seals_clean_with_its_metadata(trainer_run, tmp_path):
    out, args = trainer_run
    with Store.init(str(tmp_path / "store")) as store:
        archive_directory(store, os.path.join(out, "checkpoint-4"), "nlp", "bert", "step-4")
        doc = sidecar_of(store, "nlp", "bert", "step-4")
    assert doc["scan"]["status"] == "clean" and doc["warnings"] == []
    assert doc["step"] == 4
    assert doc["lineage"]["seeds"] == {"seed": 7, "data_seed": 11}
    assert doc["lineage"]["hyperparameters"]["lr_scheduler_type"] == "cosine"
