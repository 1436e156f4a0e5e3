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
import secrets
import struct
from dataclasses import dataclass, field

import xxhash

from .backend import Backend, ObjectExistsError, ObjectInfo, ObjectMissingError
from .errors import IntegrityError, PackMissingError

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


PACKS_PREFIX = "packs/"
SCAN_WINDOW = 4 << 20  # bytes a scan asks the backend for at a time


def pack_name(pack_id: int) -> str:
    """The backend object of a pack (locally `STORE/packs/…`). Packs are fanned out 256
    to a directory so no directory grows huge."""
    return f"{PACKS_PREFIX}{pack_id >> 8:06x}/{pack_id:08x}.pack"


def pack_index_name(pack_id: int) -> str:
    """The object listing a pack's records, beside it (shared backends: pack indexes)."""
    return f"{PACKS_PREFIX}{pack_id >> 8:06x}/{pack_id:08x}.idx"


def random_pack_id() -> int:
    """A pack id for a shared backend, where many machines write packs at once and no
    counter spans them: random, so two writers pick the same id about once in 2^32
    packs; then the second one's upload is refused (put-if-absent), never overwrites."""
    while True:
        pack_id = secrets.randbits(32)
        if pack_id:
            return pack_id


def pack_id_from_name(name: str) -> int | None:
    """The id of a pack's object name (or its last part), None for anything else."""
    name = name.rsplit("/", 1)[-1]
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
    """Appends records to one new pack. Not shared between threads or processes.

    The pack is streamed to a backend writer: locally a file created at once (O_EXCL:
    two writers can never share a pack, even with a stale id counter) and made durable
    at `close`; on an object store the finished pack is uploaded whole, if absent."""

    def __init__(self, backend: Backend, pack_id: int):
        self.pack_id = pack_id
        self._backend = backend
        self._out = backend.open_writer(pack_name(pack_id))
        self._out.write(PACK_HEADER.pack(PACK_MAGIC, PACK_FORMAT, 0, pack_id))
        self.records = 0
        self.closed = False
        # On a shared backend the pack gets an index object, so that another machine's
        # index learns its records without downloading the pack.
        self._listed: list[ScannedRecord] | None = [] if backend.shared else None

    @property
    def size(self) -> int:
        return self._out.size

    def append(self, kind: int, codec: int, record_id: bytes, raw_len: int, payload,
               flags: int = 0) -> tuple[int, int]:
        """Append a record; return (offset, total record length)."""
        head = RECORD_HEADER.pack(RECORD_MAGIC, kind, codec, flags, raw_len, len(payload),
                                  record_id, 0)
        head = head[:CHECKED_HEADER_BYTES]
        checksum = _checksum(head, payload)
        offset = self.size
        self._out.write(head)
        self._out.write(struct.pack("<Q", checksum))
        self._out.write(payload)
        self.records += 1
        self._list(ScannedRecord(offset, RECORD_HEADER.size + len(payload), kind, codec,
                                 raw_len, record_id, flags))
        return offset, RECORD_HEADER.size + len(payload)

    def _list(self, record: "ScannedRecord") -> None:
        if self._listed is not None and record.kind != KIND_END:
            self._listed.append(record)

    def append_raw(self, record: bytes) -> tuple[int, int]:
        """Append a whole record as read from another pack (header, checksum and payload:
        nothing in a record depends on where it sits); return (offset, length)."""
        offset = self.size
        self._out.write(record)
        self.records += 1
        _magic, kind, codec, flags, raw_len, _len, record_id, _sum = \
            RECORD_HEADER.unpack_from(record)
        self._list(ScannedRecord(offset, len(record), kind, codec, raw_len, record_id, flags))
        return offset, len(record)

    def close(self) -> None:
        """Write the end record and make the pack durable (and, on an object store,
        visible)."""
        if self.closed:
            return
        self.append(KIND_END, 0, b"\0" * 32, 0, struct.pack("<I", self.records))
        self._out.commit()
        self.closed = True
        if self._listed is not None:
            # After the pack (data before references); a writer killed in between
            # leaves a pack without index object: readers then scan the pack.
            try:
                self._backend.put_if_absent(pack_index_name(self.pack_id),
                                            encode_pack_index(self.pack_id, self._listed))
            except ObjectExistsError:
                pass  # written by an earlier try; the pack's records are the same

    def abort(self) -> None:
        """Drop an unfinished pack: nothing refers to it yet."""
        self.closed = True
        self._out.abort()


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
    """Reads records by (pack id, offset, length) through one backend reader (locally a
    few pack files kept open)."""

    def __init__(self, backend: Backend, cached: bool = True):
        self._reader = backend.open_reader() if cached else backend.open_reader(cached=False)

    def _read(self, pack_id: int, offset: int, length: int) -> bytes:
        try:
            return self._reader.read(pack_name(pack_id), offset, length)
        except ObjectMissingError:
            raise PackMissingError(f"pack {pack_id:08x} is missing", pack_id=pack_id) from None

    def will_need(self, pack_id: int, offset: int, length: int) -> None:
        """Ask the backend to start reading a range now (a hint: errors are ignored), so
        the `read` that follows finds it ready (locally: in the page cache)."""
        try:
            self._reader.will_need(pack_name(pack_id), offset, length)
        except OSError:
            pass

    def read(self, pack_id: int, offset: int, length: int) -> Record:
        return self._read_checked(pack_id, offset, length)[1]

    def read_raw(self, pack_id: int, offset: int, length: int) -> bytes:
        """A whole record's bytes, checked (magic, xxh3) but not decoded: what garbage
        collection copies into a new pack."""
        return self._read_checked(pack_id, offset, length)[0]

    def _read_checked(self, pack_id: int, offset: int, length: int) -> tuple[bytes, Record]:
        buf = self._read(pack_id, offset, length)
        try:
            return buf, parse_record(buf, pack_id, offset)
        except IntegrityError:
            # A reader's local copy (an object store's chunk cache) may be what is damaged:
            # without it, the storage's own bytes are read and checked once more.
            if not self._reader.drop(pack_name(pack_id), offset, length):
                raise
        buf = self._read(pack_id, offset, length)
        return buf, parse_record(buf, pack_id, offset)

    def forget_deleted(self) -> None:
        """Stop holding packs that were deleted (a garbage collection removed them): an
        open descriptor keeps a deleted file's disk space."""
        self._reader.forget_deleted()

    def close(self) -> None:
        self._reader.close()


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


