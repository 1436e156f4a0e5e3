"""Reads of sealed files through the kernel with the read-ahead and the decoded-chunk
cache on: keyframe and XOR-delta versions give their exact bytes whatever the reads'
offsets, sizes, order and concurrency, and the cache stays within its cap."""
import hashlib
import os
import random
import subprocess
import threading

import numpy as np
import pytest
from safetensors.numpy import save_file
from tests.helpers.inbox import stats

from ckptfs.store.codec import is_delta
from ckptfs.fs.readahead import (READ_AHEAD_KB, read_ahead_hint, read_ahead_kb,
                                 read_ahead_path)
from ckptfs.store import Store

MiB = 1 << 20
CACHE_CAP = 16 * MiB  # CKPTFS_READ_CACHE_SIZE of the mounts below: the files are bigger


def write_model(path, seed: int, drift: float = 0.0) -> str:
    """A 40 MiB fp32 safetensors file of ten tensors (`drift`: noise added to the seed's
    values, so a second version is XOR-delta coded against the first)."""
    rng = np.random.default_rng(0)
    tensors = {f"layer.{i}.weight": rng.standard_normal((1024, 1024), dtype=np.float32)
               for i in range(10)}
    tensors["layer.0.bias"] = rng.standard_normal(257, dtype=np.float32)  # odd sizes
    if drift:
        noise = np.random.default_rng(seed)
        for name in tensors:
            tensors[name] += noise.standard_normal(tensors[name].shape, dtype=np.float32) * drift
    os.makedirs(path, exist_ok=True)
    save_file(tensors, os.path.join(path, "model.safetensors"))
    with open(os.path.join(path, "notes.bin"), "wb") as f:
        f.write(random.Random(seed).randbytes(3 * MiB + 17))
    return str(path)


@pytest.fixture(scope="module")
def lineage(tmp_path_factory):
    """A store with a keyframe version v1 and a version v2 stored as deltas of it."""
    tmp = tmp_path_factory.mktemp("lineage")
    store = str(tmp / "store")
    src1 = write_model(tmp / "src" / "v1", seed=1)
    src2 = write_model(tmp / "src" / "v2", seed=2, drift=1e-3)
    with Store.init(store) as s:
        s.import_directory(src1, "p", "r", "v1")
        s.import_directory(src2, "p", "r", "v2")
        chunks = {v: len(s.entry("p", "r", v, "model.safetensors")["chunks"]) for v in ("v1", "v2")}
        codecs = {s.reader.read_record(bytes.fromhex(c)).codec
                  for c, _ in s.entry("p", "r", "v2", "model.safetensors")["chunks"]}
    assert any(is_delta(c) for c in codecs), "v2 is not delta coded: the test would not read deltas"
    return store, {"v1": src1, "v2": src2}, chunks


@pytest.fixture
def mounted(lineage, mount, monkeypatch):
    store, sources, chunks = lineage
    monkeypatch.setenv("CKPTFS_READ_CACHE_SIZE", str(CACHE_CAP))
    mnt = mount(store)
    return mnt, os.path.join(mnt, "projects", "p", "r"), sources, chunks


