"""`Store.repair` (docs/recovery.md): mending the damage the store knows of.

Damage is found by a read (a checksum or decode error), by `verify`, or by
`rebuild-index` (records it had to skip), and recorded in the index (damage.py).

`repair` re-stores damaged chunks from any source that has their bytes (another intact
record of the same id in some pack, or files given with `--from`, chunked the way the
store chunks them: the same bytes give the same keyed ids), and drops the records that
no source can replace, saying which files stay damaged: a later import of the original
files heals them. Like `borg check --repair`, it never deletes a version: the files of
a damaged version that are intact stay readable.
"""
import os
import stat
from dataclasses import dataclass, field

from .chunking import Chunker, FileReader
from .codec import Encoder, decode, delta_base_id, is_delta
from .damage import refresh_version_damage
from .errors import IntegrityError, StoreError
from .events import store_repaired
from .index import Index, version_key
from .ingest import take_ingest_lock
from .backend import Backend
from .pack import KIND_CHUNK, list_pack_ids, scan_pack


def name_of(damage: dict) -> str:
    return f"{damage['project']}/{damage['run']}/{damage['version']}"


@dataclass
class RepairReport:
    dry_run: bool
    restored: dict = field(default_factory=dict)  # chunk id hex -> where its bytes came from
    healed_with_base: list = field(default_factory=list)  # deltas whose base was restored
    lost: dict = field(default_factory=dict)      # chunk id hex -> problem (no source has it)
    damaged_files: list = field(default_factory=list)  # (version, path, problem) still damaged
    warnings: list = field(default_factory=list)  # unreadable source files, ...
    pack_id: int | None = None                    # the pack the restored chunks went into

    @property
    def ok(self) -> bool:
        return not self.damaged_files and not self.lost


