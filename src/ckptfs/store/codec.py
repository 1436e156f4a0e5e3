"""Chunk codecs: how a chunk's raw bytes become a pack record's payload and back.

Every record names its codec, so codecs can be added without a format change; the
encoder writes only RAW, ZSTD, FLOAT and FLOAT_DELTA, and every older codec still
decodes (the store's records are on disk).

    RAW          the bytes as they are (data that does not compress by a useful margin)
    ZSTD         one zstd frame
    BYTEGROUP    (read only) the bytes of fixed-width numbers grouped by significance:
                 plane i holds byte i of every element. Payload: width u8, mask u8 (bit
                 i: plane i is zstd), then `width` u32 plane lengths, then the planes.
    XOR_DELTA    (read only) the chunk XOR a base chunk of the same length, then
                 byte-grouped. Payload: base id (32 bytes), then a BYTEGROUP payload.
    FLOAT        floats split into an exponent plane and mantissa planes (below).
    FLOAT_DELTA  the chunk's difference from a base chunk of the same length (the same
                 tensor block in an earlier checkpoint): each element minus the base's,
                 as integers, zigzag-coded, then FLOAT-coded without rotation. Payload:
                 base id (32 bytes), then that FLOAT payload. A base is never itself a
                 delta, so a read decodes at most two chunks.

FLOAT. A float's top 16 bits hold its sign, its exponent and its top mantissa bits
(bf16 is just those 16 bits; fp32 adds two mantissa bytes, fp64 six). Byte grouping
puts the sign and 7 exponent bits in one byte and the last exponent bit with the
mantissa in the next, which doubles the exponent byte's alphabet and spoils the
mantissa's. FLOAT instead rotates each element's top 16 bits left by `rotate` bits so
that its top byte is the *exponent byte*: for fp32 and bf16 (rotate 3) the low 6
exponent bits and the top 2 mantissa bits; fp16 (rotate 1) all 5 exponent bits and 3
mantissa bits; fp64 (rotate 6) the low 6 of 11 exponent bits and 2 mantissa bits.
Trained weights and optimizer states use a few dozen exponents, so the exponent's top
bits are nearly constant and are better left out of that byte (they and the sign wrap
round into the next byte, above the mantissa bits that follow the exponent byte), and
the top mantissa bits depend on the exponent, so a Huffman code of the exponent byte
codes them jointly. The elements are then byte-grouped, most significant byte first,
and each plane is Huffman-coded by zstd (matches of 7 bytes at least: shorter ones
cost more than the literals they replace) if that saves anything. fp8 is one plane, not
rotated: the Huffman code of its byte already is the joint code of sign, exponent and
mantissa.

A difference rather than an XOR for deltas: an update that carries into a higher bit
flips all the bits between in an XOR and changes the difference by one; zigzag coding
keeps a small negative difference's high bytes zero as well. Measured on the corpus's
fine-tuning checkpoints: deltas 16 % smaller than FLOAT-coded XORs, for one more pass
over the output when decoding (un-zigzag and add: four numpy steps).

    FLOAT payload: width u8, rotate u8, mask u8 (bit i: plane i is zstd), tail u8 (the
    bytes after the last whole element, 0..width-1), `width` u32 plane lengths, the
    planes (byte width-1 of every element after the rotation, then byte width-2, ...,
    byte 0), then the tail bytes as they are.

numpy is imported by the functions that use it, not with the module: the store (and every
CLI command) imports this module, most commands never encode or decode a chunk, and numpy
is the largest part of their start-up.
"""
import struct
import threading

import zstandard

from .errors import IntegrityError

RAW = 0
ZSTD = 1
BYTEGROUP = 2
XOR_DELTA = 3
FLOAT = 4
FLOAT_DELTA = 5
CODEC_NAMES = {RAW: "raw", ZSTD: "zstd", BYTEGROUP: "bytegroup", XOR_DELTA: "xor-delta",
               FLOAT: "float", FLOAT_DELTA: "float-delta"}
DELTA_CODECS = frozenset({XOR_DELTA, FLOAT_DELTA})
BASE_ID_BYTES = 32

