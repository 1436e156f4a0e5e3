"""Cutting a file into chunks.

Ordinary files are cut with FastCDC (content-defined: an insertion shifts only the
chunks around it). Safetensors files are recognised by their content and cut on tensor
boundaries: the header is one segment, and each tensor's data is cut into fixed blocks
aligned to the tensor's start, so a tensor that did not change between checkpoints
dedups whole, and block i of a tensor lines up with block i of the same tensor in the
previous checkpoint (which the XOR-delta codec relies on).

A zip archive (what `torch.save` writes: each tensor's storage is a stored, uncompressed
entry) is cut on its stored entries' boundaries the same way, in fixed blocks aligned to
each entry's data, so every chunk of a storage starts on an element and the codec can
group its numbers; the codec guesses their type (fp32, most of an optimizer's state).
Everything else of the archive (headers, the pickle, the central directory) is cut by
content.
"""
import io
import json
import os
import struct
import zipfile
from dataclasses import dataclass

from pyfastcdc import FastCDC

# Element width of safetensors dtypes whose bytes group by significance (floats).
FLOAT_WIDTHS = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1}
DTYPE_WIDTHS = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2,
                "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
                "F8_E4M3": 1, "F8_E5M2": 1}
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024
ZIP_LOCAL_SIGNATURE = b"PK\x03\x04"
ZIP_LOCAL_HEADER = struct.Struct("<4s22xHH")   # signature, ..., name length, extra length
ZIP_END_SIGNATURE = b"PK\x05\x06"
ZIP_END_RECORD = struct.Struct("<4s6xH10x")     # signature, ..., total entries, ...
MAX_ZIP_ENTRIES = 0xFFFE     # more (zip64) would hold too many records in memory to read
MIN_ZIP_FILE = 1 << 20       # smaller archives are cut by content alone
MIN_ZIP_ENTRY = 64 * 1024    # smaller entries stay in the content-defined segments


@dataclass(frozen=True)
class Segment:
    offset: int
    length: int
    fixed_block: int = 0      # >0: cut into blocks of this size; 0: content-defined
    width: int = 0            # element width of a float tensor (for the codec), else 0
    tensor: str | None = None # tensor name, for safetensors data segments
    dtype: str | None = None  # the tensor's safetensors dtype (for the codec), if known


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
            segments.append(Segment(start, end - start, fixed_block=block, width=width,
                                    tensor=name, dtype=dtype))
        pos = end
    if pos < file_size:
        segments.append(Segment(pos, file_size - pos))
    return segments


@dataclass(frozen=True)
class ZipLayout:
    """The large stored entries of a zip archive (a torch.save file: each tensor's
    storage is one), by name: (absolute start, end, dtype) as in a SafetensorsLayout,
    the dtype unknown ("")."""
    tensors: dict[str, tuple[int, int, str]]


def plan_zip_segments(layout: ZipLayout, file_size: int, tensor_block: int) -> list[Segment]:
    """Cover [0, file_size) with segments: each entry of `layout` in fixed blocks of a
    multiple of 8 bytes, the rest by content."""
    block = max(8, tensor_block - tensor_block % 8)
    segments = []
    pos = 0
    for name, (start, end, _dtype) in sorted(layout.tensors.items(), key=lambda t: t[1][0]):
        if start > pos:
            segments.append(Segment(pos, start - pos))
        segments.append(Segment(start, end - start, fixed_block=block, tensor=name))
        pos = end
    if pos < file_size:
        segments.append(Segment(pos, file_size - pos))
    return segments


def is_zip_start(first4: bytes, file_size: int) -> bool:
    """Whether a file of this size starting with these bytes is worth reading as a zip."""
    return file_size >= MIN_ZIP_FILE and first4 == ZIP_LOCAL_SIGNATURE


def zip_layout(file, file_size: int) -> ZipLayout | None:
    """The large stored entries of the zip archive in the binary `file` (seekable), or
    None if it is not a zip archive `zipfile` can read or has none. Entries whose local
    header or data lie outside the file, or overlap, make it None too: then the file is
    cut by content like any other, so a damaged archive is stored as it is."""
    try:
        if not 0 < _zip_entry_count(file, file_size) <= MAX_ZIP_ENTRIES:
            return None  # zipfile holds every entry's record in memory
        with zipfile.ZipFile(file) as archive:
            infos = [i for i in archive.infolist()
                     if i.compress_type == zipfile.ZIP_STORED and i.file_size >= MIN_ZIP_ENTRY]
        entries = _entry_spans(file, infos, file_size)
    except Exception:  # noqa: BLE001 -- any archive it cannot read is just a file
        return None
    return ZipLayout(entries) if entries else None


def _zip_entry_count(file, file_size: int) -> int:
    """The entry count of the archive's end of central directory record (0 if none is
    found; 0xFFFF when a zip64 record holds the real count)."""
    tail = min(file_size, ZIP_END_RECORD.size + 0xFFFF)  # the record and its comment
    file.seek(file_size - tail)
    data = file.read(tail)
    at = data.rfind(ZIP_END_SIGNATURE)
    if at < 0 or at + ZIP_END_RECORD.size > len(data):
        return 0
    return ZIP_END_RECORD.unpack_from(data, at)[1]


def _entry_spans(file, infos, file_size: int) -> dict | None:
    """{name: (start, end, "")} of the data of `infos`, from their local headers; None
    if any lies outside the file or overlaps another."""
    entries = {}
    for info in infos:
        file.seek(info.header_offset)
        local = file.read(ZIP_LOCAL_HEADER.size)
        if len(local) != ZIP_LOCAL_HEADER.size:
            return None
        signature, name_len, extra_len = ZIP_LOCAL_HEADER.unpack(local)
        start = info.header_offset + ZIP_LOCAL_HEADER.size + name_len + extra_len
        end = start + info.compress_size
        if signature != ZIP_LOCAL_SIGNATURE or info.compress_size != info.file_size \
                or end > file_size or info.filename in entries:
            return None
        entries[info.filename] = (start, end, "")
    spans = sorted((start, end) for start, end, _ in entries.values())
    if any(a_end > b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:])):
        return None
    return entries


