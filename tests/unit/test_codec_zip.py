"""Chunking of zip archives (torch.save files) on their stored entries' boundaries, so the
codec sees whole fp32 elements (store/chunking.py)."""
import os
import zipfile

import numpy as np
import pytest

from ckptfs.store import chunking
from ckptfs.store import codec as codecs
from ckptfs.store.chunking import Chunker, FileReader, ZipLayout, zip_layout

TENSOR_BLOCK = 256 * 1024


def torch_file(path, seed: int = 0) -> dict:
    """An optimizer-like torch.save file; returns {storage bytes: tensor name}."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(seed)
    state = {
        "exp_avg": torch.from_numpy(rng.standard_normal(300_001).astype(np.float32) * 1e-4),
        "exp_avg_sq": torch.from_numpy(np.abs(rng.standard_normal(200_003)).astype(np.float32)
                                       * 1e-8),
        "step": torch.tensor(7.0),
    }
    torch.save(state, path)
    return {t.numpy().tobytes(): name for name, t in state.items()}


def cut(path):
    size = os.path.getsize(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        reader = FileReader(fd, path, size)
        chunker = Chunker(64 * 1024, 256 * 1024, 1024 * 1024)
        layout = reader.tensor_layout()
        assert layout is None or isinstance(layout, ZipLayout)
        return [(s, off, data) for s, off, data in reader.chunks(chunker, layout, TENSOR_BLOCK)]
    finally:
        os.close(fd)


def test_each_large_storage_is_cut_in_blocks_from_its_first_byte(tmp_path):
    path = str(tmp_path / "optimizer.pt")
    storages = torch_file(path)
    content = open(path, "rb").read()
    chunks = cut(path)
    assert b"".join(data for _, _, data in chunks) == content
    found = {}
    for segment, offset, data in chunks:
        if segment.fixed_block:
            whole = content[segment.offset:segment.offset + segment.length]
            found[storages[whole]] = segment
            assert (offset - segment.offset) % TENSOR_BLOCK == 0
            assert segment.tensor.startswith("optimizer/data/")  # the entry's name
    assert sorted(found) == ["exp_avg", "exp_avg_sq"]  # "step" is too small to bother


def test_storage_chunks_are_float_coded(tmp_path):
    path = str(tmp_path / "optimizer.pt")
    torch_file(path)
    encoder = codecs.Encoder()
    coded = [encoder.encode(data, segment.width, segment.dtype)[0]
             for segment, _, data in cut(path) if segment.fixed_block]
    assert coded and set(coded) == {codecs.FLOAT}


def test_a_zip_with_deflated_entries_cuts_only_the_stored_ones(tmp_path):
    path = str(tmp_path / "mixed.zip")
    stored = os.urandom(300_000)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("a/deflated", b"x" * 2_000_000, compress_type=zipfile.ZIP_DEFLATED)
        z.writestr("a/stored", stored, compress_type=zipfile.ZIP_STORED)
        z.writestr("a/big-deflated", os.urandom(1_200_000), compress_type=zipfile.ZIP_DEFLATED)
    content = open(path, "rb").read()
    with open(path, "rb") as f:
        layout = zip_layout(f, len(content))
    assert {name: content[a:b] for name, (a, b, _) in layout.tensors.items()} == \
        {"a/stored": stored}
    assert b"".join(data for _, _, data in cut(path)) == content


@pytest.mark.parametrize("damage", ["truncated", "local header", "not a zip"])
def test_a_damaged_archive_is_cut_by_content(tmp_path, damage):
    path = str(tmp_path / "optimizer.pt")
    torch_file(path)
    content = bytearray(open(path, "rb").read())
    if damage == "truncated":
        content = content[:-30]  # the end of central directory record is gone
    elif damage == "local header":
        with open(path, "rb") as f:
            start = min(a for a, _, _ in zip_layout(f, len(content)).tensors.values())
        # The local header of the first storage: its signature, 30 + name + extra before.
        header = content.rfind(b"PK\x03\x04", 0, start)
        content[header:header + 4] = b"XXXX"
    else:
        content[:4] = b"ZIP?"
    open(path, "wb").write(bytes(content))
    chunks = cut(path)
    assert b"".join(data for _, _, data in chunks) == bytes(content)
    assert not any(segment.fixed_block for segment, _, _ in chunks)


def test_an_archive_of_too_many_entries_is_cut_by_content(tmp_path, monkeypatch):
    # zipfile would hold a record of every entry in memory: past the limit, the archive
    # is an ordinary file.
    path = str(tmp_path / "optimizer.pt")
    torch_file(path)
    entries = len(zipfile.ZipFile(path).infolist())
    monkeypatch.setattr(chunking, "MAX_ZIP_ENTRIES", entries - 1)
    assert not any(segment.fixed_block for segment, _, _ in cut(path))
    monkeypatch.setattr(chunking, "MAX_ZIP_ENTRIES", entries)
    assert any(segment.fixed_block for segment, _, _ in cut(path))
