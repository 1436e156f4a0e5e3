"""What tests/mount/test_mount_meta.py and tests/cli/test_meta_commands.py share."""
import os
from types import SimpleNamespace

import pytest

from ckptfs.meta.seal import archive_directory
from ckptfs.store import Store
from tests.helpers.inbox import sh
from tests.helpers.samples import HF_PARAMETERS, make_hf_checkpoint

PLAIN_ENV = {"PATH": os.environ["PATH"]}   # writers without allow-listed variables


HF_FILES = ["ckptfs.json", "config.json", "model.safetensors", "optimizer.pt", "rng_state.pth",
            "scheduler.pt", "tokenizer.json", "tokenizer_config.json", "trainer_state.json",
            "training_args.json"]


PICKLES = {name: {"format": "torch-zip", "entries": 4, "pickles": [f"{stem}/data.pkl"]}
           for name, stem in (("optimizer.pt", "optimizer"), ("rng_state.pth", "rng_state"),
                              ("scheduler.pt", "scheduler"))}


SAFETENSORS = {"model.safetensors": {"tensors": 3, "parameters": HF_PARAMETERS,
                                     "dtypes": {"F32": 3}, "metadata": {"format": "pt"}}}


def ok(proc):
    assert proc.returncode == 0, f"{proc.args}: {proc.stderr}"
    return proc


def git_repo(path) -> tuple[str, str]:
    """A real git repository with one commit (train.py): (its path, HEAD)."""
    os.makedirs(path)
    ok(sh(f"git init -q {path}"))
    with open(os.path.join(path, "train.py"), "w") as f:
        f.write(WRITER_SCRIPT)
    ok(sh("git add train.py && git -c user.email=t@example.com -c user.name=T "
          "commit -qm 'train script'", cwd=path))
    head = ok(sh("git rev-parse HEAD", cwd=path)).stdout.strip()
    return os.path.realpath(path), head


WRITER_SCRIPT = """\
import json, os, sys
import numpy
dest = sys.argv[1]
os.makedirs(dest)
with open(os.path.join(dest, "weights.bin"), "wb") as f:
    f.write(numpy.arange(4096, dtype=numpy.float32).tobytes())
with open(os.path.join(dest, "ckptfs.json"), "w") as f:
    json.dump({"step": 3, "metrics": {"eval_loss": 0.25}}, f)
"""


# (project, run, version, eval_loss, data version, explicit parent, user tags), sealing order
FIND_VERSIONS = [
    ("nlp", "run-a", "step-1", 0.50, "v2", None, []),
    ("nlp", "run-a", "step-2", 0.25, "v3", None, []),
    ("nlp", "run-a", "step-3", 0.28, "v3.1", None, []),
    ("vision", "ft-x", "ft-1", 0.10, "v3", "nlp/run-a/step-2", []),
    ("nlp", "run-a", "step-4", 0.35, "v3", None, []),
    ("vision", "base", "b-1", 0.20, "v1", None, ["baseline"]),
    ("vision", "base", "b-2", 0.31, "v3", None, []),
    ("vision", "ft-x", "ft-2", 0.40, "v4", None, []),
]


@pytest.fixture(scope="module")
def known(tmp_path_factory):
    """A store with FIND_VERSIONS sealed through `archive_directory` (the import's path) and
    an alias production -> nlp/run-a/step-3; closed again, for the CLI."""
    root = tmp_path_factory.mktemp("find")
    path = str(root / "store")
    with Store.init(path) as store:
        for i, (p, r, v, eval_loss, data, parent, tags) in enumerate(FIND_VERSIONS):
            user = {"lineage": {"data": {"name": "wiki", "version": data}}, "tags": tags}
            if parent:
                user["lineage"]["parent"] = parent
            src = make_hf_checkpoint(root / "src" / p / r / v, 10 * (i + 1), seed=i,
                                     eval_loss=eval_loss, user=user)
            archive_directory(store, src, p, r, v)
        store.set_alias("nlp", "run-a", "production", "step-3")
        docs = sorted(store.catalog_documents(), key=lambda d: d["seq"])
    return SimpleNamespace(store=path, sealed_at=[d["sealed_at"] for d in docs],
                           order=[f"{d['project']}/{d['run']}/{d['version']}" for d in docs])


def paths(*refs) -> list[str]:
    return [f"projects/{ref}" for ref in refs]