class Chunker:
    """Cuts segments into (offset, bytes) chunks. Used by one thread at a time."""

    def __init__(self, min_size: int, avg_size: int, max_size: int):
        self._cdc = FastCDC(avg_size=avg_size, min_size=min_size, max_size=max_size)
        self.max_size = max_size
        # One read buffer, reused for every window: fresh memory costs page faults, and
        # those dominate the cost of chunking on some machines.
        self._window = max(4 * max_size, 8 << 20)
        self._buf = bytearray(self._window + max_size)

    def cut_buf(self, view):
        """FastCDC's chunks of `view` (the last may be cut short by the view's end)."""
        return self._cdc.cut_buf(view)

    def final_cuts(self, view, at_end: bool):
        """(start, stop) of the chunks of a window of a file whose cuts are final: a chunk
        that runs into the window's end may only be cut there by the window, and is cut
        again once more data follows it (unless the file ends there)."""
        for chunk in self._cdc.cut_buf(view):
            stop = chunk.offset + chunk.length
            if stop == len(view) and not at_end:
                return
            yield chunk.offset, stop

    def cut(self, segment: Segment, read, readinto):
        """Yield (absolute offset, bytes) for each chunk of `segment`.

        `read(offset, length)` returns file bytes; `readinto(offset, view)` fills `view`
        with the bytes at `offset`. Content-defined segments are read in windows: a chunk
        that would run into the end of a window is cut again once the next window is
        there, so the cuts are the same as over the whole segment in one go.
        """
        end = segment.offset + segment.length
        if segment.fixed_block:
            pos = segment.offset
            while pos < end:
                n = min(segment.fixed_block, end - pos)
                yield pos, read(pos, n)
                pos += n
            return

        def fill(offset: int, free) -> tuple[int, bool]:
            n = min(len(free), end - offset)
            if n:
                readinto(offset, free[:n])
            return n, offset + n >= end
        yield from self.cut_windows(segment.offset, self._buf, fill)

    def cut_windows(self, start: int, buf: bytearray, fill):
        """Yield (absolute offset, bytes) for each content-defined chunk from file offset
        `start` on, reading a window at a time into `buf` (at least two largest chunks)
        with `fill(offset, free view) -> (bytes read, whether the data ends there)`."""
        filled = 0          # valid bytes at the start of buf
        buf_pos = start     # file offset of buf[0]
        while True:
            with memoryview(buf) as free:
                n, at_end = fill(buf_pos + filled, free[filled:])
            filled += n
            consumed = 0
            with memoryview(buf)[:filled] as view:
                for begin, stop in self.final_cuts(view, at_end):
                    yield buf_pos + begin, bytes(view[begin:stop])
                    consumed = stop
            if at_end:
                return
            buf[:filled - consumed] = buf[consumed:filled]
            filled -= consumed
            buf_pos += consumed


class FileReader:
    """Whole reads of an open file for the chunker (`read`, `readinto`): a read error,
    or a file that changed size while it is read, raises `error` naming the file. One
    reader for every place that cuts a file (ingest, repair), so they cut it alike."""

    def __init__(self, fd: int, path: str, size: int, error: type[Exception] = OSError,
                 doing: str = "read"):
        self.fd, self.path, self.size = fd, path, size
        self.error, self.doing = error, doing

    def _failed(self, e: OSError) -> Exception:
        return self.error(f"{self.path}: read error: {e.strerror or e}")

    def _changed(self) -> Exception:
        return self.error(f"{self.path} changed size while being {self.doing}")

    def read(self, offset: int, length: int) -> bytes:
        try:
            data = os.pread(self.fd, length, offset)
        except OSError as e:
            raise self._failed(e) from None
        if len(data) != length:
            raise self._changed()
        return data

    def readinto(self, offset: int, view) -> None:
        done = 0
        while done < len(view):
            try:
                got = os.preadv(self.fd, [view[done:]], offset + done)
            except OSError as e:
                raise self._failed(e) from None
            if got == 0:
                raise self._changed()
            done += got

    def tensor_layout(self) -> "SafetensorsLayout | ZipLayout | None":
        """The tensors of a safetensors file, or the stored entries of a zip archive
        (a torch.save file); None for any other file."""
        if self.size < 10:
            return None
        first8 = self.read(0, 8)
        header_size = safetensors_header_size(first8)
        if header_size and header_size <= self.size:
            layout = parse_safetensors_header(self.read(0, header_size), self.size)
            if layout is not None:
                return layout
        if not is_zip_start(first8[:4], self.size):
            return None
        try:
            with io.FileIO(os.dup(self.fd), "rb") as file:
                return zip_layout(file, self.size)
        except OSError as e:
            raise self._failed(e) from None

    def segments(self, layout, tensor_block: int) -> list[Segment]:
        """How the file is cut: by its tensors (`layout` from `tensor_layout`), or by
        content."""
        if isinstance(layout, ZipLayout):
            return plan_zip_segments(layout, self.size, tensor_block)
        return plan_segments(layout, self.size, tensor_block)

    def chunks(self, chunker, layout, tensor_block: int):
        """(segment, offset, bytes) of every chunk of the file, in order."""
        for segment in self.segments(layout, tensor_block):
            for offset, data in chunker.cut(segment, self.read, self.readinto):
                yield segment, offset, data