# A float type's (width in bytes, left rotation of its top 16 bits that makes its top
# byte the exponent byte: the exponent's low 6 bits, or all if fewer, then mantissa).
FLOAT_LAYOUTS = {"F64": (8, 6), "F32": (4, 3), "BF16": (2, 3), "F16": (2, 1),
                 "F8_E4M3": (1, 0), "F8_E5M2": (1, 0)}
# The layout taken for numbers of a known width and unknown type (a guess: IEEE-like).
LAYOUT_OF_WIDTH = {8: (8, 6), 4: (4, 3), 2: (2, 3), 1: (1, 0)}
GUESSED_LAYOUT = FLOAT_LAYOUTS["F32"]  # unknown bytes: most of a pickled checkpoint is fp32

SAMPLE_BYTES = 64 * 1024   # a sample this big decides whether a buffer is worth compressing
GUESS_MIN_BYTES = 4096     # smaller chunks of unknown type are not tried as floats
_FLOAT_HEAD = struct.Struct("<BBBB")
_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    # zstandard's (de)compressor objects must not be shared between threads.
    cache = getattr(_local, "compressors", None)
    if cache is None:
        cache = _local.compressors = {}
    if level not in cache:
        cache[level] = zstandard.ZstdCompressor(level=level)
    return cache[level]


def _plane_compressor() -> zstandard.ZstdCompressor:
    """zstd tuned for the Huffman code of a byte plane: the fastest strategy with the
    longest minimum match, so nearly everything is coded as literals. Measured on the
    exponent bytes of trained bf16 weights: a fifth smaller than level 3's (whose short
    matches cost more than the literals they replace), as small as level 19's, and
    faster than both."""
    c = getattr(_local, "plane_compressor", None)
    if c is None:
        params = zstandard.ZstdCompressionParameters(
            strategy=zstandard.STRATEGY_FAST, min_match=7, window_log=17, hash_log=6,
            search_log=1)
        c = _local.plane_compressor = zstandard.ZstdCompressor(compression_params=params)
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "decompressor", None)
    if d is None:
        d = _local.decompressor = zstandard.ZstdDecompressor()
    return d


def float_layout(dtype: str | None, width: int) -> tuple[int, int] | None:
    """(width, rotate) for the FLOAT codec: by the element type if it is a float type,
    else by the element width (None when neither says)."""
    return FLOAT_LAYOUTS.get(dtype or "") or LAYOUT_OF_WIDTH.get(width)


def _uint(width: int) -> str:
    return f"<u{width}"


def _float_planes(data, width: int, rotate: int) -> list:
    """The FLOAT planes of the whole elements of `data` (numpy uint8 arrays). Each
    exponent and rest byte is computed straight into its plane (a ufunc writing uint8
    keeps the low byte of its uint16 result): twice as fast as rotating a uint16 copy
    of the top bits and splitting it."""
    import numpy as np
    n = len(data) // width
    grouped = np.frombuffer(data, dtype=np.uint8, count=n * width).reshape(n, width)
    if width == 1:
        return [grouped[:, 0]]
    top = grouped[:, width - 2:].view("<u2")[:, 0]
    if width > 2:
        top = np.ascontiguousarray(top)  # arithmetic on a strided array is much slower
    exponent_byte = np.empty(n, dtype=np.uint8)
    rest = np.empty(n, dtype=np.uint8)
    wrapped = _scratch(n)[0]
    np.right_shift(top, 8 - rotate, out=exponent_byte, casting="unsafe")
    np.left_shift(top, rotate, out=rest, casting="unsafe")
    np.right_shift(top, 16 - rotate, out=wrapped)
    np.bitwise_or(rest, wrapped, out=rest, casting="unsafe")
    return [exponent_byte, rest] + [grouped[:, i] for i in range(width - 3, -1, -1)]


def _scratch(n: int):
    """This thread's scratch arrays: two of `n` uint16 and one of `n` uint8 (fresh arrays
    for every temporary cost as much as the arithmetic)."""
    import numpy as np
    held = getattr(_local, "scratch", None)
    if held is None or len(held[2]) < n:
        held = _local.scratch = (np.empty(n, dtype=np.uint16), np.empty(n, dtype=np.uint16),
                                 np.empty(n, dtype=np.uint8))
    return held[0][:n], held[1][:n], held[2][:n]


