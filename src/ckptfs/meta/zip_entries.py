"""The entries of a zip file as the most permissive loader would read them, for the pickle
scan (scan.py).

`zipfile` refuses what other readers take: an entry whose general-purpose flags say
"encrypted" (bit 0x1) or "patched data" (0x20), a wrong CRC (found only once the whole
member is read), a central directory that is damaged. torch's own reader, or a
hand-made loader, may still load the pickle inside, so the scan reads every entry
itself: from the central directory when `zipfile` can parse it, else every entry found
by walking the local headers from the start of the file. Data is read by the local header's offsets, inflated (or taken as
stored) whatever the flags and the CRC say. Nothing is written anywhere but a temporary
file holding one inflated member at a time.
"""
import bz2
import io
import struct
import tempfile
import zipfile
import zlib
from dataclasses import dataclass

LOCAL_SIGNATURE = b"PK\x03\x04"
# What may follow the last entry: the central directory, its end records, a descriptor.
TRAILER_SIGNATURES = (b"PK\x01\x02", b"PK\x05\x06", b"PK\x06\x06", b"PK\x06\x07")
DESCRIPTOR_SIGNATURE = b"PK\x07\x08"
LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")
ENCRYPTED, HAS_DESCRIPTOR = 0x1, 0x8
STORED, DEFLATED, BZIP2 = 0, 8, 12
ZIP64_EXTRA = 0x0001
READ_CHUNK = 1 << 20
SPOOL_IN_MEMORY = 16 << 20       # an inflated member larger than this goes to a temp file
INFLATE_INPUT = 64 << 10         # compressed bytes read per step
INFLATE_OUTPUT = 4 << 20         # inflated bytes per step at most, whatever a bomb's ratio


class EntryUnreadable(Exception):
    """One entry's bytes cannot be had (the message says why)."""


class TooLarge(Exception):
    """The entry inflates past the limit given."""


@dataclass
class Entry:
    name: str
    offset: int                   # of its local header
    method: int
    flags: int
    compressed: int | None        # bytes of data after the local header; None: unknown

    @property
    def encrypted(self) -> bool:
        return bool(self.flags & ENCRYPTED)


def read_at(f, offset: int, n: int) -> bytes:
    f.seek(offset)
    return f.read(n)


def zip_entries(f, size: int) -> tuple[list[Entry], str | None]:
    """Every entry of the zip in `f`, and why that list may be incomplete (None when the
    central directory was read, or the local headers were walked to the end). Loaders
    list a zip by its central directory; only when it cannot be read are the local
    headers walked (that walk may have to read through stored data to its descriptor)."""
    try:
        return [Entry(info.filename, info.header_offset, info.compress_type, info.flag_bits,
                      info.compress_size) for info in zipfile.ZipFile(f).infolist()], None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, OSError) as e:
        directory_problem = f"its central directory cannot be read ({e})"
    walked, walk_problem = walk_local_headers(f, size)
    if walk_problem:
        return walked, f"{directory_problem}, and walking its entries stopped: {walk_problem}"
    return walked, None


def walk_local_headers(f, size: int) -> tuple[list[Entry], str | None]:
    """The entries found header after header from offset 0, and why the walk stopped
    before the central directory or the end of the file (None if it did not)."""
    entries, offset = [], 0
    while offset < size:
        header = read_at(f, offset, LOCAL_HEADER.size)
        if header[:4] in TRAILER_SIGNATURES:
            return entries, None
        if len(header) < LOCAL_HEADER.size or header[:4] != LOCAL_SIGNATURE:
            # Not where the last entry said the next would be: look further on (what
            # stands here may be a damaged directory, or bytes hiding an entry).
            offset = find_signature(f, offset + 1, size)
            if offset is None:
                return entries, None
            continue
        entry, data_start = parse_local_header(f, offset, header)
        if entry.compressed is None:
            entries.append(entry)
            return entries, f"the size of {entry.name!r} is not recorded before its data"
        entries.append(entry)
        offset = data_start + entry.compressed
        if entry.flags & HAS_DESCRIPTOR:
            offset += descriptor_length(f, offset)
    return entries, None


def find_signature(f, start: int, size: int, signature: bytes = LOCAL_SIGNATURE) -> int | None:
    """The offset of the next `signature` at or after `start`, if any."""
    overlap = len(signature) - 1
    position = start
    while position < size:
        chunk = read_at(f, position, READ_CHUNK)
        found = chunk.find(signature)
        if found >= 0:
            return position + found
        if len(chunk) <= overlap:
            return None
        position += len(chunk) - overlap
    return None


def parse_local_header(f, offset: int, header: bytes) -> tuple[Entry, int]:
    """The entry whose local header is at `offset`, and where its data starts."""
    (_, _, flags, method, _, _, _, compressed, _, name_length,
     extra_length) = LOCAL_HEADER.unpack(header)
    name = read_at(f, offset + LOCAL_HEADER.size, name_length).decode("utf-8", "replace")
    extra = f.read(extra_length)
    data_start = offset + LOCAL_HEADER.size + name_length + extra_length
    if compressed == 0xFFFFFFFF:
        compressed = zip64_compressed_size(extra)
    if flags & HAS_DESCRIPTOR and compressed == 0:
        # Sizes come after the data: a deflate stream says where it ends by itself.
        compressed = deflate_length(f, data_start) if method == DEFLATED else \
            described_length(f, data_start)
    return Entry(name, offset, method, flags, compressed), data_start


