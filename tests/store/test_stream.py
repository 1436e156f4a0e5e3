"""Ingest of a file while it is written (store/stream.py): the file is fed to the stream
piece by piece as a writer writes it, and what the stream prepares is what a whole-file
prepare of the finished file gives (same chunks, same SHA-256), for an ordinary file
(content-defined cuts made as the bytes arrive) and a safetensors file (the header first,
then fixed tensor blocks); a stream that cannot finish prepares nothing."""
import json
import os
import struct
import time

import numpy as np
import pytest

from ckptfs.store import Store
from ckptfs.store.encoders import EncoderPool

PIECE = 100_003  # an odd write size: cuts and pages never line up with it


def safetensors_bytes(rng, tensors: int = 3, tail: bytes = b"") -> bytes:
    header, blobs, offset = {}, [], 0
    for i in range(tensors):
        blob = rng.standard_normal(700_000 + 1000 * i, dtype=np.float32).tobytes()
        header[f"t{i}"] = {"dtype": "F32", "shape": [len(blob) // 4],
                           "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + b"".join(blobs) + tail


def stream_written(ingest, path: str, data: bytes, token, rel: str = "f.bin",
                   close_at: int | None = None):
    """Write `data` to `path` in pieces, telling a stream of `ingest` after each, then
    close it at `close_at` bytes (default: all); the stream's result."""
    out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    stream = ingest.stream_file(rel, os.open(path, os.O_RDONLY))
    try:
        for offset in range(0, len(data), PIECE):
            piece = data[offset:offset + PIECE]
            os.pwrite(out, piece, offset)
            stream.written_to(offset + len(piece))
    finally:
        os.close(out)
    stream.close(len(data) if close_at is None else close_at, token)
    return stream.result()


def prepared_whole(store, path: str, rel: str = "f.bin") -> dict:
    ingest = store.begin_ingest("p", "other", "v1")
    try:
        assert ingest.prepare_file(rel, path, "whole")
        return ingest.prepared["whole"][1]
    finally:
        ingest.abort()


@pytest.mark.parametrize("kind", ["random", "safetensors", "safetensors with a tail", "tiny"])
def test_a_streamed_file_is_prepared_as_the_finished_file_would_be(store, tmp_path, kind):
    rng = np.random.default_rng(7)
    data = {"random": lambda: rng.bytes(13_000_000),
            "safetensors": lambda: safetensors_bytes(rng),
            "safetensors with a tail": lambda: safetensors_bytes(rng, tail=rng.bytes(3_000_000)),
            "tiny": lambda: b"12345"}[kind]()
    src = tmp_path / "src"
    src.mkdir()
    path = str(src / "f.bin")
    ingest = store.begin_ingest("p", "r", "v1")
    fields = stream_written(ingest, path, data, ("token", 1))
    assert fields is not None
    whole = prepared_whole(store, path)
    assert fields["chunks"] == whole["chunks"]
    assert (fields["size"], fields["sha256"]) == (whole["size"], whole["sha256"])
    report = store.import_directory(str(src), "p", "r", "v1", ingest=ingest,
                                    token_of=lambda entry: ("token", 1))
    assert report.stats.prepared_files == 1
    out = tmp_path / "out"
    store.restore("p", "r", "v1", str(out))
    assert (out / "f.bin").read_bytes() == data
    assert store.verify().ok


def test_a_safetensors_file_closed_before_its_last_tensor_prepares_nothing(store, tmp_path):
    """Its header promised more bytes than it has: not a safetensors file after all, and
    the seal reads it whole."""
    data = safetensors_bytes(np.random.default_rng(1))
    path = str(tmp_path / "f.safetensors")
    ingest = store.begin_ingest("p", "r", "v1")
    try:
        assert stream_written(ingest, path, data[:-1000], "token") is None
        assert "token" not in ingest.prepared
    finally:
        ingest.abort()


def test_a_cancelled_stream_prepares_nothing_and_abort_leaves_no_pack(store, tmp_path):
    path = str(tmp_path / "f.bin")
    with open(path, "wb") as f:
        f.write(os.urandom(20_000_000))
    ingest = store.begin_ingest("p", "r", "v1")
    stream = ingest.stream_file("f.bin", os.open(path, os.O_RDONLY))
    stream.written_to(12_000_000)  # more is coming: it reads, then waits
    stream.cancel()
    assert stream.result() is None
    ingest.abort()
    assert not any(files for _, _, files in os.walk(os.path.join(store.path, "packs")))


def test_the_seal_stops_a_stream_whose_file_is_still_written_and_reads_it_whole(store, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(9_000_000)
    (src / "f.bin").write_bytes(data)
    ingest = store.begin_ingest("p", "r", "v1")
    stream = ingest.stream_file("f.bin", os.open(src / "f.bin", os.O_RDONLY))
    stream.written_to(5_000_000)  # never closed by its writer
    report = store.import_directory(str(src), "p", "r", "v1", ingest=ingest,
                                    token_of=lambda entry: "token")
    assert stream.result() is None
    assert report.stats.prepared_files == 0
    out = tmp_path / "out"
    store.restore("p", "r", "v1", str(out))
    assert (out / "f.bin").read_bytes() == data


def test_streams_of_several_files_share_the_packs_and_seal_as_one_version(store, tmp_path):
    import threading
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(3)
    files = {f"shard-{i}.bin": rng.bytes(6_000_000) + b"\0" * 2_000_000 for i in range(4)}
    ingest = store.begin_ingest("p", "r", "v1")
    results = {}
    threads = [threading.Thread(target=lambda n=n, d=d: results.__setitem__(
        n, stream_written(ingest, str(src / n), d, n, rel=n))) for n, d in files.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(results[n] is not None for n in files)
    report = store.import_directory(str(src), "p", "r", "v1", ingest=ingest,
                                    token_of=lambda entry: entry.path)
    assert report.stats.prepared_files == len(files)
    out = tmp_path / "out"
    store.restore("p", "r", "v1", str(out))
    for name, data in files.items():
        assert (out / name).read_bytes() == data
    assert store.verify().ok


def test_the_encoder_budget_is_all_given_back(store, tmp_path):
    """Places taken by chunks in flight all come back, whether a file finished or was
    given up (a leak would stall every later ingest of the process)."""
    pool = EncoderPool.shared()
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(11_000_000))
    store.import_directory(str(src), "p", "r", "v1")
    ingest = store.begin_ingest("p", "r", "v2")
    stream = ingest.stream_file("a.bin", os.open(src / "a.bin", os.O_RDONLY))
    stream.written_to(10_000_000)
    stream.cancel()
    stream.result()
    ingest.abort()
    taken = [pool.budget.acquire(blocking=False) for _ in range(pool.workers * 2 + 2)]
    for _ in filter(None, taken):
        pool.budget.release()
    assert all(taken)


def test_full_packs_are_closed_behind_the_writer_and_all_are_complete(store_path, tmp_path):
    """With 1 MiB packs a file fills many: each is closed (fsync) on a thread of its own
    while the next fills; the commit waits for them, and every pack is complete."""
    from ckptfs.store import Store
    from ckptfs.store.backend import LocalBackend
    from ckptfs.store.pack import list_pack_ids, scan_pack
    Store.init(store_path).close()
    config = os.path.join(store_path, "ckptfs.toml")
    with open(config) as f:
        text = f.read()
    with open(config, "w") as f:
        f.write(text.replace("target_size = 134217728", "target_size = 1048576"))
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(13_000_000)
    with Store.open(store_path) as store:
        ingest = store.begin_ingest("p", "r", "v1")
        assert stream_written(ingest, str(src / "f.bin"), data, "token") is not None
        store.import_directory(str(src), "p", "r", "v1", ingest=ingest,
                               token_of=lambda entry: "token")
        assert store.verify().ok
    backend = LocalBackend(store_path)
    packs = list_pack_ids(backend)
    assert len(packs) > 5
    assert all(scan_pack(backend, pack_id, verify=True).complete for pack_id in packs)


def test_a_forked_child_imports_with_encoders_of_its_own(store_path, tmp_path):
    """A process forked after its parent encoded (tests run the CLI as another user
    that way; a training launcher may fork workers) has none of the parent's encoder
    threads: its imports get a pool of their own instead of waiting forever."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(3_000_000))
    Store.init(store_path).close()
    with Store.open(store_path) as parent_store:  # the parent's pool now has threads
        parent_store.import_directory(str(src), "p", "r", "v1")
    (src / "a.bin").write_bytes(os.urandom(3_000_000))
    pid = os.fork()
    if pid == 0:  # the child: import, then leave without running the parent's cleanup
        code = 1
        try:
            with Store.open(store_path) as child_store:
                child_store.import_directory(str(src), "p", "r", "v2")
            code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child's import never finished: it waited for encoder "
                    "threads that exist only in its parent")
    assert os.waitstatus_to_exitcode(status) == 0