class Encoder:
    """Picks the smallest sensible encoding for a chunk, within a few cheap trials."""

    def __init__(self, level: int = 3, min_saving: float = 0.03):
        self.level = level
        self.keep_ratio = 1.0 - min_saving

    def _zstd_or_none(self, data) -> bytes | None:
        """zstd of `data` if it saves at least min_saving, else None (store raw)."""
        if len(data) > 4 * SAMPLE_BYTES:
            sample = data[:SAMPLE_BYTES]
            if len(_compressor(self.level).compress(sample)) > len(sample) * self.keep_ratio:
                return None
        packed = _compressor(self.level).compress(data)
        return packed if len(packed) <= len(data) * self.keep_ratio else None

    def float_payload(self, data, width: int, rotate: int) -> bytes:
        """FLOAT payload of `data` (any length: the bytes after the last whole element
        are kept as they are)."""
        import numpy as np
        mask = 0
        bodies = []
        for i, plane in enumerate(_float_planes(data, width, rotate)):
            plane = np.ascontiguousarray(plane).data
            packed = _plane_compressor().compress(plane)
            # Any saving pays: a plane of a few distinct values (LayerNorm weights,
            # zero-padded rows, bf16 values stored as fp32) may save much, and
            # Huffman decoding is as fast as the copy of a raw plane into the output.
            if len(packed) < len(plane):
                mask |= 1 << i
                bodies.append(packed)
            else:
                bodies.append(plane)
        tail = len(data) % width
        head = _FLOAT_HEAD.pack(width, rotate, mask, tail)
        lengths = struct.pack(f"<{width}I", *(len(b) for b in bodies))
        return b"".join([head, lengths, *bodies, bytes(data[len(data) - tail:])])

    def encode(self, data, width: int = 0, dtype: str | None = None) -> tuple[int, bytes]:
        """Encode a chunk. `dtype` is the element type when the chunk holds numbers (a
        safetensors dtype name) and `width` their size (given for floats only); when
        neither names a float type, fp32 coding is tried against plain zstd on a sample,
        because most of a pickled checkpoint is fp32."""
        n = len(data)
        if n == 0:
            return RAW, b""
        layout = float_layout(dtype, width)
        if layout is None and n >= GUESS_MIN_BYTES and self._prefers_float(data):
            layout = GUESSED_LAYOUT
        if layout is not None:
            payload = self.float_payload(data, *layout)
            if len(payload) * 2 < n:
                # Unusually compressible for floats (a constant, padding, text): zstd's
                # matches may do better than Huffman codes of the planes.
                packed = _compressor(self.level).compress(data)
                if len(packed) < len(payload):
                    return ZSTD, packed
            if len(payload) <= n * self.keep_ratio:
                return FLOAT, payload
        packed = self._zstd_or_none(data)
        if packed is None:
            return RAW, bytes(data)
        return ZSTD, packed

    def _prefers_float(self, data) -> bool:
        sample = data[:SAMPLE_BYTES]
        plain = len(_compressor(self.level).compress(sample))
        coded = len(self.float_payload(sample, *GUESSED_LAYOUT))
        return coded < plain * 0.97

    def encode_delta(self, data, base: bytes, base_id: bytes, width: int,
                     dtype: str | None = None) -> tuple[int, bytes] | None:
        """FLOAT_DELTA payload of `data` against `base`, or None if it is not worth it."""
        layout = float_layout(dtype, width)
        if len(base) != len(data) or layout is None:
            return None
        width = layout[0]
        difference = _zigzag_difference(data, base, width)
        return FLOAT_DELTA, base_id + self.float_payload(difference, width, 0)


