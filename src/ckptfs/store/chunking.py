"""Cutting a file into chunks.

Ordinary files are cut with FastCDC (content-defined: an insertion shifts only the
chunks around it). Safetensors files are recognised by their content and cut on tensor
boundaries: the header is one segment, and each tensor's data is cut into fixed blocks
aligned to the tensor's start, so a tensor that did not change between checkpoints
dedups whole, and block i of a tensor lines up with block i of the same tensor in the
previous checkpoint (which the XOR-delta codec relies on).
"""
import json
import struct
from dataclasses import dataclass

from pyfastcdc import FastCDC

# Element width of safetensors dtypes whose bytes group by significance (floats).
FLOAT_WIDTHS = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}
DTYPE_WIDTHS = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2,
                "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
                "F8_E4M3": 1, "F8_E5M2": 1}
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class Segment:
    offset: int
    length: int
    fixed_block: int = 0      # >0: cut into blocks of this size; 0: content-defined
    width: int = 0            # element width of a float tensor (for the codec), else 0
    tensor: str | None = None # tensor name, for safetensors data segments


@dataclass(frozen=True)
class SafetensorsLayout:
    data_start: int                          # absolute offset of the data area
    tensors: dict[str, tuple[int, int, str]] # name -> (absolute start, end, dtype)


def parse_safetensors_header(head: bytes, file_size: int) -> SafetensorsLayout | None:
    """The tensor layout if `head` (the file's first bytes) starts a safetensors file.

    `head` must hold at least the first 8 bytes; returns None when it is not a valid
    safetensors header (or the header lies beyond `head`)."""
    if len(head) < 10 or file_size < 10:
        return None
    (header_len,) = struct.unpack_from("<Q", head)
    if header_len > MAX_SAFETENSORS_HEADER or 8 + header_len > file_size or head[8:9] != b"{":
        return None
    if len(head) < 8 + header_len:
        return None
    try:
        header = json.loads(head[8:8 + header_len])
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(header, dict):
        return None
    data_start = 8 + header_len
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            start, end = info["data_offsets"]
            dtype = info["dtype"]
            start, end = int(start), int(end)
        except (KeyError, TypeError, ValueError):
            return None
        if not (0 <= start <= end and data_start + end <= file_size):
            return None
        tensors[name] = (data_start + start, data_start + end, dtype)
    return SafetensorsLayout(data_start, tensors)


def safetensors_header_size(first8: bytes) -> int:
    """Bytes to read to parse a safetensors header, or 0 if these bytes cannot start one."""
    if len(first8) < 8:
        return 0
    (header_len,) = struct.unpack_from("<Q", first8)
    return 8 + header_len if header_len <= MAX_SAFETENSORS_HEADER else 0


def plan_segments(layout: SafetensorsLayout | None, file_size: int, tensor_block: int) -> list[Segment]:
    """Cover [0, file_size) with segments, in order and without gaps."""
    if layout is None:
        return [Segment(0, file_size)] if file_size else []
    segments = []
    pos = 0
    for name, (start, end, dtype) in sorted(layout.tensors.items(), key=lambda t: t[1][0]):
        if start < pos:
            return [Segment(0, file_size)]  # overlapping tensors: treat as an ordinary file
        if start > pos:
            segments.append(Segment(pos, start - pos))
        if end > start:
            width = FLOAT_WIDTHS.get(dtype, 0)
            item = DTYPE_WIDTHS.get(dtype, 1)
            block = max(item, tensor_block - tensor_block % item)
            segments.append(Segment(start, end - start, fixed_block=block, width=width, tensor=name))
        pos = end
    if pos < file_size:
        segments.append(Segment(pos, file_size - pos))
    return segments


class Chunker:
    """Cuts segments into (offset, length) chunks."""

    def __init__(self, min_size: int, avg_size: int, max_size: int):
        self._cdc = FastCDC(avg_size=avg_size, min_size=min_size, max_size=max_size)

    def cut(self, segment: Segment, read) -> "iter[tuple[int, memoryview | bytes]]":
        """Yield (absolute offset, bytes) for each chunk of `segment`.

        `read(offset, length)` returns file bytes. Content-defined segments are read in
        windows: a chunk that would run into the end of a window is cut again once the
        next window is there, so the cuts are the same as over the whole segment.
        """
        end = segment.offset + segment.length
        if segment.fixed_block:
            pos = segment.offset
            while pos < end:
                n = min(segment.fixed_block, end - pos)
                yield pos, read(pos, n)
                pos += n
            return
        window = max(16 * self._cdc.max_size, 16 << 20)
        pos = segment.offset
        buf = b""
        buf_start = pos
        read_pos = pos
        while True:
            if read_pos < end and len(buf) - (pos - buf_start) < window:
                more = read(read_pos, min(window, end - read_pos))
                buf = bytes(memoryview(buf)[pos - buf_start:]) + bytes(more)
                buf_start = pos
                read_pos += len(more)
            view = memoryview(buf)[pos - buf_start:]
            if not len(view):
                return
            at_end = read_pos >= end
            for chunk in self._cdc.cut_buf(view):
                last = chunk.offset + chunk.length == len(view)
                if last and not at_end:
                    break  # this cut may only be the window's end; re-cut with more data
                yield pos, view[chunk.offset:chunk.offset + chunk.length]
                pos_next = pos + chunk.length
                pos = pos_next
            if at_end and pos >= end:
                return
