"""What tests/store/test_diff.py and tests/cli/test_diff.py share: a store whose versions
differ in known ways (files, metrics, hyperparameters, environment, lineage)."""
import hashlib
import json
import os
from types import SimpleNamespace

import pytest

from ckptfs.meta.seal import archive_directory
from ckptfs.store import Store

WEIGHTS_1 = b"\x01" * 4096
WEIGHTS_2 = b"\x02" * 4096
TOKENIZER = b'{"vocab": ["a", "b"]}'

# (project, run, version, files, ckptfs.json), in sealing order. run-a/s2 against s1:
# weights.bin changed, notes.txt removed, eval.txt added, tokenizer.json the same;
# loss 1.0 -> 0.5, acc unchanged, old_only / new_only on one side each; lr and
# optimizer.beta differ, batch and optimizer.name do not; packages.torch differs.
VERSIONS = [
    ("nlp", "run-a", "s1",
     {"weights.bin": WEIGHTS_1, "tokenizer.json": TOKENIZER, "notes.txt": b"first\n"},
     {"step": 100, "metrics": {"loss": 1.0, "acc": 0.5, "old_only": 3},
      "lineage": {"hyperparameters": {"lr": 0.1, "batch": 32,
                                      "optimizer": {"name": "adam", "beta": 0.9}},
                  "environment": {"packages": {"torch": "2.3"}, "cuda": "12"}}}),
    ("nlp", "run-a", "s2",
     {"weights.bin": WEIGHTS_2, "tokenizer.json": TOKENIZER, "eval.txt": b"loss 0.5\n"},
     {"step": 200, "metrics": {"loss": 0.5, "acc": 0.5, "new_only": 7},
      "lineage": {"hyperparameters": {"lr": 0.05, "batch": 32,
                                      "optimizer": {"name": "adam", "beta": 0.95}},
                  "environment": {"packages": {"torch": "2.4"}, "cuda": "12"}}}),
    # a fine-tune of nlp/run-a/s1 in another project
    ("vision", "ft", "f1",
     {"weights.bin": WEIGHTS_1, "head.bin": b"\x03" * 512},
     {"step": 10, "metrics": {"loss": 0.8},
      "lineage": {"parent": "nlp/run-a/s1", "hyperparameters": {"lr": 0.01}}}),
]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_version(path, files: dict, user: dict) -> str:
    os.makedirs(path)
    for name, data in files.items():
        with open(os.path.join(path, name), "wb") as f:
            f.write(data)
    with open(os.path.join(path, "ckptfs.json"), "w") as f:
        json.dump(user, f)
    return str(path)


def ckptfs_json(user: dict) -> bytes:
    """The bytes write_version gives ckptfs.json (to know its SHA-256)."""
    return json.dumps(user).encode()


@pytest.fixture(scope="module")
def diffed(tmp_path_factory):
    """VERSIONS sealed through `archive_directory` (the import's path), an alias
    production -> nlp/run-a/s1, `best` by the lowest loss (s2); closed again."""
    root = tmp_path_factory.mktemp("diff")
    path = str(root / "store")
    with Store.init(path) as store:
        for p, r, v, files, user in VERSIONS:
            archive_directory(store, write_version(root / "src" / p / r / v, files, user), p, r, v)
        store.set_alias("nlp", "run-a", "production", "s1")
        store.update_project_settings("nlp", {"primary_metric": "loss", "mode": "min"})
    return SimpleNamespace(store=path)
