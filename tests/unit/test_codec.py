"""The chunk codecs (store/codec.py): FLOAT and FLOAT_DELTA round trips for every float
type and its edge values, the encoder's choice, damaged payloads, and the records of the
codecs older stores hold (BYTEGROUP, XOR_DELTA), which must still decode."""
import os
import struct

import numpy as np
import pytest

from ckptfs.store import IntegrityError
from ckptfs.store import codec as codecs
from tests.helpers.legacy_codec import LegacyEncoder, bytegroup_payload

FLOAT_TYPES = ["F64", "F32", "BF16", "F16", "F8_E4M3", "F8_E5M2"]
BASE_ID = b"B" * 32


def trained_like(dtype: str, n: int, seed: int = 0) -> bytes:
    """n values of a trained weight's spread (normal, std 0.02) in `dtype`'s bytes."""
    values = np.random.default_rng(seed).standard_normal(n).astype(np.float32) * 0.02
    if dtype == "F64":
        return values.astype(np.float64).tobytes()
    if dtype == "F32":
        return values.tobytes()
    if dtype == "F16":
        return values.astype(np.float16).tobytes()
    bits = values.view(np.uint32)
    if dtype == "BF16":
        return (bits >> 16).astype(np.uint16).tobytes()
    # fp8: sign, the exponent's low bits and the top mantissa bits of the fp32 value
    mantissa_bits = 3 if dtype == "F8_E4M3" else 2
    exponent = ((bits >> 23) & 0xFF).astype(np.int64) - 127 + (7 if mantissa_bits == 3 else 15)
    exponent = np.clip(exponent, 0, 15 if mantissa_bits == 3 else 31)
    mantissa = (bits >> (23 - mantissa_bits)) & ((1 << mantissa_bits) - 1)
    return (((bits >> 31) << 7) | (exponent << mantissa_bits) | mantissa).astype(np.uint8).tobytes()


def edge_values(dtype: str) -> bytes:
    """Zeros, negative zero, infinities, NaNs with payloads, subnormals, extremes."""
    if dtype in ("F64", "F32", "F16"):
        np_type = {"F64": np.float64, "F32": np.float32, "F16": np.float16}[dtype]
        info = np.finfo(np_type)
        values = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, info.max, -info.max,
                           info.tiny, info.tiny / 2, -info.tiny / 4, info.eps, 1.0, -1.0],
                          dtype=np_type)
        uint = values.view(f"<u{values.itemsize}").copy()
        nan_payloads = np.array([uint[4] | 1, uint[4] | 0x5, (uint[4] | 3) | (uint[4] << 0)],
                                dtype=uint.dtype)
        negative_nan = uint[4] | (np.array(1, dtype=uint.dtype) << (8 * values.itemsize - 1))
        return np.concatenate([uint, nan_payloads, [negative_nan]]).astype(uint.dtype).tobytes()
    if dtype == "BF16":
        return np.array([0x0000, 0x8000, 0x7F80, 0xFF80, 0x7FC0, 0x7F81, 0xFFC1, 0x0001,
                         0x8001, 0x007F, 0x7F7F, 0xFF7F, 0x3F80], dtype="<u2").tobytes()
    return bytes(range(256))  # fp8: every value, NaNs and infinities included


def cases(dtype: str):
    """Byte strings in `dtype` of every sort the codec must take."""
    width = codecs.FLOAT_LAYOUTS[dtype][0]
    edges = edge_values(dtype)
    trained = trained_like(dtype, 50_000)
    yield "edges", edges
    yield "edges repeated", edges * 500
    yield "trained", trained
    yield "trained and edges", trained[:30_000 * width] + edges + trained[30_000 * width:]
    yield "all equal", trained[:width] * 40_000
    yield "zeros", bytes(width * 40_000)
    yield "random bytes", os.urandom(width * 30_000)
    for extra in range(1, width):
        yield f"trained + {extra} bytes", trained + b"\x7f\x00\xff\x01\x80\x3f\xc0"[:extra]
    yield "shorter than one element", b"\x01\x02\x03"[:max(width - 1, 0)]
    yield "one byte", b"\x80"


@pytest.mark.parametrize("dtype", FLOAT_TYPES)
def test_float_round_trips_every_kind_of_value(dtype):
    width, rotate = codecs.FLOAT_LAYOUTS[dtype]
    encoder = codecs.Encoder()
    for name, data in cases(dtype):
        forced = encoder.float_payload(data, width, rotate)
        assert bytes(codecs.decode(codecs.FLOAT, forced, len(data))) == data, name
        codec_id, payload = encoder.encode(data, width, dtype)
        assert bytes(codecs.decode(codec_id, payload, len(data))) == data, name