class Repair:
    """Repair of the store at `store_path`. Given the settings (chunking, compression),
    the index, the committer (`store.repaired`), the backend (the pack objects, read
    through `packs`: intact copies of damaged chunks), the reader (records, decryption,
    the chunk id function), the verifier (what is damaged) and `new_sink` (packsink.py:
    where the recovered chunks are written)."""

    def __init__(self, store_path: str, config, index, committer, backend: Backend, packs,
                 reader, verifier, new_sink):
        self.path = store_path
        self.config = config
        self.index = index
        self.committer = committer
        self.backend = backend
        self.packs = packs
        self.reader = reader
        self.verifier = verifier
        self.new_sink = new_sink

    # -- repair ---------------------------------------------------------------------------
    def repair(self, sources=(), dry_run: bool = False, progress=None) -> RepairReport:
        """Verify, then re-store every damaged chunk some source has; drop the records of
        those none has (the files that keep them stay recorded as damaged)."""
        for source in sources:
            if not os.path.isdir(source):
                raise StoreError(f"{source} is not a directory: --from takes a directory of "
                                 "original files (or of an export)")
        verified = self.verifier.verify(progress, record=not dry_run)
        report = RepairReport(dry_run)
        needed = self._chunks_to_recover(verified)
        found: dict[bytes, tuple[bytes, str]] = {}
        if needed:
            self._recover_from_packs(needed, found)
            for source in sources:
                self._recover_from_directory(source, needed, found, report)
        bases = self._deltas_healed_by_bases(needed, found)
        report.restored = {c.hex(): where for c, (_data, where) in found.items()}
        report.healed_with_base = [c.hex() for c in bases]
        report.lost = {c.hex(): needed[c] for c in needed if c not in found and c not in bases}
        if not dry_run and (found or report.lost):
            self._apply_repair(found, bases, {bytes.fromhex(h): p for h, p in report.lost.items()},
                               report)
        report.damaged_files = self._still_damaged(verified, found, bases)
        return report

    def _chunks_to_recover(self, verified) -> dict[bytes, str]:
        """Chunk id -> problem: the damaged chunks, and the chunks of damaged files that
        the index lacks (lost with a pack) or knows damaged."""
        needed = {bytes.fromhex(h): message for h, message in verified.damaged_chunks.items()}
        with self.index.read() as txn:
            for name, path, _problem in verified.damaged_files:
                parts = name.split("/")
                if len(parts) != 3 or path.startswith("("):
                    continue
                entry = self.index.get_entry(txn, version_key(*parts), path)
                for chunk_hex, _length in (entry or {}).get("chunks") or []:
                    chunk_id = bytes.fromhex(chunk_hex)
                    if chunk_id not in needed and not self.index.sound_chunk(txn, chunk_id):
                        damage = self.index.chunk_damage(txn, chunk_id)
                        needed[chunk_id] = damage["problem"] if damage else \
                            "not in any pack (lost with a damaged pack)"
        return needed

    def _recover_from_packs(self, needed: dict, found: dict) -> None:
        """Another intact record of a needed chunk (an interrupted import's pack, a copy a
        garbage collection made) is as good as the original."""
        with self.index.read() as txn:
            current = {c: self.index.get_chunk(txn, c) for c in needed}
        for pack_id in list_pack_ids(self.backend):
            try:
                scan = scan_pack(self.backend, pack_id)
            except OSError:
                continue
            for rec in scan.records:
                chunk_id = rec.record_id
                if rec.kind != KIND_CHUNK or chunk_id not in needed or chunk_id in found:
                    continue
                loc = current.get(chunk_id)
                if loc is not None and (loc.pack_id, loc.offset) == (pack_id, rec.offset):
                    continue  # the damaged record itself
                data = self._decoded_copy(chunk_id, pack_id, rec)
                if data is not None:
                    found[chunk_id] = (data, f"pack {pack_id:08x}")

    def _decoded_copy(self, chunk_id: bytes, pack_id: int, rec) -> bytes | None:
        try:
            record = self.reader.decrypted(self.packs.read(pack_id, rec.offset, rec.length),
                                           pack_id)
            if is_delta(record.codec):
                return None  # its base may be the damaged chunk: only plain copies are taken
            data = bytes(decode(record.codec, record.payload, record.raw_len))
        except (OSError, StoreError, ValueError):
            return None
        return data if self.reader.chunk_id(data) == chunk_id else None

    def _recover_from_directory(self, source: str, needed: dict, found: dict, report) -> None:
        chunker = Chunker(self.config.chunking.min_size, self.config.chunking.avg_size,
                          self.config.chunking.max_size)
        for root, _dirs, files in os.walk(source):
            for name in sorted(files):
                if len(found) == len(needed):
                    return
                path = os.path.join(root, name)
                if os.path.islink(path):
                    continue  # its target is a file of its own (or outside the source)
                try:
                    for chunk_id, data in self._file_chunks(path, chunker):
                        if chunk_id in needed and chunk_id not in found:
                            found[chunk_id] = (data, path)
                except OSError as e:
                    report.warnings.append(f"{path}: cannot read: {e.strerror or e}")

    def _file_chunks(self, path: str, chunker: Chunker):
        """(chunk id, bytes) of a file cut the way an ingest cuts it (same settings)."""
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return
            reader = FileReader(fd, path, st.st_size, OSError)
            tensor_block = self.config.chunking.tensor_block
            for _segment, _offset, data in reader.chunks(chunker, reader.tensor_layout(),
                                                         tensor_block):
                yield self.reader.chunk_id(data), data
        finally:
            os.close(fd)

    def _deltas_healed_by_bases(self, needed: dict, found: dict) -> set[bytes]:
        """Needed chunks whose own record is intact: XOR-deltas that were damaged only
        through their base. Restoring the base heals them."""
        healed = set()
        for chunk_id in needed:
            if chunk_id in found:
                continue
            try:
                record = self.reader.read_record(chunk_id)
            except IntegrityError:
                continue
            base = delta_base_id(record.codec, record.payload)
            if base is not None and base in found:
                healed.add(chunk_id)
        return healed

    def _apply_repair(self, found: dict, bases: set, lost: dict, report: RepairReport) -> None:
        """Write the recovered chunks to a new pack; in one index transaction, under the
        journal lock and journaled as `store.repaired`: point them at their new copies,
        unmark the deltas whose base that heals, drop the records no source could
        replace (marked lost)."""
        lock_fd = take_ingest_lock(self.path)  # a gc must not take our new pack for garbage
        sink = self.new_sink(single_pack=True)
        try:
            locations = {}
            if found:
                encoder = Encoder(self.config.compression.level,
                                  self.config.compression.min_saving)
                for chunk_id, (data, _where) in found.items():
                    codec_id, payload = encoder.encode(data, 0)
                    locations[chunk_id] = sink.append(KIND_CHUNK, codec_id, chunk_id, len(data),
                                                      payload)
                sink.close()
                report.pack_id = sink.pack_ids[0]
            self.committer.attempt(lambda: self.committer.journal_and_index(
                store_repaired(sink.pack_ids, len(found), len(lost)), None,
                RepairedRecords(locations, bases, lost)))
        except BaseException:
            sink.abort()
            raise
        finally:
            os.close(lock_fd)

    def _still_damaged(self, verified, found: dict, bases: set) -> list:
        """The damaged files of `verified` that the recovered chunks do not make whole."""
        fixed = set(found) | bases
        still = []
        with self.index.read() as txn:
            for name, path, problem in verified.damaged_files:
                parts = name.split("/")
                if len(parts) != 3 or path.startswith("("):
                    still.append((name, path, problem))
                    continue
                entry = self.index.get_entry(txn, version_key(*parts), path) or {}
                chunks = [bytes.fromhex(c) for c, _ in entry.get("chunks") or []]
                bad = [c for c in chunks if c not in fixed and
                       (not self.index.get_chunk(txn, c) or c.hex() in verified.damaged_chunks
                        or self.index.chunk_damage(txn, c))]
                if bad or not chunks:
                    still.append((name, path, problem))
        return still


class RepairedRecords:
    """What a repair changes in the index (events.Records of its `store.repaired`): the
    recovered chunks point at their new copies, the deltas whose base that heals are
    unmarked, the chunks no source had are dropped (marked lost)."""

    def __init__(self, locations: dict, bases: set, lost: dict):
        self.locations, self.bases, self.lost = locations, bases, lost

    def index_records(self, index: Index, txn, entry: dict) -> None:
        for chunk_id, loc in self.locations.items():
            index.replace_chunk(txn, chunk_id, loc)
        for chunk_id in self.bases:
            index.clear_chunk_damage(txn, chunk_id)
        for chunk_id, problem in self.lost.items():
            old = index.get_chunk(txn, chunk_id)
            if old is not None:
                index.remove_chunk(txn, chunk_id, old)
            index.mark_chunk_damaged(txn, chunk_id, problem, lost=True)
        refresh_version_damage(index, txn)
