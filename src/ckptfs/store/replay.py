"""Replaying the journal into an index: what a sealed version's packs hold, read back
from the packs (events.Records), and replays in batches.

A catch-up after a crash indexes the packs each entry names as it goes (they may hold
records the index never saw); `rebuild-index` indexes every pack first and then replays
without scanning again. A gc's `packs.rewritten` always indexes its new packs (a
rebuilt index may hold a record at its retired place, which the event forgets).

A pack a `version.sealed` names may be gone when an index far behind (a new machine's,
one offline for longer than the gc grace period) replays it: a later gc retired it and
deleted it. Its live records are in the packs that gc wrote: the catch-up looks ahead
in the journal for them, so the version's manifest is found.
"""
from .backend import Backend, LocalBackend
from .errors import IntegrityError
from .events import apply
from .index import Index, Location
from .pack import KIND_CHUNK, KIND_MANIFEST, PackReader, pack_records

REPLAY_BATCH = 1000   # journal entries applied per index transaction


def index_pack(index: Index, txn, backend: Backend, pack_id: int):
    """Put every intact record of a pack into the index; returns its scan (None if the
    pack is gone)."""
    try:
        scan = pack_records(backend, pack_id)
    except FileNotFoundError:
        return None  # a pack the journal names is gone: its versions show as damaged
    for rec in scan.records:
        if rec.kind in (KIND_CHUNK, KIND_MANIFEST):
            index_record(index, txn, rec.kind == KIND_MANIFEST, rec.record_id,
                         Location(pack_id, rec.offset, rec.length, rec.raw_len))
    if not backend.shared and index.get_int(txn, b"next_pack_id", 1) <= pack_id:
        index.put_int(txn, b"next_pack_id", pack_id + 1)
    return scan


def index_record(index: Index, txn, manifest: bool, record_id: bytes, loc: Location) -> None:
    """Index one record where the index lacks it (a chunk known damaged points at it:
    a fresh copy heals it)."""
    if manifest:
        index.add_manifest(txn, record_id, loc)
        return
    index.add_chunk(txn, record_id, loc)
    if index.chunk_damage(txn, record_id) is not None:
        index.replace_chunk(txn, record_id, loc)


class PackRecords:
    """The records of the packs a journal entry names, read from the packs (`scan`:
    index those packs first). `journal`: where to look ahead for the packs a gc copied
    a gone pack's records into."""

    def __init__(self, backend: Backend, reader, scan: bool, journal=None):
        self.backend = backend
        self.reader = reader
        self.scan = scan
        self.journal = journal
        self._successors: dict[int, list[int]] | None = None
        self._successors_upto = -1  # the journal's last seq when they were read
        self._exact: PackReader | None = None  # uncached reads of manifests (shared)

    def index_records(self, index: Index, txn, entry: dict) -> None:
        if self.scan:
            for pack_id in entry["packs"]:
                if index_pack(index, txn, self.backend, pack_id) is None:
                    self._index_successors(index, txn, pack_id, entry["seq"], set())

    def index_packs(self, index: Index, txn, pack_ids: list) -> None:
        for pack_id in pack_ids:
            index_pack(index, txn, self.backend, pack_id)  # one gone: a later gc's entry

    def _index_successors(self, index: Index, txn, pack_id: int, seq: int, seen: set) -> None:
        """Index the packs a gc copied the records of `pack_id` (gone) into, and theirs
        if they are gone too."""
        for successor in self._successors_of(pack_id, seq):
            if successor not in seen:
                seen.add(successor)
                if index_pack(index, txn, self.backend, successor) is None:
                    self._index_successors(index, txn, successor, seq, seen)

    def _successors_of(self, pack_id: int, seq: int) -> list[int]:
        if self.journal is None:
            return []
        if self._successors is None or (pack_id not in self._successors and
                                        self.journal.last_seq() > self._successors_upto):
            self._successors, self._successors_upto = {}, self.journal.last_seq()
            for entry in self.journal.entries(after_seq=seq, verify_chain=False):
                if entry["type"] == "packs.rewritten":
                    for retired in entry["retired"]:
                        self._successors[retired] = list(entry["packs"])
        return self._successors.get(pack_id, [])

    def manifest(self, index: Index, txn, entry: dict) -> dict:
        manifest_id = bytes.fromhex(entry["manifest"])
        loc = index.get_manifest(txn, manifest_id)
        if loc is None:
            raise IntegrityError(f"manifest {manifest_id.hex()[:16]} is not in any pack")
        record = self.record_at(loc.pack_id, loc.offset, loc.length)
        return self.reader.decode_manifest(manifest_id, loc, record)

    def record_at(self, pack_id: int, offset: int, length: int):
        """The record at a place (checked, not decoded). On an object store by one exact
        ranged GET: through the chunk cache each version's manifest would cost a whole
        cache block (4 MiB) when a new cache builds its index. A directory has no such
        cache (and the reader's open files are what it would reuse)."""
        if isinstance(self.backend, LocalBackend):
            return self.reader.packs.read(pack_id, offset, length)
        if self._exact is None:
            self._exact = PackReader(self.backend, cached=False)
        return self._exact.read(pack_id, offset, length)


def replay(index: Index, entries, records: PackRecords) -> int:
    """Apply journal entries in transactions of REPLAY_BATCH, each writing the catalog
    columns once; returns how many versions were sealed."""
    sealed, batch = 0, []

    def apply_batch(txn):
        with index.batched_columns(txn):
            for entry in batch:
                apply(index, txn, entry, records)
    for entry in entries:
        batch.append(entry)
        sealed += entry["type"] == "version.sealed"
        if len(batch) == REPLAY_BATCH:
            index.commit(apply_batch)
            batch = []
    if batch:
        index.commit(apply_batch)
    return sealed