def _decode_bytegroup(payload, raw_len: int) -> memoryview:
    """The raw bytes, as a read-only view of a fresh array (no copy to bytes: a chunk is
    decoded on every cold read, and that copy cost as much as the decompression)."""
    payload = memoryview(payload)
    width, mask = payload[0], payload[1]
    if width == 0 or raw_len % width:
        raise ValueError("bad byte-group header")
    lengths = struct.unpack_from(f"<{width}I", payload, 2)
    pos = 2 + 4 * width
    n = raw_len // width
    import numpy as np
    out = np.empty((n, width), dtype=np.uint8)
    for i, length in enumerate(lengths):
        body = payload[pos:pos + length]
        pos += length
        if mask & (1 << i):
            body = _decompressor().decompress(body, max_output_size=n)
        if len(body) != n:
            raise ValueError("byte plane has the wrong length")
        out[:, i] = np.frombuffer(body, dtype=np.uint8)
    return _read_only_view(out)


def _float_plane_bodies(payload: memoryview, raw_len: int):
    """(width, rotate, decoded planes, tail bytes) of a FLOAT payload."""
    width, rotate, mask, tail = _FLOAT_HEAD.unpack_from(payload)
    if width not in (1, 2, 4, 8) or rotate > (8 if width > 1 else 0) or tail != raw_len % width:
        raise ValueError("bad float header")
    lengths = struct.unpack_from(f"<{width}I", payload, _FLOAT_HEAD.size)
    pos = _FLOAT_HEAD.size + 4 * width
    n = raw_len // width
    planes = []
    for i, length in enumerate(lengths):
        body = payload[pos:pos + length]
        pos += length
        if mask & (1 << i):
            # The frame says its size: checked first, so a damaged one allocates nothing
            # (and a decompress told the size is three times slower on small planes).
            if zstandard.frame_content_size(body) != n:
                raise ValueError("float plane has the wrong length")
            body = _decompressor().decompress(body)
        if len(body) != n:
            raise ValueError("float plane has the wrong length")
        planes.append(body)
    if len(payload) - pos != tail:
        raise ValueError("float payload has the wrong length")
    return width, rotate, planes, payload[pos:]


def _decode_float(payload, raw_len: int):
    """(the raw bytes of a FLOAT payload as a fresh uint8 array, the element width)."""
    import numpy as np
    width, rotate, planes, tail = _float_plane_bodies(memoryview(payload), raw_len)
    n = raw_len // width
    flat = np.empty(raw_len, dtype=np.uint8)
    grouped = flat[:n * width].reshape(n, width)
    if width == 1:
        flat[:n] = np.frombuffer(planes[0], dtype=np.uint8)
    else:
        _put_top16(grouped, planes[0], planes[1], rotate)
    for plane, column in zip(planes[2:], range(width - 3, -1, -1)):
        grouped[:, column] = np.frombuffer(plane, dtype=np.uint8)
    if len(tail):
        flat[n * width:] = np.frombuffer(tail, dtype=np.uint8)
    return flat, width


def _put_top16(grouped, exponent_plane, rest_plane, rotate: int) -> None:
    """Each element's top 16 bits from its two top planes: the 16 bits exponent byte << 8
    | rest byte, rotated right by `rotate`, computed as three shifts of the planes so that
    no array of the 16-bit values is made first."""
    import numpy as np
    width = grouped.shape[1]
    top = grouped[:, width - 2:].view("<u2")[:, 0]
    exponent_byte = np.frombuffer(exponent_plane, dtype=np.uint8)
    rest = np.frombuffer(rest_plane, dtype=np.uint8)
    acc, wrapped, low = _scratch(len(rest))
    # Arithmetic on a strided array is three times slower: wider elements are computed
    # in a scratch array and copied into place in the last step.
    if width == 2:
        acc = top
    np.left_shift(exponent_byte, 8 - rotate, out=acc, dtype=np.uint16)
    np.left_shift(rest, 16 - rotate, out=wrapped, dtype=np.uint16)  # u16: bits beyond go
    acc |= wrapped
    np.right_shift(rest, rotate, out=low)
    np.bitwise_or(acc, low, out=top)


