"""Pack files: append-only containers of chunk records, immutable once closed.

Layout (all integers little-endian; docs/format.md has the full description):

    pack header   16 bytes   magic "CKPTPACK", format u16, flags u16, pack id u32
    record*       56-byte record header + payload
    end record    kind END: marks a pack that was closed cleanly

Each record header carries the record's kind, codec, flags (bit 0: the payload is
encrypted), raw length, payload length, id and an xxh3-64 over the header and the
payload as stored, checked on every read. Scanning the records
of every pack is enough to rebuild the chunk index: the pack carries what is needed.
"""
import os
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import xxhash

from .errors import IntegrityError, PackMissingError
from .private import make_private_dirs, private_open

PACK_MAGIC = b"CKPTPACK"
PACK_FORMAT = 1
PACK_HEADER = struct.Struct("<8sHHI")
RECORD_MAGIC = b"CKRC"
# magic, kind, codec, flags, raw_len, payload_len, id, checksum
RECORD_HEADER = struct.Struct("<4sBBHII32sQ")
CHECKED_HEADER_BYTES = RECORD_HEADER.size - 8  # everything but the checksum itself

KIND_CHUNK = 1
KIND_MANIFEST = 2
KIND_END = 3

# Record header flags.
FLAG_ENCRYPTED = 1  # the payload is AES-256-GCM ciphertext (encryption.py)

MAX_PAYLOAD = 1 << 30  # sanity bound when scanning a damaged pack


def pack_path(packs_dir: str, pack_id: int) -> str:
    """Packs are fanned out 256 to a directory so no directory grows huge."""
    return os.path.join(packs_dir, f"{pack_id >> 8:06x}", f"{pack_id:08x}.pack")


def pack_id_from_name(name: str) -> int | None:
    if not name.endswith(".pack"):
        return None
    try:
        return int(name[:-5], 16)
    except ValueError:
        return None


@dataclass(frozen=True)
class Record:
    kind: int
    codec: int
    raw_len: int
    record_id: bytes
    payload: memoryview  # a view into the record as read
    flags: int = 0


def _checksum(header_without_sum: bytes, payload) -> int:
    h = xxhash.xxh3_64(header_without_sum)
    h.update(payload)
    return h.intdigest()