class _PackStream:
    """Sequential reads of one pack through a backend reader, a window at a time (one
    reader: locally the file stays open for the whole scan, even if it is deleted).
    Reads are views into the window, not copies."""

    def __init__(self, backend: Backend, pack_id: int):
        self._name = pack_name(pack_id)
        self._reader = backend.open_reader(cached=False)  # what the store holds
        self._window, self._start = b"", 0  # the bytes read last, and their offset
        self._pos = 0                        # the offset of the next byte handed out

    def read(self, n: int) -> memoryview:
        if self._pos + n > self._start + len(self._window):
            # A piece that runs past the window starts the next one.
            self._window = self._reader.read(self._name, self._pos, max(n, SCAN_WINDOW))
            self._start = self._pos
        at = self._pos - self._start
        data = memoryview(self._window)[at:at + n]
        self._pos += len(data)
        return data

    def close(self) -> None:
        self._reader.close()


def scan_pack(backend: Backend, pack_id: int, verify: bool = True) -> PackScan:
    """Walk every record of a pack.

    A record whose header is sane but whose checksum fails is reported in `damage` and
    skipped, so the records after it still count; a damaged header or a truncated tail
    ends the walk (`tail` says why). A pack with a `tail` and no reference from the index
    is the leftover of an interrupted import, not damage: the caller decides. Raises
    ObjectMissingError (a FileNotFoundError) for a pack that is not there.
    """
    f = _PackStream(backend, pack_id)
    try:
        return _scan_records(f, pack_id, verify)
    finally:
        f.close()