@pytest.mark.parametrize("dtype", FLOAT_TYPES)
def test_float_delta_round_trips(dtype):
    width = codecs.FLOAT_LAYOUTS[dtype][0]
    encoder = codecs.Encoder()
    for name, data in cases(dtype):
        for base_name, base in [("random", os.urandom(len(data))), ("edges", cases_base(data))]:
            codec_id, payload = encoder.encode_delta(data, base, BASE_ID, width, dtype)
            loaded = []
            out = codecs.decode(codec_id, payload, len(data),
                                lambda i, b=base: loaded.append(i) or b)
            assert codec_id == codecs.FLOAT_DELTA
            assert bytes(out) == data and loaded == [BASE_ID], (name, base_name)


def cases_base(data: bytes) -> bytes:
    """A base close to `data`: the same bytes with every 7th byte changed."""
    base = bytearray(data)
    base[::7] = bytes((b + 1) & 0xFF for b in base[::7])
    return bytes(base)


@pytest.mark.parametrize("dtype", ["F32", "BF16", "F16", "F64"])
def test_small_updates_make_a_small_delta(dtype):
    rng = np.random.default_rng(1)
    base = rng.standard_normal(1 << 17).astype(np.float32) * 0.02
    new = base + rng.standard_normal(base.shape).astype(np.float32) * 1e-5
    np_type = {"F32": np.float32, "F64": np.float64, "F16": np.float16}.get(dtype)
    if np_type is None:  # bf16: the top halves
        as_bytes = lambda a: (a.view(np.uint32) >> 16).astype(np.uint16).tobytes()  # noqa: E731
    else:
        as_bytes = lambda a: a.astype(np_type).tobytes()  # noqa: E731
    width = codecs.FLOAT_LAYOUTS[dtype][0]
    codec_id, payload = codecs.Encoder().encode_delta(as_bytes(new), as_bytes(base), BASE_ID,
                                                      width, dtype)
    _, plain = codecs.Encoder().encode(as_bytes(new), width, dtype)
    assert codec_id == codecs.FLOAT_DELTA and len(payload) < 0.8 * len(plain)


@pytest.mark.parametrize("dtype", ["F32", "BF16", "F16", "F64"])
def test_trained_floats_are_float_coded_and_beat_byte_grouping(dtype):
    data = trained_like(dtype, 1 << 18)
    width = codecs.FLOAT_LAYOUTS[dtype][0]
    codec_id, payload = codecs.Encoder().encode(data, width, dtype)
    assert codec_id == codecs.FLOAT
    assert len(payload) < len(bytegroup_payload(data, width, min_saving=0))


def test_exponent_planes_are_coded_and_plain_mantissa_bytes_stay_raw():
    data = trained_like("F32", 1 << 18)
    _, payload = codecs.Encoder().encode(data, 4, "F32")
    mask = payload[2]
    assert mask == 0b0011  # exponent byte and the rest of the top 16 bits; two raw bytes


def test_a_mantissa_plane_that_saves_little_is_still_compressed():
    # fp32 values that came from bf16 and were nudged: the low mantissa bytes hold few
    # distinct values, and each plane is coded on its own whatever the others do.
    bf16 = np.frombuffer(trained_like("BF16", 1 << 17), dtype=np.uint16).astype(np.uint32)
    low = np.random.default_rng(2).integers(0, 4, bf16.shape, dtype=np.uint32)
    data = ((bf16 << 16) | low).astype("<u4").tobytes()
    _, payload = codecs.Encoder().encode(data, 4, "F32")
    assert payload[2] == 0b1111


def test_unknown_bytes_are_tried_as_fp32():
    data = trained_like("F32", 1 << 17)
    assert codecs.Encoder().encode(data)[0] == codecs.FLOAT
    assert codecs.Encoder().encode(data, 0, "I32")[0] == codecs.FLOAT  # ints: still a guess


@pytest.mark.parametrize("data, width, dtype, expect", [
    (b"", 4, "F32", codecs.RAW),
    (os.urandom(1 << 18), 4, "F32", codecs.RAW),          # floats that do not compress
    (os.urandom(1 << 18), 2, "BF16", codecs.RAW),
    (os.urandom(1 << 18), 0, None, codecs.RAW),
    (b"checkpoint " * 50_000, 0, None, codecs.ZSTD),      # text: zstd, not float coding
    (b"checkpoint " * 50_000, 4, "F32", codecs.ZSTD),     # float coding does not pay: zstd does
    (bytes(1 << 18), 4, "F32", codecs.ZSTD),              # a constant: zstd's matches win
])
def test_the_encoder_falls_back_when_float_coding_does_not_pay(data, width, dtype, expect):
    codec_id, payload = codecs.Encoder().encode(data, width, dtype)
    assert codec_id == expect
    assert bytes(codecs.decode(codec_id, payload, len(data))) == data
    assert len(payload) <= len(data)


