"""What the store knows about its own damage, and `Store.repair` (docs/recovery.md).

Damage is found by a read (a checksum or decode error), by `verify`, or by
`rebuild-index` (records it had to skip). It is recorded in the index:

* `damaged_chunks`: a chunk whose record is bad. An ingest never deduplicates against
  it: it stores a fresh copy, which the index then points at (the chunk is healed, and
  so is every version that uses it).
* `damaged_versions`: which files of a version are damaged, or that its whole file list
  (manifest) was lost. `ls`, `get` and `verify` say so.

`repair` re-stores damaged chunks from any source that has their bytes (another intact
record of the same id in some pack, or files given with `--from`, chunked the way the
store chunks them: the same bytes give the same keyed ids), and drops the records that
no source can replace, saying which files stay damaged: a later import of the original
files heals them. Like `borg check --repair`, it never deletes a version: the files of
a damaged version that are intact stay readable.
"""
import logging
import os
import stat
from dataclasses import dataclass, field

import blake3

from . import codec as codecs
from .chunking import Chunker, FileReader
from .errors import IntegrityError, StoreError
from .index import Index, Location, version_key
from .ingest import take_ingest_lock
from .pack import FLAG_ENCRYPTED, KIND_CHUNK, PackWriter, list_pack_ids, scan_pack

KEY_CHECK_CONTEXT = "ckptfs 1 chunk id key check"
LOST_FILE_LIST = "its file list (manifest) was lost"
log = logging.getLogger("ckptfs.store")


def chunk_key_fingerprint(key: bytes) -> str:
    """Tells the right chunk id key from a wrong one without revealing it."""
    return blake3.blake3(key, derive_key_context=KEY_CHECK_CONTEXT).hexdigest()


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