def _zigzag_difference(data, base, width: int) -> bytes:
    """FLOAT_DELTA's transform: each element minus the base's (as integers, wrapping),
    zigzag-coded (0, -1, 1, -2, ... become 0, 1, 2, 3, ...: a small change has zero high
    bytes whatever its sign); the bytes after the last whole element XOR the base's."""
    import numpy as np
    n = len(data) // width
    ints = f"<i{width}"
    new = np.frombuffer(data, dtype=ints, count=n)
    old = np.frombuffer(base, dtype=ints, count=n)
    with np.errstate(over="ignore"):
        diff = new - old
    zigzag = (diff << 1) ^ (diff >> (8 * width - 1))
    tail = np.bitwise_xor(np.frombuffer(data, dtype=np.uint8)[n * width:],
                          np.frombuffer(base, dtype=np.uint8)[n * width:])
    return zigzag.tobytes() + tail.tobytes()


def _add_zigzag_difference(flat, width: int, base) -> None:
    """Undo `_zigzag_difference` in place: `flat` holds the coded difference and becomes
    the chunk (four passes over the elements, one scratch array)."""
    import numpy as np
    n = len(flat) // width
    elems = flat[:n * width].view(_uint(width))
    sign = _scratch_elements(n, width)
    np.bitwise_and(elems, 1, out=sign)
    np.negative(sign, out=sign)  # 0 or all ones
    elems >>= 1
    elems ^= sign
    elems += np.frombuffer(base, dtype=_uint(width), count=n)
    flat[n * width:] ^= np.frombuffer(base, dtype=np.uint8)[n * width:]


def _scratch_elements(n: int, width: int):
    import numpy as np
    held = getattr(_local, "elements", None)
    if held is None:
        held = _local.elements = {}
    array = held.get(width)
    if array is None or len(array) < n:
        array = held[width] = np.empty(n, dtype=_uint(width))
    return array[:n]


def _read_only_view(array: "numpy.ndarray") -> memoryview:  # noqa: F821
    flat = array.reshape(-1)
    flat.flags.writeable = False  # cached and shared between readers: nobody may change it
    return flat.data


def _xor_bytes(data, base) -> memoryview:
    import numpy as np
    return _read_only_view(np.bitwise_xor(np.frombuffer(data, dtype=np.uint8),
                                          np.frombuffer(base, dtype=np.uint8)))


def decode(codec: int, payload: bytes, raw_len: int, load_base=None) -> bytes | memoryview:
    """Raw bytes of a record (bytes, or a read-only memoryview for the numpy-decoded
    codecs). `load_base(id)` returns the raw bytes of a delta's base. Raises
    IntegrityError if the payload does not decode to `raw_len` bytes."""
    try:
        if codec == RAW:
            data = payload
        elif codec == ZSTD:
            data = _decompressor().decompress(payload, max_output_size=raw_len)
        elif codec == FLOAT:
            data = _read_only_view(_decode_float(payload, raw_len)[0])
        elif codec == FLOAT_DELTA:
            base = _delta_base(load_base, payload, raw_len)
            flat, width = _decode_float(memoryview(payload)[BASE_ID_BYTES:], raw_len)
            _add_zigzag_difference(flat, width, base)
            data = _read_only_view(flat)
        elif codec == BYTEGROUP:
            data = _decode_bytegroup(payload, raw_len)
        elif codec == XOR_DELTA:
            base = _delta_base(load_base, payload, raw_len)
            data = _xor_bytes(_decode_bytegroup(memoryview(payload)[BASE_ID_BYTES:], raw_len),
                              base)
        else:
            raise ValueError(f"unknown codec {codec}")
    except (zstandard.ZstdError, ValueError, struct.error) as e:
        raise IntegrityError(f"chunk does not decode: {e}") from None
    if len(data) != raw_len:
        raise IntegrityError(f"chunk decodes to {len(data)} bytes, expected {raw_len}")
    return data


def _delta_base(load_base, payload, raw_len: int):
    if len(payload) < BASE_ID_BYTES:
        raise ValueError("delta payload too short")
    base = load_base(bytes(payload[:BASE_ID_BYTES]))
    if len(base) != raw_len:
        raise ValueError(f"delta base has {len(base)} bytes, expected {raw_len}")
    return base


def is_delta(codec: int) -> bool:
    """Whether records of `codec` are decoded against a base chunk."""
    return codec in DELTA_CODECS


def delta_base_id(codec: int, payload: bytes) -> bytes | None:
    return bytes(payload[:BASE_ID_BYTES]) if codec in DELTA_CODECS else None