def _scan_records(f: _PackStream, pack_id: int, verify: bool) -> PackScan:
    scan = PackScan(pack_id, [], False, [])
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
                parse_record(b"".join((header, payload)), pack_id, offset)
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


# -- pack index objects (shared backends) ------------------------------------------------------
PACK_INDEX_MAGIC = b"CKPTPIDX"
PACK_INDEX_HEAD = struct.Struct("<8sHHII")   # magic, format, flags, pack id, record count
PACK_INDEX_ENTRY = struct.Struct("<QIBBHI32s")  # offset, length, kind, codec, flags, raw_len, id


def encode_pack_index(pack_id: int, records: list[ScannedRecord]) -> bytes:
    """A pack's records as one small object: header, one entry per record, xxh3-64 of
    all that (docs/format.md, "Object storage layout")."""
    parts = [PACK_INDEX_HEAD.pack(PACK_INDEX_MAGIC, 1, 0, pack_id, len(records))]
    parts.extend(PACK_INDEX_ENTRY.pack(r.offset, r.length, r.kind, r.codec, r.flags, r.raw_len,
                                       r.record_id) for r in records)
    body = b"".join(parts)
    return body + struct.pack("<Q", xxhash.xxh3_64_intdigest(body))


def decode_pack_index(data: bytes, pack_id: int) -> PackScan | None:
    """The scan a pack index object stands for; None if it is damaged or not this
    pack's (the caller scans the pack itself then)."""
    if len(data) < PACK_INDEX_HEAD.size + 8:
        return None
    body, (checksum,) = data[:-8], struct.unpack("<Q", data[-8:])
    if xxhash.xxh3_64_intdigest(body) != checksum:
        return None
    magic, fmt, _flags, stored_id, count = PACK_INDEX_HEAD.unpack_from(body)
    if magic != PACK_INDEX_MAGIC or fmt != 1 or stored_id != pack_id or \
            len(body) != PACK_INDEX_HEAD.size + count * PACK_INDEX_ENTRY.size:
        return None
    records = []
    for at in range(PACK_INDEX_HEAD.size, len(body), PACK_INDEX_ENTRY.size):
        offset, length, kind, codec, flags, raw_len, record_id = \
            PACK_INDEX_ENTRY.unpack_from(body, at)
        records.append(ScannedRecord(offset, length, kind, codec, raw_len, record_id, flags))
    return PackScan(pack_id, records, True, [])


def pack_records(backend: Backend, pack_id: int) -> PackScan:
    """What a pack holds, for indexing it: from its index object on a shared backend
    (one small GET instead of the whole pack), else by scanning it. Raises
    ObjectMissingError for a pack that is not there."""
    if backend.shared:
        try:
            listed = decode_pack_index(backend.get(pack_index_name(pack_id)), pack_id)
        except ObjectMissingError:
            listed = None
        if listed is not None:
            return listed
    return scan_pack(backend, pack_id)


def delete_pack(backend: Backend, pack_id: int) -> bool:
    """Delete a pack (and its index object, if it has one); whether the pack was there."""
    removed = backend.delete(pack_name(pack_id))
    if backend.shared:
        backend.delete(pack_index_name(pack_id))
    return removed


def pack_objects(backend: Backend) -> dict[int, ObjectInfo]:
    """{pack id: its object's name, size and time written} of every pack the backend
    holds."""
    found = {}
    for info in backend.list(PACKS_PREFIX):
        pack_id = pack_id_from_name(info.name)
        if pack_id is not None and pack_name(pack_id) == info.name:  # not a stray file
            found[pack_id] = info
    return found


def pack_sizes(backend: Backend) -> dict[int, int]:
    """{pack id: size} of every pack the backend holds."""
    return {pack_id: info.size for pack_id, info in pack_objects(backend).items()}


def list_pack_ids(backend: Backend) -> list[int]:
    return sorted(pack_sizes(backend))