class RepairMixin:
    """For `Store`: recording damage, and `repair`."""

    # -- recording ------------------------------------------------------------------------
    def note_damaged_chunk(self, chunk_id: bytes, problem: str) -> None:
        """A read found a chunk's record bad: remember it (best effort: the reader's own
        error is what matters, so a failure to record is not raised)."""
        def mark(txn):
            if self.index.get_chunk(txn, chunk_id) is not None and \
                    self.index.chunk_damage(txn, chunk_id) is None:
                self.index.mark_chunk_damaged(txn, chunk_id, problem)
        try:
            with self.index.read() as txn:  # most errors repeat a known one: no write
                if self.index.get_chunk(txn, chunk_id) is None or \
                        self.index.chunk_damage(txn, chunk_id) is not None:
                    return
            self.index.commit(mark)
        except Exception as e:  # noqa: BLE001 - a full disk must not hide the integrity error
            log.warning("could not record chunk %s as damaged: %s", chunk_id.hex()[:16], e)

    @staticmethod
    def record_lost_version(index: Index, txn, entry: dict, problem: str) -> None:
        vkey = version_key(entry["project"], entry["run"], entry["version"])
        index.put_version_damage(txn, vkey, {
            "project": entry["project"], "run": entry["run"], "version": entry["version"],
            "seq": entry["seq"], "files": {}, "manifest": f"{LOST_FILE_LIST}: {problem}"})

    @staticmethod
    def _file_problem(index: Index, txn, entry: dict) -> str | None:
        bad = [c for c, _ in entry["chunks"] if not index.sound_chunk(txn, bytes.fromhex(c))]
        if not bad:
            return None
        return f"{len(bad)} of its {len(entry['chunks'])} chunk(s) are damaged or lost"

    def record_missing_chunks(self, index: Index, txn) -> None:
        """Every file with a chunk the index lacks (or knows damaged) is recorded damaged
        (after a replay that had to skip damaged records)."""
        found: dict[bytes, dict] = {}
        for vkey, entry in index.iter_file_entries(txn):
            problem = self._file_problem(index, txn, entry)
            if problem is not None:
                found.setdefault(vkey, {})[entry["path"]] = problem
        for vkey, files in found.items():
            record = index.get_version(txn, *vkey.decode("utf-8", "surrogateescape").split("/"))
            damage = index.version_damage(txn, vkey) or {
                "project": record["project"], "run": record["run"], "version": record["version"],
                "seq": record["seq"], "files": {}, "manifest": None}
            damage["files"].update(files)
            index.put_version_damage(txn, vkey, damage)

    def refresh_version_damage(self, index: Index, txn) -> None:
        """Forget the damage of files whose chunks are all sound again (healed)."""
        for damage in list(index.iter_version_damage(txn)):
            if damage.get("manifest"):
                continue
            vkey = version_key(damage["project"], damage["run"], damage["version"])
            still = {}
            for path, problem in damage["files"].items():
                entry = index.get_entry(txn, vkey, path)
                if entry is not None and entry.get("chunks") is not None and \
                        self._file_problem(index, txn, entry) is not None:
                    still[path] = problem
            damage["files"] = still
            index.put_version_damage(txn, vkey, damage if still else None)

    def record_verify_findings(self, report, checked_chunk_ids: list[bytes]) -> None:
        """Make the index agree with a complete verify: damaged chunks marked, healed ones
        unmarked, the damaged files of each version recorded."""
        damaged = {bytes.fromhex(h): message for h, message in report.damaged_chunks.items()}
        checked = set(checked_chunk_ids)

        def apply(txn):
            for chunk_id, message in damaged.items():
                if self.index.get_chunk(txn, chunk_id) is not None:
                    self.index.mark_chunk_damaged(txn, chunk_id, message)
            for chunk_id, mark in list(self.index.iter_chunk_damage(txn)):
                if chunk_id in checked and chunk_id not in damaged and not mark.get("lost"):
                    self.index.clear_chunk_damage(txn, chunk_id)
            self._record_damaged_files(txn, report)
        self.index.commit(apply)

    def _record_damaged_files(self, txn, report) -> None:
        lost_lists = {}
        for damage in list(self.index.iter_version_damage(txn)):
            vkey = version_key(damage["project"], damage["run"], damage["version"])
            if damage.get("manifest"):
                lost_lists[vkey] = damage
            else:
                self.index.put_version_damage(txn, vkey, None)
        found: dict[bytes, dict] = {}
        for name, path, problem in report.damaged_files:
            parts = name.split("/")
            if len(parts) != 3 or path.startswith("("):
                continue  # a deleted version's or a lost file list: not a live version's file
            vkey = version_key(*parts)
            if vkey in lost_lists:
                continue
            record = self.index.get_version(txn, *parts)
            damage = found.setdefault(vkey, {
                "project": parts[0], "run": parts[1], "version": parts[2],
                "seq": record["seq"] if record else None, "files": {}, "manifest": None})
            damage["files"][path] = problem
        for vkey, damage in found.items():
            self.index.put_version_damage(txn, vkey, damage)

    # -- asking ---------------------------------------------------------------------------
    def version_damage(self, project: str | None = None, run: str | None = None) -> list[dict]:
        """The recorded damage of the versions of a run (or a project, or all)."""
        prefix = b"" if project is None else version_key(project, run, "") if run is not None \
            else version_key(project, "", "")[:-1]
        with self.index.read() as txn:
            return list(self.index.iter_version_damage(txn, prefix))

    def raise_if_lost(self, project: str, run: str, version: str) -> None:
        """A version whose file list was lost cannot be read: say so, not "no version"."""
        with self.index.read() as txn:
            damage = self.index.version_damage(txn, version_key(project, run, version))
        if damage is not None and damage.get("manifest"):
            raise IntegrityError(f"version {project}/{run}/{version} is damaged: "
                                 f"{damage['manifest']}; it cannot be read")

    # -- repair ---------------------------------------------------------------------------
    def repair(self, sources=(), dry_run: bool = False, progress=None) -> RepairReport:
        """Verify, then re-store every damaged chunk some source has; drop the records of
        those none has (the files that keep them stay recorded as damaged)."""
        for source in sources:
            if not os.path.isdir(source):
                raise StoreError(f"{source} is not a directory: --from takes a directory of "
                                 "original files (or of an export)")
        verified = self.verify(progress, record=not dry_run)
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
            record = self._decrypted(self.packs.read(pack_id, rec.offset, rec.length), pack_id)
            if record.codec == codecs.XOR_DELTA:
                return None  # its base may be the damaged chunk: only plain copies are taken
            data = bytes(codecs.decode(record.codec, record.payload, record.raw_len))
        except (OSError, StoreError, ValueError):
            return None
        return data if self.chunk_id(data) == chunk_id else None

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
                yield self.chunk_id(data), data
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
                record = self._read_record(chunk_id)
            except IntegrityError:
                continue
            base = codecs.delta_base_id(record.codec, record.payload)
            if base is not None and base in found:
                healed.add(chunk_id)
        return healed

    def _apply_repair(self, found: dict, bases: set, lost: dict, report: RepairReport) -> None:
        """Write the recovered chunks to a new pack; in one index transaction, under the
        journal lock and journaled as `store.repaired`: point them at their new copies,
        unmark the deltas whose base that heals, drop the records no source could
        replace (marked lost)."""
        lock_fd = take_ingest_lock(self.path)  # a gc must not take our new pack for garbage
        writer = None
        try:
            locations = {}
            if found:
                writer = PackWriter(self.backend, self.index.allocate_pack_id())
                encoder = codecs.Encoder(self.config.compression.level,
                                         self.config.compression.min_saving)
                for chunk_id, (data, _where) in found.items():
                    locations[chunk_id] = self._write_repair_record(writer, encoder, chunk_id, data)
                writer.close()
                report.pack_id = writer.pack_id

            def apply(txn, _entry):
                for chunk_id, loc in locations.items():
                    self.index.replace_chunk(txn, chunk_id, loc)
                for chunk_id in bases:
                    self.index.clear_chunk_damage(txn, chunk_id)
                for chunk_id, problem in lost.items():
                    old = self.index.get_chunk(txn, chunk_id)
                    if old is not None:
                        self.index.remove_chunk(txn, chunk_id, old)
                    self.index.mark_chunk_damaged(txn, chunk_id, problem, lost=True)
                self.refresh_version_damage(self.index, txn)
            with self.journal.locked():
                self._catch_up()
                self._journal_and_index({"type": "store.repaired",
                                         "packs": [writer.pack_id] if writer else [],
                                         "restored": len(found), "lost": len(lost)}, None, apply)
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        finally:
            os.close(lock_fd)

    def _write_repair_record(self, writer, encoder, chunk_id: bytes, data: bytes):
        codec_id, payload = encoder.encode(data, 0)
        flags = 0
        if self.cipher is not None:
            payload = self.cipher.encrypt(KIND_CHUNK, codec_id, len(data), chunk_id, payload)
            flags = FLAG_ENCRYPTED
        offset, length = writer.append(KIND_CHUNK, codec_id, chunk_id, len(data), payload, flags)
        return Location(writer.pack_id, offset, length, len(data))

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
