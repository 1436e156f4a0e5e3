"""The engine through its Python API: real packs, real LMDB, real files."""
import os
import random

import numpy as np
import pytest
from tests.helpers.samples import make_checkpoint, tree_snapshot

from ckptfs.store import (InvalidNameError, NotAStoreError, NotFoundError, Store,
                          StoreFormatError, VersionExistsError)
from ckptfs.store.config import CONFIG_NAME, FORMAT_VERSION


def test_restore_gives_back_the_exact_tree(store, checkpoint, tmp_path):
    report = store.import_directory(checkpoint, "proj", "run", "v1")
    assert report.files == 6  # the symlink and the directory are entries, not files
    assert report.stats.logical_bytes == sum(
        os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(checkpoint) for f in fs
        if not os.path.islink(os.path.join(d, f)))
    store.restore("proj", "run", "v1", str(tmp_path / "out"))
    assert tree_snapshot(tmp_path / "out") == tree_snapshot(checkpoint)


def test_version_root_keeps_mode_and_mtime(store, checkpoint):
    os.chmod(checkpoint, 0o750)
    os.utime(checkpoint, ns=(1_500_000_000_000_000_000,) * 2)
    store.import_directory(checkpoint, "p", "r", "v")
    root = store.version_record("p", "r", "v")["root"]
    assert root == {"mode": 0o750, "mtime_ns": 1_500_000_000_000_000_000}


def test_file_sha256_and_sizes_are_recorded(store, checkpoint):
    import hashlib
    store.import_directory(checkpoint, "p", "r", "v")
    entry = store.entry("p", "r", "v", "model.safetensors")
    with open(os.path.join(checkpoint, "model.safetensors"), "rb") as f:
        data = f.read()
    assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert entry["size"] == len(data) == sum(n for _, n in entry["chunks"])
    assert store.entry("p", "r", "v", "EMPTY")["chunks"] == []
    assert store.entry("p", "r", "v", "latest.safetensors")["target"] == "model.safetensors"


def test_identical_import_stores_only_a_manifest(store, checkpoint):
    first = store.import_directory(checkpoint, "p", "r", "v1")
    chunks_before = store.stats()["chunks"]
    second = store.import_directory(checkpoint, "p", "other-run", "v1")
    assert second.stats.new_chunks == 0
    assert store.stats()["chunks"] == chunks_before
    assert store.version_record("p", "other-run", "v1")["new_stored_bytes"] < 4096
    assert first.digest == second.digest


def test_next_checkpoint_dedups_frozen_tensors_and_deltas_trained_ones(store, tmp_path):
    v1 = make_checkpoint(tmp_path / "s1", step=100, scale=8)
    v2 = make_checkpoint(tmp_path / "s2", step=200, scale=8)
    r1 = store.import_directory(v1, "p", "r", "step-100")
    r2 = store.import_directory(v2, "p", "r", "step-200")
    assert r2.delta_parent == "p/r/step-100"
    assert r2.stats.delta_chunks > 0
    # embed.weight is unchanged between the two: it must not be stored again
    e1 = store.entry("p", "r", "step-100", "model.safetensors")["chunks"]
    e2 = store.entry("p", "r", "step-200", "model.safetensors")["chunks"]
    assert len(set(c for c, _ in e1) & set(c for c, _ in e2)) >= 2
    assert r2.stats.new_stored_bytes < 0.7 * r1.stats.new_stored_bytes
    store.restore("p", "r", "step-200", str(tmp_path / "out"))
    assert tree_snapshot(tmp_path / "out") == tree_snapshot(v2)


def test_delta_can_be_switched_off(store_path, tmp_path):
    Store.init(store_path).close()
    cfg = os.path.join(store_path, CONFIG_NAME)
    text = open(cfg).read().replace("delta = true", "delta = false")
    open(cfg, "w").write(text)
    with Store.open(store_path) as s:
        s.import_directory(make_checkpoint(tmp_path / "a", step=1), "p", "r", "a")
        r = s.import_directory(make_checkpoint(tmp_path / "b", step=2), "p", "r", "b")
        assert r.delta_parent is None and r.stats.delta_chunks == 0


