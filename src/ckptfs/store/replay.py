"""Replaying the journal into an index: what a sealed version's packs hold, read back
from the packs (events.Records), and replays in batches.

A catch-up after a crash indexes the packs each entry names as it goes (they may hold
records the index never saw); `rebuild-index` indexes every pack first and then replays
without scanning again.
"""
from .backend import Backend
from .errors import IntegrityError
from .events import apply
from .index import Index, Location
from .pack import KIND_CHUNK, KIND_MANIFEST, pack_records

REPLAY_BATCH = 1000   # journal entries applied per index transaction


def index_pack(index: Index, txn, backend: Backend, pack_id: int):
    """Put every intact record of a pack into the index; returns its scan (None if the
    pack is gone)."""
    try:
        scan = pack_records(backend, pack_id)
    except FileNotFoundError:
        return None  # a pack the journal names is gone: its versions show as damaged
    for rec in scan.records:
        loc = Location(pack_id, rec.offset, rec.length, rec.raw_len)
        if rec.kind == KIND_CHUNK:
            index.add_chunk(txn, rec.record_id, loc)
            if index.chunk_damage(txn, rec.record_id) is not None:
                index.replace_chunk(txn, rec.record_id, loc)  # a fresh copy heals it
        elif rec.kind == KIND_MANIFEST:
            index.add_manifest(txn, rec.record_id, loc)
    if not backend.shared and index.get_int(txn, b"next_pack_id", 1) <= pack_id:
        index.put_int(txn, b"next_pack_id", pack_id + 1)
    return scan


class PackRecords:
    """The records of the packs a journal entry names, read from the packs (`scan`:
    index those packs first)."""

    def __init__(self, backend: Backend, reader, scan: bool):
        self.backend = backend
        self.reader = reader
        self.scan = scan

    def index_records(self, index: Index, txn, entry: dict) -> None:
        if self.scan:
            for pack_id in entry["packs"]:
                index_pack(index, txn, self.backend, pack_id)

    def manifest(self, index: Index, txn, entry: dict) -> dict:
        manifest_id = bytes.fromhex(entry["manifest"])
        loc = index.get_manifest(txn, manifest_id)
        if loc is None:
            raise IntegrityError(f"manifest {manifest_id.hex()[:16]} is not in any pack")
        return self.reader.manifest_at(manifest_id, loc)


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
