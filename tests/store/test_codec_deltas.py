"""Delta coding between checkpoints (FLOAT_DELTA): a torch.save optimizer state is
delta coded against the same storage of the parent version, as safetensors tensors are."""
import os

import numpy as np
import pytest

from ckptfs.store import codec as codecs
from tests.helpers.samples import make_checkpoint, tree_snapshot


def optimizer_checkpoint(path, step: int) -> str:
    """A checkpoint dir holding only optimizer.pt: Adam-like states that drift a little
    from one step to the next."""
    torch = pytest.importorskip("torch")
    os.makedirs(path, exist_ok=True)
    rng = np.random.default_rng(0)
    exp_avg = rng.standard_normal(400_000).astype(np.float32) * 1e-4
    exp_avg_sq = np.abs(rng.standard_normal(400_000)).astype(np.float32) * 1e-8
    drift = np.random.default_rng(step).standard_normal(400_000).astype(np.float32)
    state = {"state": {0: {"exp_avg": torch.from_numpy(exp_avg * (1 + 1e-3 * step * drift)),
                           "exp_avg_sq": torch.from_numpy(exp_avg_sq * (1 + 1e-4 * step)),
                           "step": torch.tensor(float(step))}},
             "param_groups": [{"lr": 1e-4, "params": [0]}]}
    torch.save(state, os.path.join(path, "optimizer.pt"))
    return str(path)


def codecs_of(store, version, path) -> list:
    found = []
    for chunk, _ in store.entry("p", "r", version, path)["chunks"]:
        loc = store.index_location(bytes.fromhex(chunk))
        found.append(store.packs.read(loc.pack_id, loc.offset, loc.length).codec)
    return found


def test_optimizer_states_are_delta_coded_against_the_parent(store, tmp_path):
    first = optimizer_checkpoint(tmp_path / "s1", step=1)
    second = optimizer_checkpoint(tmp_path / "s2", step=2)
    r1 = store.import_directory(first, "p", "r", "step-1")
    r2 = store.import_directory(second, "p", "r", "step-2")
    assert codecs.FLOAT in codecs_of(store, "step-1", "optimizer.pt")
    assert codecs.FLOAT_DELTA in codecs_of(store, "step-2", "optimizer.pt")
    assert r2.stats.new_stored_bytes < 0.8 * r1.stats.new_stored_bytes
    store.restore("p", "r", "step-2", str(tmp_path / "out"))
    assert tree_snapshot(tmp_path / "out") == tree_snapshot(second)
    assert store.verify().ok


def test_a_runs_first_checkpoint_is_delta_coded_against_the_projects_newest(store, tmp_path):
    store.import_directory(make_checkpoint(tmp_path / "a1", step=100, scale=8), "p", "a", "v1")
    store.import_directory(make_checkpoint(tmp_path / "a2", step=200, scale=8), "p", "a", "v2")
    src = make_checkpoint(tmp_path / "b1", step=300, scale=8)
    report = store.import_directory(src, "p", "b", "v1")
    assert report.delta_parent == "p/a/v2" and report.stats.delta_chunks > 0
    store.restore("p", "b", "v1", str(tmp_path / "out"))
    assert tree_snapshot(tmp_path / "out") == tree_snapshot(src)
    # another project's versions are never its bases
    other = store.import_directory(make_checkpoint(tmp_path / "c1", step=400, scale=8),
                                   "q", "c", "v1")
    assert other.delta_parent is None and other.stats.delta_chunks == 0


def test_a_first_checkpoint_of_another_model_is_coded_on_its_own(store, tmp_path):
    store.import_directory(optimizer_checkpoint(tmp_path / "a1", step=1), "p", "a", "v1")
    src = make_checkpoint(tmp_path / "b1", step=100, scale=8)
    report = store.import_directory(src, "p", "b", "v1")
    assert report.delta_parent == "p/a/v1" and report.stats.delta_chunks == 0
    store.restore("p", "b", "v1", str(tmp_path / "out"))
    assert tree_snapshot(tmp_path / "out") == tree_snapshot(src)
