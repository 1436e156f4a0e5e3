"""The encoder of the codecs ckptfs no longer writes (BYTEGROUP, XOR_DELTA), as it wrote
them, so tests can make the records that older stores hold on disk and check that they
still decode (docs/format.md, "Codecs")."""
import struct

import numpy as np
import zstandard

from ckptfs.store import codec


def bytegroup_payload(data, width: int, level: int = 3, min_saving: float = 0.03) -> bytes:
    """BYTEGROUP: plane i holds byte i of every element, each zstd'd if that saves
    `min_saving`; width u8, mask u8, `width` u32 plane lengths, the planes."""
    planes = np.frombuffer(data, dtype=np.uint8).reshape(-1, width).T
    mask, bodies = 0, []
    for i in range(width):
        plane = np.ascontiguousarray(planes[i]).tobytes()
        packed = zstandard.ZstdCompressor(level=level).compress(plane)
        if len(packed) <= len(plane) * (1 - min_saving):
            mask |= 1 << i
            bodies.append(packed)
        else:
            bodies.append(plane)
    return struct.pack(f"<BB{width}I", width, mask, *map(len, bodies)) + b"".join(bodies)


class LegacyEncoder(codec.Encoder):
    """Writes floats as BYTEGROUP and deltas as XOR_DELTA, like ckptfs before FLOAT."""

    def encode(self, data, width: int = 0, dtype: str | None = None):
        width = width or 4
        if len(data) and len(data) % width == 0 and width > 1:
            payload = bytegroup_payload(data, width, self.level)
            if len(payload) <= len(data) * self.keep_ratio:
                return codec.BYTEGROUP, payload
        packed = self._zstd_or_none(data)
        return (codec.RAW, bytes(data)) if packed is None else (codec.ZSTD, packed)

    def encode_delta(self, data, base, base_id, width, dtype=None):
        if len(base) != len(data) or len(data) % width:
            return None
        xored = np.bitwise_xor(np.frombuffer(data, dtype=np.uint8),
                               np.frombuffer(base, dtype=np.uint8))
        return codec.XOR_DELTA, base_id + bytegroup_payload(xored.tobytes(), width, self.level)