class PackWriter:
    """Appends records to one new pack file. Not shared between threads or processes."""

    def __init__(self, packs_dir: str, pack_id: int):
        self.pack_id = pack_id
        self.path = pack_path(packs_dir, pack_id)
        make_private_dirs(os.path.dirname(self.path))
        # O_EXCL: two writers can never share a pack, even with a stale id counter.
        self._fd = private_open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        self._file = os.fdopen(self._fd, "wb", buffering=4 << 20)
        self._file.write(PACK_HEADER.pack(PACK_MAGIC, PACK_FORMAT, 0, pack_id))
        self.size = PACK_HEADER.size
        self.records = 0
        self.closed = False

    def append(self, kind: int, codec: int, record_id: bytes, raw_len: int, payload,
               flags: int = 0) -> tuple[int, int]:
        """Append a record; return (offset, total record length)."""
        head = RECORD_HEADER.pack(RECORD_MAGIC, kind, codec, flags, raw_len, len(payload),
                                  record_id, 0)
        head = head[:CHECKED_HEADER_BYTES]
        checksum = _checksum(head, payload)
        offset = self.size
        self._file.write(head)
        self._file.write(struct.pack("<Q", checksum))
        self._file.write(payload)
        length = RECORD_HEADER.size + len(payload)
        self.size += length
        self.records += 1
        return offset, length

    def append_raw(self, record: bytes) -> tuple[int, int]:
        """Append a whole record as read from another pack (header, checksum and payload:
        nothing in a record depends on where it sits); return (offset, length)."""
        offset = self.size
        self._file.write(record)
        self.size += len(record)
        self.records += 1
        return offset, len(record)

    def close(self) -> None:
        """Write the end record and make the pack durable (file and directory entry)."""
        if self.closed:
            return
        self.append(KIND_END, 0, b"\0" * 32, 0, struct.pack("<I", self.records))
        self._file.flush()
        os.fsync(self._fd)
        self._file.close()
        self.closed = True
        dir_fd = os.open(os.path.dirname(self.path), os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def abort(self) -> None:
        """Drop an unfinished pack: nothing refers to it yet."""
        try:
            if not self.closed:
                try:
                    self._file.close()
                except OSError:
                    pass  # e.g. ENOSPC flushing the buffer: the file goes anyway
            self.closed = True
        finally:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


def parse_record(buf: bytes, pack_id: int, offset: int) -> Record:
    """Check and decode one record read from a pack. Raises IntegrityError on any damage."""
    if len(buf) < RECORD_HEADER.size:
        raise IntegrityError(f"pack {pack_id:08x}: record at offset {offset} is truncated",
                             pack_id=pack_id)
    magic, kind, codec, flags, raw_len, payload_len, record_id, checksum = \
        RECORD_HEADER.unpack_from(buf)
    # A view, not a copy: a megabyte copied here holds the GIL the decoders need.
    payload = memoryview(buf)[RECORD_HEADER.size:RECORD_HEADER.size + payload_len]
    if magic != RECORD_MAGIC or len(payload) != payload_len:
        raise IntegrityError(f"pack {pack_id:08x}: record at offset {offset} is damaged",
                             pack_id=pack_id, chunk_id=record_id)
    if _checksum(bytes(buf[:CHECKED_HEADER_BYTES]), payload) != checksum:
        raise IntegrityError(
            f"pack {pack_id:08x}: checksum mismatch in record {record_id.hex()[:16]} "
            f"at offset {offset}", pack_id=pack_id, chunk_id=record_id)
    return Record(kind, codec, raw_len, record_id, payload, flags)


class PackReader:
    """Reads records by (pack id, offset, length), keeping a few pack files open."""

    def __init__(self, packs_dir: str, max_open: int = 64):
        self.packs_dir = packs_dir
        self._fds: OrderedDict[int, int] = OrderedDict()
        self._max_open = max_open
        self._lock = threading.Lock()
        self._retired: list[int] = []  # fds of deleted packs, closed one round later

    def _fd(self, pack_id: int) -> int:
        with self._lock:
            fd = self._fds.get(pack_id)
            if fd is not None:
                self._fds.move_to_end(pack_id)
                return fd
            try:
                fd = os.open(pack_path(self.packs_dir, pack_id), os.O_RDONLY)
            except FileNotFoundError:
                raise PackMissingError(f"pack {pack_id:08x} is missing", pack_id=pack_id) from None
            self._fds[pack_id] = fd
            while len(self._fds) > self._max_open:
                _, old = self._fds.popitem(last=False)
                os.close(old)
            return fd

    def will_need(self, pack_id: int, offset: int, length: int) -> None:
        """Ask the kernel to start reading a range now (a hint: errors are ignored), so
        the `read` that follows finds it in the page cache."""
        try:
            os.posix_fadvise(self._fd(pack_id), offset, length, os.POSIX_FADV_WILLNEED)
        except (OSError, IntegrityError):
            pass

    def read(self, pack_id: int, offset: int, length: int) -> Record:
        buf = os.pread(self._fd(pack_id), length, offset)
        return parse_record(buf, pack_id, offset)

    def read_raw(self, pack_id: int, offset: int, length: int) -> bytes:
        """A whole record's bytes, checked (magic, xxh3) but not decoded: what garbage
        collection copies into a new pack."""
        buf = os.pread(self._fd(pack_id), length, offset)
        parse_record(buf, pack_id, offset)
        return buf

    def forget_deleted(self) -> None:
        """Stop holding packs that were deleted (a garbage collection removed them): an
        open descriptor keeps a deleted file's disk space. A reader may still be using
        one, so they are closed at the next call, not now."""
        with self._lock:
            for fd in self._retired:
                os.close(fd)
            self._retired = []
            for pack_id in list(self._fds):
                if not os.path.exists(pack_path(self.packs_dir, pack_id)):
                    self._retired.append(self._fds.pop(pack_id))

    def close(self) -> None:
        with self._lock:
            for fd in list(self._fds.values()) + self._retired:
                os.close(fd)
            self._fds.clear()
            self._retired = []


@dataclass
class ScannedRecord:
    offset: int
    length: int
    kind: int
    codec: int
    raw_len: int
    record_id: bytes
    flags: int = 0


@dataclass
class PackScan:
    pack_id: int
    records: list           # intact records (END excluded)
    complete: bool          # ended with an END record
    damage: list            # records whose checksum failed (the scan went on past them)
    tail: str | None = None # why the scan stopped before an END record, if it did
    damaged_at: list = field(default_factory=list)  # offsets of the records in `damage`
    scanned_to: int = 0     # end of the last whole record (where a truncated pack stops)


def scan_pack(path: str, pack_id: int, verify: bool = True) -> PackScan:
    """Walk every record of a pack.

    A record whose header is sane but whose checksum fails is reported in `damage` and
    skipped, so the records after it still count; a damaged header or a truncated tail
    ends the walk (`tail` says why). A pack with a `tail` and no reference from the index
    is the leftover of an interrupted import, not damage: the caller decides.
    """
    scan = PackScan(pack_id, [], False, [])
    with open(path, "rb") as f:
        head = f.read(PACK_HEADER.size)
        if len(head) < PACK_HEADER.size:
            scan.tail = "pack header is truncated"
            return scan
        magic, fmt, _flags, stored_id = PACK_HEADER.unpack(head)
        if magic != PACK_MAGIC or stored_id != pack_id:
            scan.tail = "pack header is damaged"
            return scan
        if fmt > PACK_FORMAT:
            scan.tail = f"pack format {fmt} is newer than supported"
            return scan
        offset = PACK_HEADER.size
        while True:
            header = f.read(RECORD_HEADER.size)
            if not header:
                scan.tail = "no end record"  # an unfinished pack (crash while writing)
                return scan
            if len(header) < RECORD_HEADER.size:
                scan.tail = f"truncated record at offset {offset}"
                return scan
            magic, kind, codec, flags, raw_len, payload_len, record_id, _sum = \
                RECORD_HEADER.unpack(header)
            if magic != RECORD_MAGIC or payload_len > MAX_PAYLOAD:
                scan.tail = f"damaged record header at offset {offset}"
                return scan
            payload = f.read(payload_len)
            if len(payload) < payload_len:
                scan.tail = f"truncated record at offset {offset}"
                return scan
            length = RECORD_HEADER.size + payload_len
            intact = True
            if verify:
                try:
                    parse_record(header + payload, pack_id, offset)
                except IntegrityError as e:
                    scan.damage.append(str(e))
                    scan.damaged_at.append(offset)
                    intact = False
            if intact and kind == KIND_END:
                scan.complete = True
                return scan
            if intact:
                scan.records.append(ScannedRecord(offset, length, kind, codec, raw_len, record_id,
                                                  flags))
            offset += length
            scan.scanned_to = offset


def list_pack_ids(packs_dir: str) -> list[int]:
    ids = []
    if not os.path.isdir(packs_dir):
        return ids
    for sub in os.scandir(packs_dir):
        if sub.is_dir():
            for entry in os.scandir(sub.path):
                pid = pack_id_from_name(entry.name)
                if pid is not None:
                    ids.append(pid)
    return sorted(ids)
