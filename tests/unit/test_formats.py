"""Codecs, chunking, packs and journal: the on-disk building blocks."""
import json
import os
import struct

import numpy as np
import pytest
from pyfastcdc import FastCDC

from ckptfs.store import IntegrityError
from ckptfs.store import codec as codecs
from ckptfs.store.backend import LocalBackend
from ckptfs.store.chunking import Chunker, Segment, parse_safetensors_header, plan_segments
from ckptfs.store.journal import GENESIS, Journal
from ckptfs.store.pack import KIND_CHUNK, PackWriter, pack_name, parse_record, scan_pack


# The codecs themselves: tests/unit/test_codec.py.


def test_damaged_payload_never_decodes_to_wrong_bytes():
    data = b"tensor bytes " * 10_000
    codec_id, payload = codecs.Encoder().encode(data)
    broken = payload[:10] + bytes([payload[10] ^ 0xFF]) + payload[11:]
    try:
        out = codecs.decode(codec_id, broken, len(data))
    except IntegrityError:
        return
    assert out == data  # a flip zstd cannot notice must still not go unnoticed by the caller


def test_windowed_cdc_cuts_like_one_pass():
    data = os.urandom(40 << 20)
    chunker = Chunker(64 << 10, 256 << 10, 1 << 20)
    ref = [(c.offset + 5, c.length) for c in
           FastCDC(avg_size=256 << 10, min_size=64 << 10, max_size=1 << 20).cut_buf(data[5:])]
    got = [(off, b) for off, b in chunker.cut(Segment(5, len(data) - 5), None, readinto_from(data))]
    assert [(off, len(b)) for off, b in got] == ref
    assert b"".join(b for _, b in got) == data[5:]


def readinto_from(data: bytes):
    def readinto(offset, view):
        view[:] = data[offset:offset + len(view)]
    return readinto


def safetensors_bytes(tensors: dict) -> bytes:
    from safetensors.numpy import save
    return save(tensors)


def test_safetensors_segments_follow_tensors():
    blob = safetensors_bytes({"a": np.ones((1000, 300), np.float32),
                              "b": np.ones(10, np.int64), "c": np.ones(7, np.float16)})
    layout = parse_safetensors_header(blob, len(blob))
    segs = plan_segments(layout, len(blob), 1 << 20)
    assert segs[0].offset == 0 and sum(s.length for s in segs) == len(blob)
    by_name = {s.tensor: s for s in segs if s.tensor}
    assert by_name["a"].width == 4 and by_name["a"].fixed_block == 1 << 20
    assert by_name["b"].width == 0 and by_name["c"].width == 2
    for s in segs:
        assert s.offset == sum(x.length for x in segs[:segs.index(s)])


@pytest.mark.parametrize("mangle", [
    lambda b: b[:20],                                    # truncated header
    lambda b: struct.pack("<Q", 1 << 40) + b[8:],        # absurd header length
    lambda b: b[:8] + b"[" + b[9:],                      # not a JSON object
])
def test_malformed_safetensors_is_an_ordinary_file(mangle):
    blob = mangle(safetensors_bytes({"a": np.ones(100, np.float32)}))
    assert parse_safetensors_header(blob, len(blob)) is None
    assert plan_segments(None, len(blob), 1 << 20) == [Segment(0, len(blob))]


def test_pack_record_checksum_catches_a_flipped_bit(tmp_path):
    backend = LocalBackend(str(tmp_path))
    w = PackWriter(backend, 7)
    off, length = w.append(KIND_CHUNK, codecs.RAW, b"i" * 32, 5, b"hello")
    w.close()
    raw = bytearray(backend.get(pack_name(7)))
    assert parse_record(bytes(raw[off:off + length]), 7, off).payload == b"hello"
    raw[off + length - 2] ^= 0x01
    with pytest.raises(IntegrityError, match="pack 00000007: checksum mismatch"):
        parse_record(bytes(raw[off:off + length]), 7, off)


def test_scan_skips_a_damaged_record_and_keeps_the_rest(tmp_path):
    backend = LocalBackend(str(tmp_path))
    w = PackWriter(backend, 1)
    offsets = [w.append(KIND_CHUNK, 0, bytes([i]) * 32, 100, os.urandom(100))[0] for i in range(3)]
    w.close()
    with open(backend.path_of(pack_name(1)), "r+b") as f:
        f.seek(offsets[1] + 60)
        byte = f.read(1)
        f.seek(offsets[1] + 60)
        f.write(bytes([byte[0] ^ 0xFF]))
    scan = scan_pack(backend, 1)
    assert [r.record_id[0] for r in scan.records] == [0, 2]
    assert scan.complete and len(scan.damage) == 1


def test_unfinished_pack_scans_up_to_its_last_whole_record(tmp_path):
    backend = LocalBackend(str(tmp_path))
    w = PackWriter(backend, 2)
    w.append(KIND_CHUNK, 0, b"a" * 32, 10, b"x" * 10)
    w.append(KIND_CHUNK, 0, b"b" * 32, 10, b"y" * 10)
    w._out.commit()  # its bytes on disk, without the end a closed pack has: as a crash leaves it
    path = backend.path_of(pack_name(2))
    os.truncate(path, os.path.getsize(path) - 3)
    scan = scan_pack(backend, 2)
    assert [r.record_id for r in scan.records] == [b"a" * 32] and not scan.complete
    assert scan.damage == [] and "truncated record" in scan.tail


def test_journal_chain_and_torn_tail(tmp_path):
    j = Journal(LocalBackend(str(tmp_path)).journal())
    with j.locked():
        first = j.append({"type": "x", "n": 1})
        second = j.append({"type": "x", "n": 2})
    assert first["prev"] == GENESIS and second["seq"] == 2
    with open(j.path, "ab") as f:
        f.write(b'{"seq": 3, "type": "x", "half')  # crash mid-append
    assert [e["n"] for e in j.entries()] == [1, 2]
    with j.locked():
        third = j.append({"type": "x", "n": 3})
    assert third["seq"] == 3
    assert [e["seq"] for e in j.entries()] == [1, 2, 3]
    assert all(line.endswith(b"}") for line in open(j.path, "rb").read().splitlines())


def test_journal_detects_an_altered_entry(tmp_path):
    j = Journal(LocalBackend(str(tmp_path)).journal())
    with j.locked():
        for n in range(3):
            j.append({"type": "x", "n": n})
    lines = open(j.path, "rb").read().splitlines()
    entry = json.loads(lines[1])
    entry["n"] = 99
    lines[1] = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()
    open(j.path, "wb").write(b"\n".join(lines) + b"\n")
    with pytest.raises(IntegrityError, match="line 3"):
        list(j.entries())


def test_journal_rollback_removes_only_the_last_entry(tmp_path):
    j = Journal(LocalBackend(str(tmp_path)).journal())
    with j.locked():
        j.append({"type": "x", "n": 1})
        second = j.append({"type": "x", "n": 2})
        j.rollback(second)
        third = j.append({"type": "x", "n": 3})
    assert [(e["seq"], e["n"]) for e in j.entries()] == [(1, 1), (2, 3)]
    with pytest.raises(RuntimeError):
        j.rollback(second)
    assert third["seq"] == 2