def test_read_range_matches_source_at_random_offsets(store, tmp_path):
    src = make_checkpoint(tmp_path / "s", scale=16)
    store.import_directory(src, "p", "r", "v")
    for name in ("model.safetensors", "optimizer.pt", "tokenizer/vocab.txt"):
        entry = store.entry("p", "r", "v", name)
        data = open(os.path.join(src, name), "rb").read()
        rng = random.Random(name)
        for _ in range(40):
            off = rng.randrange(0, len(data))
            size = rng.choice([1, 100, 4096, 131072, 3 << 20])
            assert store.read_range(entry, off, size) == data[off:off + size]
        assert store.read_range(entry, len(data), 10) == b""


def test_existing_version_is_immutable(store, checkpoint, tmp_path):
    store.import_directory(checkpoint, "p", "r", "v")
    before = store.version_record("p", "r", "v")
    other = make_checkpoint(tmp_path / "other", step=5)
    with pytest.raises(VersionExistsError, match="immutable"):
        store.import_directory(other, "p", "r", "v")
    assert store.version_record("p", "r", "v") == before


@pytest.mark.parametrize("bad, rule", [
    ("", "empty"), (".", "reserved"), ("..", "reserved"), ("a/b", "'/'"),
    ("a\0b", "NUL"), ("a\nb", "control"), ("x\x7f", "control"), ("é" * 128, "255 bytes"),
])
def test_bad_names_are_refused_with_the_rule(store, checkpoint, bad, rule):
    for args in ((bad, "r", "v"), ("p", bad, "v"), ("p", "r", bad)):
        with pytest.raises(InvalidNameError, match=rule):
            store.import_directory(checkpoint, *args)
    assert store.projects() == []


def test_long_but_valid_name_is_accepted(store, checkpoint):
    name = "v" * 255
    store.import_directory(checkpoint, "p", "r", name)
    assert [v["version"] for v in store.versions("p", "r")] == [name]


def test_catalog_listing(store, checkpoint):
    for p, r, v in [("b", "r1", "v2"), ("a", "r1", "v1"), ("a", "r2", "v1"), ("a-x", "r", "v"),
                    ("a", "r1", "v10"), ("a", "r1", "v3")]:
        store.import_directory(checkpoint, p, r, v)
    assert store.projects() == ["a", "a-x", "b"]
    assert store.runs("a") == ["r1", "r2"]
    assert [v["version"] for v in store.versions("a", "r1")] == ["v1", "v10", "v3"]
    assert [e["path"] for e in store.list_dir("a", "r1", "v1", "tokenizer")] == ["tokenizer/vocab.txt"]
    with pytest.raises(NotFoundError):
        store.list_dir("a", "r1", "nope")


def test_rebuilt_index_answers_exactly_as_before(store, tmp_path):
    for step in (1, 2, 3):
        src = make_checkpoint(tmp_path / f"s{step}", step=step, scale=4)
        store.import_directory(src, "p", "run", f"step-{step}")
    store.import_directory(str(tmp_path / "s1"), "q", "other", "copy")
    before = store.index.dump()
    stats_before = store.stats()
    listing_before = {(v["run"], v["version"]): store.walk(v["project"], v["run"], v["version"])
                      for v in store.all_versions()}
    summary = store.rebuild_index()
    assert summary["versions"] == 4 and not summary["damaged_packs"]
    assert store.index.dump() == before
    assert store.stats() == stats_before
    assert {(v["run"], v["version"]): store.walk(v["project"], v["run"], v["version"])
            for v in store.all_versions()} == listing_before
    store.restore("p", "run", "step-3", str(tmp_path / "out"))
    assert tree_snapshot(tmp_path / "out") == tree_snapshot(tmp_path / "s3")
    assert store.verify().ok