def sha256_of(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(MiB):
            h.update(block)
    return h.hexdigest()


def source_bytes(sources, version, name) -> bytes:
    with open(os.path.join(sources[version], name), "rb") as f:
        return f.read()


def test_every_file_of_a_keyframe_and_a_delta_version_has_its_sha256(mounted, tmp_path):
    _, run, sources, _ = mounted
    for version in ("v2", "v1"):  # the delta version first: its bases are not cached
        subprocess.run(["cp", "-r", os.path.join(run, version), str(tmp_path / version)],
                       check=True)
        for name in ("model.safetensors", "notes.bin"):
            want = sha256_of(os.path.join(sources[version], name))
            assert sha256_of(tmp_path / version / name) == want, (version, name)
            assert sha256_of(os.path.join(run, version, name)) == want, (version, name)


def test_reads_at_odd_offsets_and_sizes_and_backwards_give_the_source_bytes(mounted):
    _, run, sources, _ = mounted
    for version in ("v2", "v1"):
        want = source_bytes(sources, version, "model.safetensors")
        rng = random.Random(version)
        fd = os.open(os.path.join(run, version, "model.safetensors"), os.O_RDONLY)
        try:
            for _ in range(60):
                off = rng.randrange(len(want) + 10)
                size = rng.choice([1, 7, 4095, 4097, 131071, MiB + 3, 3 * MiB + 1])
                assert os.pread(fd, size, off) == want[off:off + size], (version, off, size)
            # A reader that walks backwards, block by block, from the end.
            for off in range(len(want) - MiB // 2, -MiB, -MiB - 4099):
                off = max(0, off)
                assert os.pread(fd, MiB // 2, off) == want[off:off + MiB // 2]
        finally:
            os.close(fd)


def test_concurrent_readers_of_the_same_and_different_files(mounted):
    _, run, sources, _ = mounted
    jobs = [(v, name) for v in ("v1", "v2", "v2", "v1")
            for name in ("model.safetensors", "notes.bin")]
    results = {}

    def read(i, version, name):
        results[i] = sha256_of(os.path.join(run, version, name))
    threads = [threading.Thread(target=read, args=(i, v, n)) for i, (v, n) in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, (version, name) in enumerate(jobs):
        assert results[i] == sha256_of(os.path.join(sources[version], name)), (version, name)


def test_a_sequential_read_decodes_each_chunk_once_within_the_cache_cap(mounted):
    mnt, run, sources, chunks = mounted
    before = stats(mnt)["read_cache"]
    assert before["decoded"]["capacity"] + before["keyframes"]["capacity"] == CACHE_CAP
    size = os.path.getsize(os.path.join(run, "v1", "model.safetensors"))
    assert size > 2 * CACHE_CAP  # several times what the decoded-chunk cache holds
    assert sha256_of(os.path.join(run, "v1", "model.safetensors")) == \
        sha256_of(os.path.join(sources["v1"], "model.safetensors"))
    after = stats(mnt)["read_cache"]
    # Read ahead and waited for, never decoded twice (nor by the kernel's parallel reads).
    assert after["decoded_chunks"] - before["decoded_chunks"] == chunks["v1"]
    assert after["decoded"]["bytes"] > 0
    for cache in ("decoded", "keyframes"):
        assert after[cache]["peak_bytes"] <= after[cache]["capacity"], cache
    # A delta version: its chunks and their bases, none kept beyond the caps either.
    assert sha256_of(os.path.join(run, "v2", "model.safetensors")) == \
        sha256_of(os.path.join(sources["v2"], "model.safetensors"))
    final = stats(mnt)["read_cache"]
    assert final["keyframes"]["bytes"] > 0
    for cache in ("decoded", "keyframes"):
        assert final[cache]["peak_bytes"] <= final[cache]["capacity"], cache


def test_the_mount_serves_with_its_read_ahead_raised_and_says_how_when_it_is_not(mounted):
    mnt = mounted[0]
    # Raised before `ckptfs mount` returns: the first cold read has it.
    assert read_ahead_kb(mnt) == READ_AHEAD_KB
    assert read_ahead_hint(mnt) is None
    path = read_ahead_path(mnt)
    with open(path, "w") as f:
        f.write("128")  # what the kernel gives a mount the daemon could not raise
    hint = read_ahead_hint(mnt)
    assert hint.startswith(f"read-ahead of {mnt} is 128 KiB")
    command = hint.split("(as root: ", 1)[1].rstrip(")")
    subprocess.run(["sh", "-c", command], check=True)  # the hint's command does it
    assert read_ahead_kb(mnt) == READ_AHEAD_KB and read_ahead_hint(mnt) is None