def described_length(f, start: int) -> int | None:
    """The length of data (stored, as torch writes its members) that a signed data
    descriptor after it records: the first `PK\\x07\\x08` whose size matches the distance."""
    f.seek(0, io.SEEK_END)
    size = f.tell()
    candidate = find_signature(f, start, size, DESCRIPTOR_SIGNATURE)
    while candidate is not None:
        record = read_at(f, candidate + 4, 20)
        length = candidate - start
        if len(record) >= 8 and struct.unpack_from("<I", record, 4)[0] == length:
            return length
        if len(record) >= 12 and struct.unpack_from("<Q", record, 4)[0] == length:  # zip64
            return length
        candidate = find_signature(f, candidate + 1, size, DESCRIPTOR_SIGNATURE)
    return None


def zip64_compressed_size(extra: bytes) -> int | None:
    """The compressed size in a local header's zip64 extra field (after the size)."""
    position = 0
    while position + 4 <= len(extra):
        kind, length = struct.unpack_from("<HH", extra, position)
        if kind == ZIP64_EXTRA and length >= 16:
            return struct.unpack_from("<Q", extra, position + 12)[0]
        position += 4 + length
    return None


def deflate_length(f, start: int) -> int | None:
    """How many bytes the deflate stream at `start` takes, or None if it never ends."""
    inflater = zlib.decompressobj(-15)
    f.seek(start)
    used = 0
    try:
        while not inflater.eof:
            chunk = f.read(READ_CHUNK)
            if not chunk:
                return None
            inflater.decompress(chunk)
            used += len(chunk) - len(inflater.unused_data)
    except zlib.error:
        return None
    return used


def descriptor_length(f, offset: int) -> int:
    """A data descriptor: CRC and sizes, with or without its signature (12 or 16 bytes;
    after a zip64 one, 8 more, the walk looks on for the next header by itself)."""
    return 16 if read_at(f, offset, 4) == DESCRIPTOR_SIGNATURE else 12


def data_start(f, entry: Entry) -> int:
    header = read_at(f, entry.offset, LOCAL_HEADER.size)
    if len(header) < LOCAL_HEADER.size or header[:4] != LOCAL_SIGNATURE:
        raise EntryUnreadable(f"no local header at offset {entry.offset}")
    name_length, extra_length = LOCAL_HEADER.unpack(header)[-2:]
    return entry.offset + LOCAL_HEADER.size + name_length + extra_length


class Window(io.RawIOBase):
    """`length` bytes of `f` from `start`, as a file of their own (a stored entry)."""

    def __init__(self, f, start: int, length: int):
        self.f, self.start, self.length, self.position = f, start, length, 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def readinto(self, buffer) -> int:
        n = max(0, min(len(buffer), self.length - self.position))
        data = read_at(self.f, self.start + self.position, n) if n else b""
        buffer[:len(data)] = data
        self.position += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.length}[whence]
        self.position = max(0, base + offset)
        return self.position

    def tell(self) -> int:
        return self.position


def decompressor(method: int):
    if method == DEFLATED:
        return zlib.decompressobj(-15)
    if method == BZIP2:
        return bz2.BZ2Decompressor()
    raise EntryUnreadable(f"compression method {method} is not read by the scan")


def open_entry(f, entry: Entry, limit: int) -> tuple[io.IOBase, int, str | None]:
    """(a file of the entry's bytes, their size, why they may be incomplete or None).
    Stored data is read in place; compressed data is inflated into a temporary file."""
    if entry.compressed is None:
        raise EntryUnreadable("its size is not recorded")
    start = data_start(f, entry)
    raw = io.BufferedReader(Window(f, start, entry.compressed), READ_CHUNK)
    if entry.method == STORED:
        if entry.compressed > limit:
            raise TooLarge()
        return raw, entry.compressed, None
    out = tempfile.SpooledTemporaryFile(SPOOL_IN_MEMORY)
    size, problem = 0, None
    try:
        for data in inflated_steps(decompressor(entry.method), raw):
            size += len(data)
            if size > limit:
                out.close()
                raise TooLarge()
            out.write(data)
    except EntryEndsEarly:
        problem = "its compressed data ends early"
    except (zlib.error, OSError, EOFError, ValueError) as e:
        problem = f"its data cannot be inflated ({e})"
    out.seek(0)
    return out, size, problem


class EntryEndsEarly(Exception):
    """The compressed data ends before its stream says it does."""


def inflated_steps(inflater, raw):
    """The inflated bytes, at most INFLATE_OUTPUT at a time whatever the ratio (a bomb is
    stopped by the caller's limit before it fills memory)."""
    pending = b""
    while not inflater.eof:
        if isinstance(inflater, bz2.BZ2Decompressor):
            pending = raw.read(INFLATE_INPUT) if inflater.needs_input else b""
            if inflater.needs_input and not pending:
                raise EntryEndsEarly()
            yield inflater.decompress(pending, INFLATE_OUTPUT)
        else:
            pending = inflater.unconsumed_tail or raw.read(INFLATE_INPUT)
            if not pending:
                raise EntryEndsEarly()
            yield inflater.decompress(pending, INFLATE_OUTPUT)


def entry_head(f, entry: Entry, n: int = 8) -> bytes:
    """The first `n` bytes of an entry (inflated), to tell what it holds."""
    if entry.compressed is None:
        raise EntryUnreadable("its size is not recorded")
    start = data_start(f, entry)
    raw = read_at(f, start, min(entry.compressed, READ_CHUNK if entry.method else n))
    if entry.method == STORED:
        return raw[:n]
    inflater = decompressor(entry.method)
    try:
        if entry.method == DEFLATED:
            return inflater.decompress(raw, n)
        return inflater.decompress(raw, max_length=n)
    except (zlib.error, OSError, EOFError, ValueError) as e:
        raise EntryUnreadable(f"its data cannot be inflated ({e})") from None