def test_index_that_missed_a_commit_catches_up_from_the_journal(store_path, tmp_path):
    import shutil
    with Store.init(store_path) as s:
        s.import_directory(make_checkpoint(tmp_path / "a", step=1), "p", "r", "a")
    shutil.copytree(os.path.join(store_path, "index"), tmp_path / "old-index")
    with Store.open(store_path) as s:
        s.import_directory(make_checkpoint(tmp_path / "b", step=2), "p", "r", "b")
    shutil.rmtree(os.path.join(store_path, "index"))
    shutil.copytree(tmp_path / "old-index", os.path.join(store_path, "index"))
    with Store.open(store_path) as s:
        assert [v["version"] for v in s.versions("p", "r")] == ["a", "b"]
        s.restore("p", "r", "b", str(tmp_path / "out"))
        assert s.verify().ok
    assert tree_snapshot(tmp_path / "out") == tree_snapshot(tmp_path / "b")


def test_open_refuses_what_is_not_a_store(tmp_path):
    with pytest.raises(NotAStoreError, match="no such store"):
        Store.open(str(tmp_path / "missing"))
    (tmp_path / "plain").mkdir()
    with pytest.raises(NotAStoreError, match="not a ckptfs store"):
        Store.open(str(tmp_path / "plain"))


def test_open_refuses_a_newer_format(store_path):
    Store.init(store_path).close()
    cfg = os.path.join(store_path, CONFIG_NAME)
    text = open(cfg).read().replace("format = 1", f"format = {FORMAT_VERSION + 1}")
    open(cfg, "w").write(text)
    with pytest.raises(StoreFormatError, match="newer than this ckptfs supports"):
        Store.open(store_path)


def test_failed_import_leaves_no_pack_behind(store, tmp_path):
    src = make_checkpoint(tmp_path / "s")
    os.mkfifo(os.path.join(src, "a-fifo"))
    from ckptfs.store import SourceError
    with pytest.raises(SourceError, match="a-fifo"):
        store.import_directory(src, "p", "r", "v")
    assert store.stats()["packs"] == 0 and store.projects() == []


def test_file_growing_during_import_is_refused(store, tmp_path):
    """A writer still appending while we import must not produce a silently torn file."""
    src = make_checkpoint(tmp_path / "s")
    from ckptfs.store import SourceError
    appended = []

    def writer_appends(nbytes, stats):  # runs while the first file is being read
        if not appended:
            with open(os.path.join(src, "optimizer.pt"), "ab") as f:
                f.write(b"more bytes")
            appended.append(True)
    with pytest.raises(SourceError, match="optimizer.pt changed while being imported"):
        store.import_directory(src, "p", "r", "v", progress=writer_appends)
    assert store.projects() == [] and store.stats()["packs"] == 0


def test_many_small_files_and_odd_names(store, tmp_path):
    src = tmp_path / "s"
    (src / "deep" / "er" / "est").mkdir(parents=True)
    names = ["a b", "ünï", "x" * 200, "-dash", "with'quote"]
    for i, n in enumerate(names):
        (src / "deep" / n).write_bytes(os.urandom(i * 100))
    raw = os.fsencode("latin1-\xe9").replace(b"\xc3\xa9", b"\xe9")  # not UTF-8
    with open(os.path.join(os.fsencode(str(src)), raw), "wb") as f:
        f.write(b"bytes")
    (src / "deep" / "er" / "est" / "leaf").write_bytes(np.arange(1000).tobytes())
    store.import_directory(str(src), "p", "r", "v")
    store.restore("p", "r", "v", str(tmp_path / "out"))
    assert tree_snapshot(tmp_path / "out") == tree_snapshot(src)


@pytest.mark.parametrize("name", ["latest", "run.json", "v1.json"])
def test_version_names_that_the_run_directory_shows_itself_are_reserved(store, checkpoint, name):
    with pytest.raises(InvalidNameError, match="reserved|must not end in '.json'"):
        store.import_directory(checkpoint, "p", "r", name)
    assert store.projects() == []