def float_record():
    data = trained_like("F32", 20_001) + b"\x01\x02"
    return data, codecs.Encoder().float_payload(data, 4, 3)


@pytest.mark.parametrize("cut", [0, 1, 3, 4, 10, 20, 21, 1000, -1, -2, -3])
def test_a_truncated_float_payload_raises_integrity_error(cut):
    data, payload = float_record()
    with pytest.raises(IntegrityError):
        codecs.decode(codecs.FLOAT, payload[:cut], len(data))


@pytest.mark.parametrize("offset, value", [
    (0, 3),      # width 3 does not exist
    (0, 0),
    (0, 2),      # another width: tail and plane lengths no longer agree
    (1, 9),      # rotation beyond 16 bits' halves
    (2, 0xFF),   # mask: a raw plane said to be zstd
    (3, 0),      # tail length
    (4, 0),      # first plane's length
    (8, 0xFF),
])
def test_a_wrong_float_header_raises_integrity_error(offset, value):
    data, payload = float_record()
    broken = bytearray(payload)
    broken[offset] = value
    with pytest.raises(IntegrityError):
        codecs.decode(codecs.FLOAT, bytes(broken), len(data))


def test_a_wrong_raw_length_raises_integrity_error():
    data, payload = float_record()
    for raw_len in (len(data) - 1, len(data) + 4, 0):
        with pytest.raises(IntegrityError):
            codecs.decode(codecs.FLOAT, payload, raw_len)


def test_a_damaged_delta_raises_integrity_error():
    data = trained_like("F32", 10_000)
    base = trained_like("F32", 10_000, seed=1)
    _, payload = codecs.Encoder().encode_delta(data, base, BASE_ID, 4, "F32")
    with pytest.raises(IntegrityError):
        codecs.decode(codecs.FLOAT_DELTA, payload[:20], len(data), lambda i: base)
    with pytest.raises(IntegrityError):  # a base of another length
        codecs.decode(codecs.FLOAT_DELTA, payload, len(data), lambda i: base[:-4])


def test_an_unknown_codec_raises_integrity_error():
    with pytest.raises(IntegrityError):
        codecs.decode(9, b"abc", 3)


# -- the codecs older stores hold ------------------------------------------------------------

def test_old_bytegroup_records_still_decode():
    for width in (2, 4, 8):
        data = np.random.default_rng(width).standard_normal(4096 * 8 // width).astype(
            {2: np.float16, 4: np.float32, 8: np.float64}[width]).tobytes()
        payload = bytegroup_payload(data, width)
        assert payload[1] != 0  # some plane is zstd: both kinds of plane are read
        assert bytes(codecs.decode(codecs.BYTEGROUP, payload, len(data))) == data


def test_old_xor_delta_records_still_decode():
    rng = np.random.default_rng(0)
    base = rng.standard_normal(1 << 16).astype(np.float32)
    new = base + rng.standard_normal(base.shape).astype(np.float32) * 1e-4
    codec_id, payload = LegacyEncoder().encode_delta(new.tobytes(), base.tobytes(), BASE_ID, 4)
    assert codec_id == codecs.XOR_DELTA
    loaded = []
    out = codecs.decode(codec_id, payload, new.nbytes,
                        lambda i: loaded.append(i) or base.tobytes())
    assert bytes(out) == new.tobytes() and loaded == [BASE_ID]
    assert codecs.delta_base_id(codec_id, payload) == BASE_ID and codecs.is_delta(codec_id)


def test_a_damaged_old_bytegroup_record_raises_integrity_error():
    data = np.random.default_rng(0).standard_normal(4096).astype(np.float32).tobytes()
    payload = bytegroup_payload(data, 4)
    for broken in (payload[:7], b"\x03" + payload[1:], payload[:-1]):
        with pytest.raises(IntegrityError):
            codecs.decode(codecs.BYTEGROUP, broken, len(data))


def test_codec_numbers_are_those_on_disk():
    # Records name their codec by number: the numbers can never change.
    assert (codecs.RAW, codecs.ZSTD, codecs.BYTEGROUP, codecs.XOR_DELTA, codecs.FLOAT,
            codecs.FLOAT_DELTA) == (0, 1, 2, 3, 4, 5)
    assert struct.calcsize("<BBBB") == 4
