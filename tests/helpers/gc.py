"""What the test_gc.py files of several levels (cli, store, mount) share."""
import json
import os
from types import SimpleNamespace

import numpy as np
import pytest

from ckptfs.meta.seal import archive_directory
from ckptfs.store import Store
from tests.helpers.samples import make_checkpoint, tree_snapshot

# p/r: v0..v4, each a sample checkpoint (tensor blocks delta-coded against v0's) plus
# own.bin (its own random bytes); p/ft/f0 is a fine-tune of p/r/v1; p/r/v2 has the alias
# production. With keep_last=1 on p, gc deletes v0 and v3 and keeps v1 (explicit parent
# of f0), v2 (alias) and v4 (latest). v0's pack keeps the chunks later versions share
# and the delta bases of their tensors; v3's keeps only its manifest (a tombstone's file
# list): both are rewritten.
RUN = ["v0", "v1", "v2", "v3", "v4"]


KEPT = ["p/r/v1", "p/r/v2", "p/r/v4", "p/ft/f0"]


def make_version(path, step: int, own_kb: int = 384, parent: str | None = None) -> str:
    make_checkpoint(path, step=step)
    os.makedirs(os.path.join(path, "chunks"), exist_ok=True)   # a name the index's JSON
    with open(os.path.join(path, "chunks", "chunks"), "w") as f:  # also uses for a key
        f.write(f'"chunks" of step {step}')
    with open(os.path.join(path, "own.bin"), "wb") as f:
        f.write(np.random.default_rng(step).bytes(own_kb << 10))
    if parent:
        with open(os.path.join(path, "ckptfs.json"), "w") as f:
            json.dump({"lineage": {"parent": dict(zip(("project", "run", "version"),
                                                      parent.split("/")))}}, f)
    return str(path)


def build_store(root, own_kb: int = 384, shared_kb: int = 0) -> tuple[str, dict]:
    """The store above: (its path, {ref: source directory})."""
    path = str(root / "store")
    sources = {}
    with Store.init(path) as store:
        for i, v in enumerate(RUN):
            src = make_version(root / "src" / v, 100 + i, own_kb if v == "v0" else 96)
            if shared_kb:   # bytes v0 shares with every later version: live in v0's pack
                with open(os.path.join(src, "shared.bin"), "wb") as f:
                    f.write(np.random.default_rng(1).bytes(shared_kb << 10))
            archive_directory(store, src, "p", "r", v)
            sources[f"p/r/{v}"] = src
        sources["p/ft/f0"] = make_version(root / "src" / "f0", 200, 96, parent="p/r/v1")
        archive_directory(store, sources["p/ft/f0"], "p", "ft", "f0")
        store.set_alias("p", "r", "production", "v2")
        store.set_retention_policy("p", None, {"keep_last": 1})
    return path, sources


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("gc")
    path, sources = build_store(root)
    return SimpleNamespace(path=path, sources=sources, root=root)


def assert_restores(store: str, refs, sources: dict, dest):
    """Every version in `refs` restores to exactly its source tree (bytes, modes, mtimes)."""
    with Store.open(store) as s:
        for ref in refs:
            out = os.path.join(str(dest), ref.replace("/", "_"))
            report = s.restore(*ref.split("/"), out)
            assert not report.damaged, (ref, report.damaged)
            assert tree_snapshot(out) == tree_snapshot(sources[ref]), f"{ref} differs"


# -- concurrency ---------------------------------------------------------------------------------
@pytest.fixture
def small(tmp_path):
    """p/r/a and p/r/b (nothing in common but small files), keep_last=1 on p."""
    path = str(tmp_path / "store")
    with Store.init(path) as s:
        for name, seed in (("a", 1), ("b", 2)):
            src = make_checkpoint(tmp_path / "src" / name, step=100, seed=seed)
            s.import_directory(src, "p", "r", name)
        s.set_retention_policy("p", None, {"keep_last": 1})
    return SimpleNamespace(path=path, src=str(tmp_path / "src" / "a"), tmp=tmp_path)
