"""Chunk codecs: how a chunk's raw bytes become a pack record's payload and back.

Every record names its codec, so codecs can be added without a format change.

    RAW        the bytes as they are (data that does not compress by a useful margin)
    ZSTD       one zstd frame
    BYTEGROUP  the bytes of fixed-width numbers grouped by significance: plane i holds
               byte i of every element. For floats the sign/exponent plane compresses
               well and the mantissa planes do not, so those stay raw and cost nothing
               to decode. Payload: width u8, mask u8 (bit i: plane i is zstd), then
               `width` u32 plane lengths, then the planes.
    XOR_DELTA  the chunk XOR a base chunk of the same length (the same tensor block in
               an earlier checkpoint), then byte-grouped. Payload: base id (32 bytes),
               then a BYTEGROUP payload. The base is never itself a delta, so a read
               decodes at most two chunks.

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
CODEC_NAMES = {RAW: "raw", ZSTD: "zstd", BYTEGROUP: "bytegroup", XOR_DELTA: "xor-delta"}

SAMPLE_BYTES = 64 * 1024   # a sample this big decides whether a buffer is worth compressing
_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    # zstandard's (de)compressor objects must not be shared between threads.
    cache = getattr(_local, "compressors", None)
    if cache is None:
        cache = _local.compressors = {}
    if level not in cache:
        cache[level] = zstandard.ZstdCompressor(level=level)
    return cache[level]


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "decompressor", None)
    if d is None:
        d = _local.decompressor = zstandard.ZstdDecompressor()
    return d


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

    def bytegroup(self, data, width: int) -> bytes:
        """BYTEGROUP payload of `data`, whose length is a multiple of `width`."""
        import numpy as np
        planes = np.frombuffer(data, dtype=np.uint8).reshape(-1, width).T
        mask = 0
        bodies = []
        for i in range(width):
            plane = np.ascontiguousarray(planes[i]).data
            packed = self._zstd_or_none(plane)
            if packed is None:
                bodies.append(plane)
            else:
                mask |= 1 << i
                bodies.append(packed)
        head = struct.pack(f"<BB{width}I", width, mask, *(len(b) for b in bodies))
        return b"".join([head, *bodies])

    def encode(self, data, width: int = 0) -> tuple[int, bytes]:
        """Encode a chunk. `width` is the element size when the chunk holds numbers
        (a float tensor block); 0 means unknown, and then a 4-byte grouping is tried
        against plain zstd on a sample, because most of a pickled checkpoint is fp32."""
        n = len(data)
        if n == 0:
            return RAW, b""
        if width > 1 and n % width == 0:
            payload = self.bytegroup(data, width)
            if len(payload) <= n * self.keep_ratio:
                return BYTEGROUP, payload
            return RAW, bytes(data)
        if width == 0 and n >= 4 * SAMPLE_BYTES and n % 4 == 0 and self._prefers_bytegroup(data):
            payload = self.bytegroup(data, 4)
            if len(payload) <= n * self.keep_ratio:
                return BYTEGROUP, payload
        packed = self._zstd_or_none(data)
        if packed is None:
            return RAW, bytes(data)
        return ZSTD, packed

    def _prefers_bytegroup(self, data) -> bool:
        sample = data[:SAMPLE_BYTES]
        plain = len(_compressor(self.level).compress(sample))
        grouped = len(self.bytegroup(sample, 4))
        return grouped < plain * 0.97

    def encode_delta(self, data, base: bytes, base_id: bytes, width: int) -> tuple[int, bytes] | None:
        """XOR_DELTA payload of `data` against `base`, or None if it is not worth it."""
        if len(base) != len(data) or width < 1 or len(data) % width:
            return None
        import numpy as np
        xored = np.bitwise_xor(np.frombuffer(data, dtype=np.uint8),
                               np.frombuffer(base, dtype=np.uint8))
        payload = base_id + self.bytegroup(xored.data, width)
        return XOR_DELTA, payload


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


def _read_only_view(array: "numpy.ndarray") -> memoryview:  # noqa: F821
    flat = array.reshape(-1)
    flat.flags.writeable = False  # cached and shared between readers: nobody may change it
    return flat.data


def decode(codec: int, payload: bytes, raw_len: int, load_base=None) -> bytes | memoryview:
    """Raw bytes of a record (bytes, or a read-only memoryview for the numpy-decoded
    codecs). `load_base(id)` returns the raw bytes of a delta's base. Raises
    IntegrityError if the payload does not decode to `raw_len` bytes."""
    try:
        if codec == RAW:
            data = payload
        elif codec == ZSTD:
            data = _decompressor().decompress(payload, max_output_size=raw_len)
        elif codec == BYTEGROUP:
            data = _decode_bytegroup(payload, raw_len)
        elif codec == XOR_DELTA:
            base = load_base(payload[:32])
            xored = _decode_bytegroup(memoryview(payload)[32:], raw_len)
            import numpy as np
            data = _read_only_view(np.bitwise_xor(np.frombuffer(xored, dtype=np.uint8),
                                                  np.frombuffer(base, dtype=np.uint8)))
        else:
            raise ValueError(f"unknown codec {codec}")
    except (zstandard.ZstdError, ValueError, struct.error) as e:
        raise IntegrityError(f"chunk does not decode: {e}") from None
    if len(data) != raw_len:
        raise IntegrityError(f"chunk decodes to {len(data)} bytes, expected {raw_len}")
    return data


def delta_base_id(codec: int, payload: bytes) -> bytes | None:
    return bytes(payload[:32]) if codec == XOR_DELTA else None
