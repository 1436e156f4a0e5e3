"""The Store: the engine's public API. No FUSE here; the CLI and the daemon sit on top.

    store = Store.init("/data/ckpts")            # or Store.open(path)
    report = store.import_directory(src, "proj", "run-1", "step-100")
    store.restore("proj", "run-1", "step-100", "/tmp/out")
"""
import bisect
import fcntl
import fnmatch
import hashlib
import os
import shutil
import threading
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone

import blake3
import numpy as np

from . import codec as codecs
from .chunking import parse_safetensors_header, safetensors_header_size
from .access import AccessMixin
from .backend import Backend, LocalBackend
from .catalog import CatalogMixin, apply_catalog_event, is_checkpoint_kind, search_document
from .config import CONFIG_NAME, EncryptionSettings, StoreConfig
from .deletion import RetentionMixin
from .encryption import RecordCipher, key_check, obtain_key_file, open_store_key
from .errors import (ChunkKeyError, ChunksReclaimedError, IntegrityError, JournalDamagedError,
                     NotFoundError, PackMissingError, StoreError, StoreFormatError,
                     VersionExistsError)
from .gc import GcMixin, intent_pack_ids, load_intent
from .index import INDEX_FORMAT, Index, Location, version_key
from .ingest import Ingest, IngestReport
from .journal import Journal, encode_entry, entry_hash
from .manifest import SCHEMA as MANIFEST_SCHEMA
from .manifest import compress_manifest, decode_manifest, encode_manifest, version_digest
from .names import validate_name, validate_version_name
from .pack import (FLAG_ENCRYPTED, KIND_CHUNK, KIND_MANIFEST, PackReader, list_pack_ids,
                   pack_name, pack_sizes, scan_pack)
from .private import PRIVATE_DIR, make_private_dirs, private_open
from .repair import RepairMixin, chunk_key_fingerprint
from .restore import RestoreReport, restore_entries
from .signing import SignatureReport, SigningMixin

SUBDIRS = ("packs", "index", "journal", "spool")
KEY_CHECK = b"chunk_key_check"  # meta: fingerprint of the chunk id key the store uses
KEY_SAMPLE = 3                  # manifests checked against the key when none is recorded
READ_AHEAD_CHUNKS = 8
CACHE_BYTES = 64 << 20


def version_name(project, run, version) -> str:
    return f"{project}/{run}/{version}"


@dataclass
class VerifyReport:
    packs: int = 0
    chunks: int = 0
    versions: int = 0
    files: int = 0
    bytes: int = 0
    damaged_packs: dict = field(default_factory=dict)    # pack id -> [messages]
    damaged_chunks: dict = field(default_factory=dict)   # chunk id hex -> message
    damaged_files: list = field(default_factory=list)    # (version, path, message)
    damaged_versions: set = field(default_factory=set)
    leftover_packs: list = field(default_factory=list)  # unfinished, unreferenced: not damage
    dead_damage: dict = field(default_factory=dict)  # pack id -> [damage no record in use has]
    deleted_versions: int = 0       # tombstones whose manifest (file list) was checked
    gc_interrupted: bool = False    # a gc died midway: the next one finishes it (not damage)
    signatures: SignatureReport | None = None  # with verify(signatures=True)

    @property
    def ok(self) -> bool:
        return not (self.damaged_packs or self.damaged_chunks or self.damaged_files
                    or self.damaged_versions)


class _ChunkCache:
    """A small LRU of decoded chunks, so reads that walk a chunk in pieces decode it once."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.size = 0
        self._items: OrderedDict[bytes, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            data = self._items.get(key)
            if data is not None:
                self._items.move_to_end(key)
            return data

    def put(self, key, data):
        with self._lock:
            if key in self._items or len(data) > self.max_bytes // 4:
                return
            self._items[key] = data
            self.size += len(data)
            while self.size > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self.size -= len(old)


class Store(CatalogMixin, AccessMixin, RetentionMixin, GcMixin, SigningMixin, RepairMixin):
    def __init__(self, path: str, config: StoreConfig, cipher: RecordCipher | None = None,
                 for_rebuild: bool = False, backend: Backend | None = None):
        self.path = path
        self.backend = backend or LocalBackend(path)  # packs, journal, settings
        self.config = config
        # First: without its key an encrypted store is refused before anything is opened.
        if cipher is None and config.encryption is not None:
            cipher = open_store_key(path, config.encryption.key_file, config.encryption.key_check)
        self.cipher = cipher
        self.spool_dir = os.path.join(path, "spool")
        self._key = config.chunk_id_key
        self._open_lock_fd = self._take_open_lock(path)
        self.index_moved_aside = None  # where a damaged index went (rebuild-index)
        try:
            if for_rebuild:
                self._take_store_exclusively()
            self.index = self._open_index(for_rebuild)
        except BaseException:
            os.close(self._open_lock_fd)
            raise
        self.journal = Journal(self.backend.journal())
        self.packs = PackReader(self.backend)
        self._cache = _ChunkCache(CACHE_BYTES)
        self._inflight: dict[bytes, object] = {}   # chunk id -> Future of a prefetch
        self._inflight_lock = threading.Lock()
        self._prefetcher = None
        self._gc_generation = 0  # of the index when we last dropped deleted packs' fds
        if for_rebuild:
            return  # rebuild_index checks the key and replays everything itself
        try:
            self._check_chunk_key()  # first: with a wrong key, a replay would see only damage
            self._upgrade_index_if_old()
            self._catch_up_if_behind()
        except BaseException:
            self.close()
            raise

    # -- lifecycle --------------------------------------------------------------------
    @classmethod
    def init(cls, path: str, shared: bool = False, key_file: str | None = None) -> "Store":
        """A new store in `path`; its creator is its admin. `shared`: roles are enforced,
        and the directory is private to its owner (others come in through the mount).
        With `key_file`, an encrypted store whose key is in that file (read if it exists,
        else created with a new random key)."""
        path = os.path.abspath(path)
        if os.path.exists(os.path.join(path, CONFIG_NAME)):
            raise StoreError(f"{path} is already a ckptfs store")
        if os.path.isdir(path) and os.listdir(path):
            raise StoreError(f"{path} exists and is not empty: choose a new or empty directory")
        if os.path.exists(path) and not os.path.isdir(path):
            raise StoreError(f"{path} exists and is not a directory")
        encryption = cipher = None
        if key_file is not None:
            key_path, key = obtain_key_file(key_file)
            encryption = EncryptionSettings(key_file=key_path, key_check=key_check(key))
            cipher = RecordCipher(key)  # this key, whatever CKPTFS_KEY_FILE names
        # Private, shared or not: the store holds every version's data and sidecars, and
        # others come in through the mount (docs/format.md, "Permissions").
        make_private_dirs(path)
        os.chmod(path, PRIVATE_DIR)  # also an empty directory that existed
        for sub in SUBDIRS:
            make_private_dirs(os.path.join(path, sub))
        config = StoreConfig.new(encryption)
        backend = LocalBackend(path)
        config.save(backend)
        store = cls(path, config, cipher, backend=backend)
        try:
            store._start_access(shared)
        except BaseException:
            store.close()
            raise
        return store

    @classmethod
    def open(cls, path: str, for_rebuild: bool = False) -> "Store":
        """Open a store. `for_rebuild`: only to rebuild its index (`rebuild_index`): the
        store is taken exclusively, and an index that cannot be opened is moved aside."""
        path = os.path.abspath(path)
        backend = LocalBackend(path)
        config = StoreConfig.load(backend)
        for sub in ("packs", "journal"):
            if not os.path.isdir(os.path.join(path, sub)):
                raise StoreFormatError(f"{path} is damaged: its {sub}/ directory is missing")
        # The index is derived: a missing one is recreated from the journal on open.
        make_private_dirs(os.path.join(path, "index"))
        make_private_dirs(os.path.join(path, "spool"))
        return cls(path, config, for_rebuild=for_rebuild, backend=backend)

    def _open_index(self, for_rebuild: bool) -> Index:
        """The LMDB index; for a rebuild, one that cannot be opened (garbage in data.mdb)
        is moved aside (kept, not deleted: it is evidence) and a new one started."""
        path = os.path.join(self.path, "index")
        try:
            return Index(path)
        except StoreError:
            if not for_rebuild:
                raise
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        aside = os.path.join(self.path, f"index.damaged-{stamp}")
        os.rename(path, aside)
        make_private_dirs(path)
        self.index_moved_aside = aside
        return Index(path)

    def _take_store_exclusively(self) -> None:
        try:
            fcntl.flock(self._open_lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError("the store is in use by another ckptfs process (a mount or an "
                             "import): stop it before rebuilding the index") from None

    # -- the chunk id key ---------------------------------------------------------------
    def _check_chunk_key(self) -> None:
        """Refuse a chunk id key that is not the store's (ckptfs.toml edited, or another
        store's copied in): every id would mismatch, which looks like total damage, and
        new versions would be named with the wrong key. The index records the key's
        fingerprint; an index without one (older, or new) first checks a few manifests."""
        with self.index.read() as txn:
            recorded = self.index.get_meta(txn, KEY_CHECK)
        mine = chunk_key_fingerprint(self._key)
        if recorded is not None and recorded.decode() != mine:
            raise ChunkKeyError(self._wrong_key_message("its fingerprint differs from the one "
                                                        "the index recorded"))
        if recorded is None:
            verdict = self._key_verdict_of_manifests()
            if verdict is False:
                raise ChunkKeyError(self._wrong_key_message("no manifest matches its id"))
            if verdict:  # recorded only once confirmed: damage must not vouch for a key
                self.index.commit(lambda txn: self.index.put_meta(txn, KEY_CHECK, mine.encode()))

    def _wrong_key_message(self, why: str) -> str:
        return (f"the chunk id key does not match this store ({why}): secret.chunk_id_key in "
                f"{self.backend.describe(CONFIG_NAME)} is not the key its data was stored "
                "with; put back the store's own ckptfs.toml (nothing was changed)")

    def _key_verdict_of_manifests(self) -> bool | None:
        """True if a manifest record hashes to its id with our key (the newest
        KEY_SAMPLE readable ones are tried; an intact record, by its xxh3, holds the bytes
        written, so only the key can differ); False if none does; None if there is no
        readable manifest to tell (and True for a store without versions: any key is
        its key so far)."""
        try:
            sealed = [e for e in self.journal.entries(verify_chain=False)
                      if e.get("type") == "version.sealed"]
        except IntegrityError:
            return None  # a damaged journal: `audit verify` says so, not this check
        if not sealed:
            return True
        checked = 0
        for entry in reversed(sealed):
            match = self._manifest_matches_key(entry)
            if match:
                return True
            checked += match is not None
            if checked == KEY_SAMPLE:
                break
        return False if checked else None

    def _manifest_matches_key(self, entry: dict) -> bool | None:
        """Whether the version's manifest record hashes to its id; None if it cannot be
        read (damage is not evidence about the key)."""
        manifest_id = bytes.fromhex(entry["manifest"])
        with self.index.read() as txn:
            loc = self.index.get_manifest(txn, manifest_id)
        places = [(loc.pack_id, loc.offset, loc.length)] if loc else []
        for pack_id in [] if loc else entry.get("packs") or []:
            try:  # no index yet: find the record in the packs the version wrote
                places += [(pack_id, rec.offset, rec.length)
                           for rec in scan_pack(self.backend, pack_id).records
                           if rec.kind == KIND_MANIFEST and rec.record_id == manifest_id]
            except OSError:
                continue
        for pack_id, offset, length in places:
            try:
                record = self._decrypted(self.packs.read(pack_id, offset, length), pack_id)
                raw = codecs.decode(record.codec, record.payload, record.raw_len)
            except (OSError, StoreError, ValueError):
                continue
            return self.chunk_id(raw) == manifest_id
        return None

    def close(self):
        if self._prefetcher is not None:
            self._prefetcher.shutdown(wait=True, cancel_futures=True)
        self.packs.close()
        self.index.close()
        os.close(self._open_lock_fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @staticmethod
    def _take_open_lock(path: str) -> int:
        """Every open Store holds a shared lock; rebuild-index needs it exclusively."""
        fd = private_open(os.path.join(path, "lock"), os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_SH)
        return fd

    # -- chunk ids and lookups --------------------------------------------------------
    def chunk_id(self, data) -> bytes:
        return blake3.blake3(data, key=self._key).digest()

    def has_chunk(self, chunk_id: bytes) -> bool:
        """Stored and not known to be damaged: an ingest deduplicates only against such a
        chunk, and stores a fresh copy of a damaged one (which heals it)."""
        with self.index.read() as txn:
            return self.index.sound_chunk(txn, chunk_id)

    # -- ingest -----------------------------------------------------------------------
    def import_directory(self, src: str, project: str, run: str, version: str,
                         progress=None, ingest: Ingest | None = None,
                         token_of=None, metadata: dict | None = None,
                         actor: dict | None = None) -> IngestReport:
        """Archive the directory `src` as PROJECT/RUN/VERSION (atomically).

        `ingest` is one begun earlier with `begin_ingest` whose files were prepared as
        they were written; `token_of` then names each file's prepared result. On any
        error the ingest is aborted: its packs are deleted. `metadata` (JSON-able, made
        by the meta layer) is sealed with the version and becomes its catalog document.
        """
        if ingest is None:
            self.current_signing_key()  # a signing key that cannot be used: fail before the work
            ingest = self.begin_ingest(project, run, version)
        else:
            try:
                self.check_new_version(project, run, version)
                self.current_signing_key()
            except BaseException:
                ingest.abort()
                raise
        ingest.progress = progress
        ingest.metadata = metadata or {}
        ingest.actor = actor
        try:
            return ingest.execute(src, token_of)
        except ChunksReclaimedError:
            # A garbage collection in another process reclaimed chunks this ingest had
            # deduplicated against (execute aborted it). Once more from scratch: reading
            # the files again, deduplicating against the index as it is now.
            retry = self.begin_ingest(project, run, version)
            retry.on_new_pack = ingest.on_new_pack
            retry.progress, retry.metadata, retry.actor = progress, metadata or {}, actor
            report = retry.execute(src, None)
            report.retried = True
            return report

    def begin_ingest(self, project: str, run: str, version: str) -> Ingest:
        """An ingest of PROJECT/RUN/VERSION to feed file by file (`Ingest.prepare_file`)
        and finish with `import_directory(..., ingest=...)`, or `abort`."""
        self.check_new_version(project, run, version)
        return Ingest(self, project, run, version)

    def check_new_version(self, project: str, run: str, version: str):
        """Raise unless PROJECT/RUN/VERSION is a valid name that is free (the commit checks
        again; this is for failing early, before unpacking or reading anything)."""
        validate_name(project, "project")
        validate_name(run, "run")
        validate_version_name(version)
        if self.version_record(project, run, version) is not None:
            raise VersionExistsError(
                f"version {version_name(project, run, version)} already exists; versions are "
                "immutable: import under a new version name")
        self.check_name_not_deleted(project, run, version)
        if self.name_in_run(project, run, version) == "alias":
            raise VersionExistsError(
                f"{project}/{run} has an alias named {version!r}: choose another version "
                "name (or remove the alias with `ckptfs untag`)")

    def discard_unfinished_pack(self, pack_id: int) -> bool:
        """Delete pack `pack_id` if it is unfinished (no end record): the leftover of an
        ingest whose process died. Only for a pack the caller knows that process wrote:
        another process may be writing an unfinished pack right now."""
        try:
            if scan_pack(self.backend, pack_id, verify=False).complete:
                return False
        except FileNotFoundError:
            return False
        return self.backend.delete(pack_name(pack_id))

    def newest_checkpoint(self, project: str, run: str) -> dict | None:
        """The catalog document of the run's newest version of kind `checkpoint`: the
        parent and delta base of its next version. `files` versions (logs, metrics) are
        never either (docs/mount.md)."""
        docs = self.catalog_documents(project, run, fields=[("kind",)])
        checkpoints = [d for d in docs if is_checkpoint_kind(d)]
        return max(checkpoints, key=lambda d: d["seq"]) if checkpoints else None

    def delta_parent_for(self, project: str, run: str, preferred: dict | None = None) -> dict | None:
        """The version whose tensors are the delta bases of a new version of the run:
        `preferred` ({project, run, version}: the version its writer loaded its weights
        from) if it is a stored checkpoint, else the run's newest checkpoint."""
        if not self.config.compression.delta:
            return None
        if preferred:
            doc = self.catalog_document(preferred["project"], preferred["run"], preferred["version"])
            if doc is not None and is_checkpoint_kind(doc):
                return self.version_record(doc["project"], doc["run"], doc["version"])
        newest = self.newest_checkpoint(project, run)
        return self.version_record(project, run, newest["version"]) if newest else None

    def delta_bases(self, parent: dict, path: str, layout) -> dict[int, bytes]:
        """{offset in the new file: chunk id of the same tensor block in the parent file}."""
        vkey = version_key(parent["project"], parent["run"], parent["version"])
        with self.index.read() as txn:
            old = self.index.get_entry(txn, vkey, path)
        if not old or old["type"] != "file":
            return {}
        try:
            head_size = safetensors_header_size(self.read_range(old, 0, 8))
            old_layout = parse_safetensors_header(self.read_range(old, 0, head_size), old["size"]) \
                if head_size else None
        except IntegrityError:
            return {}
        if old_layout is None:
            return {}
        old_chunks, pos = {}, 0
        for chunk_hex, length in old["chunks"]:
            old_chunks[pos] = (bytes.fromhex(chunk_hex), length)
            pos += length
        block = self.config.chunking.tensor_block
        bases = {}
        for name, (start, end, dtype) in layout.tensors.items():
            old_t = old_layout.tensors.get(name)
            if old_t is None or old_t[2] != dtype or old_t[1] - old_t[0] != end - start:
                continue
            for k in range(0, end - start, block):
                found = old_chunks.get(old_t[0] + k)
                if found and found[1] == min(block, end - start - k):
                    bases[start + k] = found[0]
        return bases

    def keyframe_of(self, chunk_id: bytes) -> tuple[bytes, bytes] | None:
        """(id, raw bytes) of the non-delta chunk a delta against `chunk_id` should use."""
        try:
            record = self._read_record(chunk_id)
            base_id = codecs.delta_base_id(record.codec, record.payload)
            key = base_id or chunk_id
            return key, self.read_chunk(key, cache=False)  # each keyframe serves one delta
        except IntegrityError:
            return None

    def commit_version(self, ingest: Ingest, root: dict, entries: list[dict]) -> IngestReport:
        p, r, v = ingest.project, ingest.run, ingest.version
        digest = version_digest(entries)
        with self.journal.locked():
            self._catch_up()
            if self.version_record(p, r, v) is not None:
                raise VersionExistsError(
                    f"version {version_name(p, r, v)} was created by another import meanwhile; "
                    "versions are immutable: import under a new version name")
            self.check_name_not_deleted(p, r, v)
            self._check_chunks_still_stored(ingest, entries)
            # Under the lock: the key is the one configured at the moment of the seal.
            signature = self.seal_signature(p, r, v, digest)
            # Written under the lock: the parent it names must be the newest version
            # of the run at the moment of the commit.
            manifest = {"schema": MANIFEST_SCHEMA, "project": p, "run": r, "version": v,
                        "root": root, "digest": digest, "entries": entries,
                        "meta": self._with_parent(p, r, ingest.metadata)}
            raw = encode_manifest(manifest)
            manifest_id = self.chunk_id(raw)
            manifest_loc = ingest.write_manifest(manifest_id, len(raw), compress_manifest(raw))
            with self.index.read() as txn:
                fresh = {cid: loc for cid, loc in ingest.session_chunks.items()
                         if not self.index.sound_chunk(txn, cid)}
            s = ingest.stats
            parent = ingest.delta_parent
            event = self._journal_and_index({
                "type": "version.sealed", "project": p, "run": r, "version": v,
                "manifest": manifest_id.hex(), "digest": digest,
                "packs": [w.pack_id for w in ingest.writers],
                "files": sum(1 for e in entries if e["type"] == "file"),
                "logical_bytes": s.logical_bytes,
                "new_raw_bytes": sum(loc.raw_len for loc in fresh.values()),
                "new_stored_bytes": sum(loc.length for loc in fresh.values()) + manifest_loc.length,
                "delta_parent": version_name(parent["project"], parent["run"], parent["version"])
                if parent else None,
                **({"signature": signature} if signature else {}),
            }, ingest.actor, lambda txn, entry: self._index_new_version(
                txn, entry, manifest, fresh, manifest_id, manifest_loc))
        return IngestReport(p, r, v, event["files"], len(entries), digest, 0.0, s,
                            event["delta_parent"])

    def _check_chunks_still_stored(self, ingest: Ingest, entries: list[dict]):
        """Every chunk the version uses, and the base of every delta this ingest wrote,
        must be in the index or among the ingest's own new chunks (checked under the
        journal lock, which a garbage collection's index switch also takes). A gc in
        another process may have reclaimed a chunk since the ingest deduplicated
        against it, or chose it as a delta base."""
        needed = {bytes.fromhex(chunk) for e in entries if e["type"] == "file"
                  for chunk, _length in e["chunks"]}
        needed.update(ingest.delta_base_of.values())
        needed.difference_update(ingest.session_chunks)
        with self.index.read() as txn:
            missing = sum(1 for chunk_id in needed if self.index.get_chunk(txn, chunk_id) is None)
        if missing:
            raise ChunksReclaimedError(
                f"{missing} chunk(s) that {version_name(ingest.project, ingest.run, ingest.version)} "
                "shares with other versions were reclaimed by a garbage collection while it "
                "was being imported; nothing was committed: import it again")

    def _index_new_version(self, txn, event, manifest, fresh, manifest_id, manifest_loc):
        healed = False
        for cid, loc in fresh.items():
            if not self.index.add_chunk(txn, cid, loc) or \
                    self.index.chunk_damage(txn, cid) is not None:
                self.index.replace_chunk(txn, cid, loc)  # a fresh copy of a damaged chunk
                healed = True
        self.index.add_manifest(txn, manifest_id, manifest_loc)
        self._put_version(self.index, txn, event, manifest)
        if healed:
            self.refresh_version_damage(self.index, txn)

    def _journal_and_index(self, event: dict, actor: dict | None, apply_changes) -> dict:
        """Append `event` to the journal (the caller holds its lock), then apply it to the
        index with `apply_changes(txn, entry)` in one transaction that also records it
        as applied. If the index update fails the entry is taken back: the journal
        never claims a change the caller reports as failed."""
        self._settle_journal_tail(strict=True)
        entry = self.journal.append(event, actor)

        def apply(txn):
            apply_changes(txn, entry)
            self.index.set_applied(txn, entry["seq"], entry_hash(encode_entry(entry)))
        try:
            self.index.commit(apply)
        except BaseException:
            self.journal.rollback(entry)
            raise
        return entry

    def _with_parent(self, project: str, run: str, metadata: dict | None) -> dict:
        """The metadata with `lineage.parent`: the one it names, else (for a checkpoint)
        the run's newest checkpoint (a run's versions descend from each other)."""
        meta = dict(metadata or {})
        lineage = dict(meta.get("lineage") or {})
        if not lineage.get("parent") and is_checkpoint_kind(meta):
            newest = self.newest_checkpoint(project, run)
            if newest is None:
                return meta
            lineage["parent"] = {"project": project, "run": run, "version": newest["version"],
                                 "source": "previous"}
        meta["lineage"] = lineage
        return meta

    def _put_version(self, index: Index, txn, event: dict, manifest: dict):
        record = self._version_record(event, manifest)
        index.put_version(txn, record, manifest["entries"])
        index.put_search_doc(txn, version_key(record["project"], record["run"], record["version"]),
                             search_document(record, manifest.get("meta") or {}))

    @staticmethod
    def _version_record(event: dict, manifest: dict) -> dict:
        record = {k: event[k] for k in ("project", "run", "version", "manifest", "digest",
                                         "files", "logical_bytes", "new_raw_bytes",
                                         "new_stored_bytes", "delta_parent")}
        record.update(sealed_at=event["time"], seq=event["seq"], root=manifest["root"],
                      entries=len(manifest["entries"]))
        if event.get("signature"):
            record["signature"] = event["signature"]
        return record

    # -- journal replay (crash recovery and rebuild) -----------------------------------
    def _upgrade_index_if_old(self):
        """An index made by an older ckptfs lacks the catalog sub-databases: replay the
        journal into them (versions, aliases and settings are idempotent to re-apply)."""
        with self.index.read() as txn:
            stored = self.index.get_meta(txn, b"format")
            empty = self.index.version_count(txn) == 0
        if stored is not None and int(stored) >= INDEX_FORMAT:
            return
        if stored is None and not empty:  # format 1 did not record its number
            with self.journal.locked():
                self.index.commit(self.index.clear_catalog)
                self._replay(self.index, self.journal.entries())
        self.index.commit(lambda txn: self.index.put_int(txn, b"format", INDEX_FORMAT))

    REPLAY_BATCH = 1000

    def _replay(self, index: Index, entries) -> int:
        """Apply journal entries (packs already indexed) in transactions of REPLAY_BATCH,
        each writing the catalog columns once; returns how many versions were sealed."""
        sealed, batch = 0, []

        def apply(txn):
            with index.batched_columns(txn):
                for entry in batch:
                    self._apply_entry(index, txn, entry, scan_packs=False)
        for entry in entries:
            batch.append(entry)
            sealed += entry["type"] == "version.sealed"
            if len(batch) == self.REPLAY_BATCH:
                index.commit(apply)
                batch = []
        if batch:
            index.commit(apply)
        return sealed

    def _catch_up_if_behind(self):
        with self.index.read() as txn:
            applied = self.index.get_int(txn, b"journal_seq")
        try:
            behind = self.journal.last_seq() > applied or self.journal.torn_tail() is not None
        except IntegrityError:
            return  # a damaged last entry: reads go on from the index, writes are refused
        if behind:
            with self.journal.locked():
                self._settle_journal_tail(strict=False)
                self._catch_up()

    def _catch_up(self):
        """Apply journal entries the index has not seen (the caller holds the lock).

        This finishes a commit that crashed after its journal append: the journal is
        the truth, the index follows it. An index recreated from nothing (its directory
        was removed) also learns which files lost chunks to damaged packs."""
        with self.index.read() as txn:
            applied = self.index.get_int(txn, b"journal_seq")
        for entry in self.journal.entries(after_seq=applied):
            self.index.commit(lambda txn: self._apply_entry(self.index, txn, entry, scan_packs=True))
        if applied == 0:
            self.index.commit(lambda txn: self.record_missing_chunks(self.index, txn))

    def _settle_journal_tail(self, strict: bool) -> None:
        """Deal with a last journal line that lacks its newline (the caller holds the
        journal lock) before anything could cut it off.

        A whole entry that continues the chain only lost its newline: it gets it back
        (and is applied like a commit that crashed before its index update). Anything
        else is a torn append, which the next append cuts off, unless the index applied
        that entry: then it was committed and cutting it would erase it, so a writer
        (`strict`) refuses."""
        torn = self.journal.torn_tail()
        if torn is None:
            return
        if self.journal.tail_is_whole_entry(torn[0]):
            self.journal.restore_newline()
            return
        with self.index.read() as txn:
            committed, _head = self.index.applied(txn)
        if strict and committed > self.journal.last_seq():
            raise JournalDamagedError(
                f"the journal's last line is damaged, and the index says entry {committed} was "
                f"committed: ckptfs refuses to write, which would cut that entry off; restore "
                f"{self.journal.path} from a backup (`ckptfs audit verify` names the damage)")

    def _apply_entry(self, index: Index, txn, entry: dict, scan_packs: bool):
        if entry["type"] == "version.sealed":
            if scan_packs:
                for pack_id in entry["packs"]:
                    self._index_pack(index, txn, pack_id)
            try:
                manifest = self._load_manifest(index, txn, bytes.fromhex(entry["manifest"]))
            except IntegrityError as e:
                # Salvage: the rest of the store stays readable; this version is known lost.
                self.record_lost_version(index, txn, entry, str(e))
            else:
                self._put_version(index, txn, entry, manifest)
        elif entry["type"] == "store.repaired":
            if scan_packs:
                for pack_id in entry["packs"]:
                    self._index_pack(index, txn, pack_id)
        else:
            apply_catalog_event(index, txn, entry)
        index.set_applied(txn, entry["seq"], entry_hash(encode_entry(entry)))

    def _index_pack(self, index: Index, txn, pack_id: int):
        try:
            scan = scan_pack(self.backend, pack_id)
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
        if index.get_int(txn, b"next_pack_id", 1) <= pack_id:
            index.put_int(txn, b"next_pack_id", pack_id + 1)
        return scan

    def _load_manifest(self, index: Index, txn, manifest_id: bytes) -> dict:
        loc = index.get_manifest(txn, manifest_id)
        if loc is None:
            raise IntegrityError(f"manifest {manifest_id.hex()[:16]} is not in any pack")
        record = self.packs.read(loc.pack_id, loc.offset, loc.length)
        return self._decode_manifest(manifest_id, loc, record)

    def read_manifest(self, manifest_id: bytes) -> dict:
        """A manifest by id, from the live index (e.g. a deleted version's file list)."""
        def locate(txn):
            return self.index.get_manifest(txn, manifest_id)
        loc, record = self._read_located(locate, f"manifest {manifest_id.hex()[:16]}")
        return self._decode_manifest(manifest_id, loc, record)

    def _decode_manifest(self, manifest_id: bytes, loc: Location, record) -> dict:
        record = self._decrypted(record, loc.pack_id)
        raw = codecs.decode(record.codec, record.payload, record.raw_len)
        if self.chunk_id(raw) != manifest_id:
            raise IntegrityError(f"manifest {manifest_id.hex()[:16]} in pack "
                                 f"{loc.pack_id:08x} does not match its id", pack_id=loc.pack_id)
        return decode_manifest(raw)

    def _rebuilt_pack_counter(self, index: Index, txn) -> None:
        """Pack ids are never handed out twice: the rebuilt counter does not fall below the
        old index's (packs may have been deleted since) nor below a gc intent's ids."""
        try:
            with self.index.read() as old_txn:
                old = self.index.get_int(old_txn, b"next_pack_id", 1)
        except Exception:  # a damaged old index: the packs and the intent decide
            old = 1
        floor = max([old] + [pack_id + 1 for pack_id in intent_pack_ids(self.backend)])
        if index.get_int(txn, b"next_pack_id", 1) < floor:
            index.put_int(txn, b"next_pack_id", floor)

    def rebuild_index(self) -> dict:
        """Recreate the LMDB index from packs and journal alone.

        The new index is built beside the live one and swapped in only when complete,
        so a failure leaves the store as it was. It salvages: a version whose manifest
        is lost, or files whose chunks are, are recorded as damaged (`summary["damaged"]`,
        and in the index for verify, ls and get) and everything else is rebuilt."""
        self._take_store_exclusively()
        try:
            with self.journal.locked():
                self._settle_journal_tail(strict=True)  # never replay without a committed entry
                self._check_chunk_key()
                new_path = os.path.join(self.path, "index.rebuild")
                shutil.rmtree(new_path, ignore_errors=True)
                try:
                    summary = self._build_index(new_path)
                except BaseException:
                    shutil.rmtree(new_path, ignore_errors=True)
                    raise
                self._swap_in_index(new_path)
        finally:
            fcntl.flock(self._open_lock_fd, fcntl.LOCK_SH)
        return summary

    def _build_index(self, path: str) -> dict:
        torn = self.journal.torn_tail()
        summary = {"packs": 0, "damaged_packs": [], "unfinished_packs": [], "versions": 0,
                   "damaged": [], "moved_aside": self.index_moved_aside,
                   "torn_tail": len(torn[0]) if torn else 0}
        sealed_in = {pack_id for e in self.journal.entries() if e["type"] == "version.sealed"
                     for pack_id in e["packs"]}
        index = Index(path)
        try:
            index.commit(lambda txn: index.put_int(txn, b"format", INDEX_FORMAT))
            for pack_id in list_pack_ids(self.backend):
                scan = index.commit(lambda txn: self._index_pack(index, txn, pack_id))
                if scan is None:
                    continue  # deleted since it was listed (a gc of another process)
                summary["packs"] += 1
                problems = list(scan.damage)
                if not scan.complete and pack_id in sealed_in:
                    problems.append(f"pack {pack_id:08x} ends early: {scan.tail}")
                elif not scan.complete:
                    summary["unfinished_packs"].append((pack_id, scan.tail))
                if problems:
                    summary["damaged_packs"].append((pack_id, problems))
            index.commit(lambda txn: self._rebuilt_pack_counter(index, txn))
            summary["versions"] = self._replay(index, self.journal.entries())
            index.commit(lambda txn: self.record_missing_chunks(index, txn))
            index.commit(lambda txn: index.put_meta(txn, KEY_CHECK,
                                                    chunk_key_fingerprint(self._key).encode()))
            with index.read() as txn:
                summary["damaged"] = list(index.iter_version_damage(txn))
        finally:
            index.close()
        return summary

    def _swap_in_index(self, new_path: str):
        live = os.path.join(self.path, "index")
        old = os.path.join(self.path, "index.old")
        self.index.close()
        shutil.rmtree(old, ignore_errors=True)
        os.rename(live, old)
        os.rename(new_path, live)
        shutil.rmtree(old, ignore_errors=True)
        self.index = Index(live)
        self._cache = _ChunkCache(CACHE_BYTES)

    # -- catalog ----------------------------------------------------------------------
    def check_journal(self) -> dict:
        """Recompute the journal's hash chain (`ckptfs audit verify`): the first entry
        altered, removed or reordered, against the chain and the index's last entry."""
        with self.index.read() as txn:
            committed = self.index.applied(txn)
        return self.journal.check_chain(committed)

    def journal_entries(self):
        """Every journal entry, oldest first, without stopping at a broken chain
        (`ckptfs audit` shows what is there; `check_journal` says whether to trust it)."""
        return self.journal.entries(verify_chain=False)

    def applied_seq(self) -> int:
        """The last journal entry the index reflects: changes whenever a version is sealed
        (by this process or another), so callers can cache catalog answers against it."""
        with self.index.read() as txn:
            return self.index.get_int(txn, b"journal_seq")

    def projects(self) -> list[str]:
        with self.index.read() as txn:
            return self.index.distinct_components(txn, b"")

    def runs(self, project: str) -> list[str]:
        with self.index.read() as txn:
            return self.index.distinct_components(txn, version_key(project, "", "")[:-1])

    def versions(self, project: str, run: str) -> list[dict]:
        prefix = version_key(project, run, "")
        with self.index.read() as txn:
            return list(self.index.iter_versions(txn, prefix))

    def all_versions(self) -> list[dict]:
        with self.index.read() as txn:
            return list(self.index.iter_versions(txn))

    def version_record(self, project: str, run: str, version: str) -> dict | None:
        with self.index.read() as txn:
            return self.index.get_version(txn, project, run, version)

    def require_version(self, project: str, run: str, version: str) -> dict:
        record = self.version_record(project, run, version)
        if record is None:
            self.raise_if_lost(project, run, version)
            raise self.deleted_error(project, run, version) or NotFoundError(
                f"no version {version_name(project, run, version)} in the store")
        return record

    def list_dir(self, project: str, run: str, version: str, dir_path: str = "") -> list[dict]:
        self.require_version(project, run, version)
        vkey = version_key(project, run, version)
        if dir_path:
            entry = self.entry(project, run, version, dir_path)
            if entry["type"] != "dir":
                return [entry]
        with self.index.read() as txn:
            return list(self.index.list_entries(txn, vkey, dir_path))

    def entry(self, project: str, run: str, version: str, path: str) -> dict:
        path = path.strip("/")
        with self.index.read() as txn:
            entry = self.index.get_entry(txn, version_key(project, run, version), path)
        if entry is None:
            raise NotFoundError(f"{version_name(project, run, version)} has no {path!r}")
        return entry

    def walk(self, project: str, run: str, version: str) -> list[dict]:
        """Every entry of a version, parents before children, each directory's children in
        name order."""
        vkey = version_key(project, run, version)
        out = []
        with self.index.read() as txn:
            def visit(dir_path):
                for entry in self.index.list_entries(txn, vkey, dir_path):
                    out.append(entry)
                    if entry["type"] == "dir":
                        visit(entry["path"])
            visit("")
        return out

    # -- reading ------------------------------------------------------------------------
    def _read_record(self, chunk_id: bytes):
        """The record of a chunk, checked (xxh3) and decrypted: every read of a chunk
        record goes through here (manifests: `_decode_manifest`)."""
        def locate(txn):
            return self.index.get_chunk(txn, chunk_id)
        loc, record = self._read_located(locate, f"chunk {chunk_id.hex()[:16]}", chunk_id)
        if record.record_id != chunk_id:
            raise IntegrityError(f"pack {loc.pack_id:08x} holds another record where chunk "
                                 f"{chunk_id.hex()[:16]} should be", pack_id=loc.pack_id,
                                 chunk_id=chunk_id)
        return self._decrypted(record, loc.pack_id)

    def _decrypted(self, record, pack_id: int):
        """`record` with a plaintext payload. In an encrypted store every record must be
        encrypted (a plaintext one was not written by it: it would bypass the
        authentication), and in a plain store none can be."""
        encrypted = record.flags & FLAG_ENCRYPTED
        name = f"pack {pack_id:08x}: record {record.record_id.hex()[:16]}"
        if self.cipher is None:
            if encrypted:
                raise IntegrityError(f"{name} is encrypted, but store {self.path} is not: it was "
                                     "not written by this store", pack_id=pack_id,
                                     chunk_id=record.record_id)
            return record
        if not encrypted:
            raise IntegrityError(f"{name} is not encrypted, but store {self.path} is: it was not "
                                 "written by this store", pack_id=pack_id, chunk_id=record.record_id)
        return self.cipher.decrypt(record, pack_id)

    def _read_located(self, locate, what: str, chunk_id: bytes | None = None):
        """(location, record) of what `locate(txn)` finds in the index.

        A garbage collection in another process may move the record to a new pack and
        delete the old one between our lookup and our read: on a missing pack, look
        the location up again and read once more."""
        loc = self._locate(locate, what, chunk_id)
        try:
            return loc, self.packs.read(loc.pack_id, loc.offset, loc.length)
        except PackMissingError:
            again = self._locate(locate, what, chunk_id)
            if again == loc:
                raise
            return again, self.packs.read(again.pack_id, again.offset, again.length)

    def _locate(self, locate, what: str, chunk_id: bytes | None) -> Location:
        with self.index.read() as txn:
            loc = locate(txn)
            generation = self.index.get_int(txn, b"gc_generation")
        if generation != self._gc_generation:
            self._gc_generation = generation
            self.packs.forget_deleted()  # their open descriptors would keep the space
        if loc is None:
            raise IntegrityError(self._missing_message(what, chunk_id), chunk_id=chunk_id)
        return loc

    def _missing_message(self, what: str, chunk_id: bytes | None) -> str:
        damage = None
        if chunk_id is not None:
            with self.index.read() as txn:
                damage = self.index.chunk_damage(txn, chunk_id)
        if damage is not None:
            return (f"{what} is lost ({damage['problem']}): import the original files again, "
                    "or `ckptfs repair --from DIR`, to heal it")
        return f"{what} is not in the index (lost with a damaged pack?)"

    def read_chunk(self, chunk_id: bytes, cache: bool = True) -> bytes:
        """The raw bytes of a chunk; checked (xxh3) on the way, never wrong.

        `cache=False` for one-off reads (ingest's delta bases, verify), which would only
        push out chunks a reader is walking through."""
        data = self._decoded_already(chunk_id)
        return data if data is not None else self._load_chunk(chunk_id, cache)

    def _decoded_already(self, chunk_id: bytes):
        """The chunk's bytes if the cache has them or a prefetch is decoding them (waited
        for), else None."""
        data = self._cache.get(chunk_id)
        if data is not None:
            return data
        pending = self._inflight.get(chunk_id)
        if pending is not None:
            try:
                return pending.result()
            except IntegrityError:
                pass  # decode it again, so the error is raised in this reader's context
        return None

    def prefetch(self, entry: dict, offset: int, window: int = 4 << 20):
        """Start decoding the chunks of `entry` in [offset, offset + window) on background
        threads, so a sequential reader finds them decoded (the mount's read-ahead)."""
        offsets = self._chunk_offsets(entry)
        first = max(0, bisect.bisect_right(offsets, offset) - 1)
        wanted = []
        for index in range(first, len(entry["chunks"])):
            if offsets[index] >= offset + window:
                break
            chunk_id = bytes.fromhex(entry["chunks"][index][0])
            if chunk_id not in self._inflight and self._cache.get(chunk_id) is None:
                wanted.append(chunk_id)
        if not wanted:
            return
        with self._inflight_lock:
            if self._prefetcher is None:
                self._prefetcher = ThreadPoolExecutor(2, thread_name_prefix="ckptfs-prefetch")
            # First in the queue: start the disk reads of the whole window at once,
            # however many decoders there are (and off the caller's thread).
            self._prefetcher.submit(self._will_need, wanted)
            for chunk_id in wanted:
                if chunk_id not in self._inflight:
                    self._inflight[chunk_id] = self._prefetcher.submit(self._prefetch_one, chunk_id)

    def _will_need(self, chunk_ids: list[bytes]):
        with self.index.read() as txn:
            locations = [self.index.get_chunk(txn, chunk_id) for chunk_id in chunk_ids]
        for loc in locations:
            if loc is not None:
                self.packs.will_need(loc.pack_id, loc.offset, loc.length)

    def _prefetch_one(self, chunk_id: bytes) -> bytes:
        try:
            return self._load_chunk(chunk_id, cache=True)
        finally:
            with self._inflight_lock:
                self._inflight.pop(chunk_id, None)

    @staticmethod
    def _chunk_offsets(entry: dict) -> list[int]:
        """File offset of each chunk of a file entry (kept on the entry: entries are
        immutable, and a big file has thousands of chunks)."""
        offsets = entry.get("_offsets")
        if offsets is None:
            offsets, pos = [], 0
            for _chunk, length in entry["chunks"]:
                offsets.append(pos)
                pos += length
            entry["_offsets"] = offsets
        return offsets

    def _load_chunk(self, chunk_id: bytes, cache: bool) -> bytes:
        try:
            return self._decode_record(chunk_id, self._read_record(chunk_id), cache)
        except IntegrityError as e:
            # Known from now on: no ingest deduplicates against it (docs/recovery.md).
            self.note_damaged_chunk(e.chunk_id or chunk_id, str(e))
            raise

    def _decode_record(self, chunk_id: bytes, record, cache: bool) -> bytes:
        base = None
        if record.codec == codecs.XOR_DELTA:
            # Outside the try below: damage in the base is the base's pack's, not ours.
            base = self._read_delta_base(codecs.delta_base_id(record.codec, record.payload))
        try:
            data = codecs.decode(record.codec, record.payload, record.raw_len,
                                 load_base=lambda _id: base)
        except IntegrityError as e:
            loc = self.index_location(chunk_id)
            raise IntegrityError(f"pack {loc.pack_id:08x}: chunk {chunk_id.hex()[:16]}: {e}",
                                 pack_id=loc.pack_id, chunk_id=chunk_id) from None
        if cache:
            self._cache.put(chunk_id, data)
        return data

    def _read_delta_base(self, base_id: bytes) -> bytes:
        data = self._decoded_already(base_id)
        if data is not None:
            return data
        # Decoded from the record read here (not by read_chunk: it would read and decrypt
        # the record a second time).
        record = self._read_record(base_id)
        if record.codec == codecs.XOR_DELTA:
            raise IntegrityError(f"delta base {base_id.hex()[:16]} is itself a delta")
        return self._decode_record(base_id, record, cache=True)

    def index_location(self, chunk_id: bytes) -> Location | None:
        with self.index.read() as txn:
            return self.index.get_chunk(txn, chunk_id)

    def read_range(self, entry: dict, offset: int, size: int) -> bytes:
        """Up to `size` bytes of a file entry from `offset`."""
        return bytes(self.read_view(entry, offset, size))

    def read_view(self, entry: dict, offset: int, size: int) -> memoryview:
        """`read_range` as a read-only buffer (the mount's reads): a slice of the cached
        chunk when the range lies in one, else a new buffer copied without the GIL."""
        return self._assemble(entry, offset, size, self.read_chunk)

    def read_view_cached(self, entry: dict, offset: int, size: int) -> memoryview | None:
        """Like `read_view` if every chunk it needs is decoded in the cache already (no
        I/O, no decoding: cheap enough for the mount's event loop), else None."""
        try:
            return self._assemble(entry, offset, size, self._cached_or_raise)
        except KeyError:
            return None

    def _cached_or_raise(self, chunk_id: bytes) -> bytes:
        data = self._cache.get(chunk_id)
        if data is None:
            raise KeyError(chunk_id)
        return data

    def _assemble(self, entry: dict, offset: int, size: int, load) -> bytes:
        out = []
        end = min(entry["size"], offset + size)
        offsets = self._chunk_offsets(entry)
        index = max(0, bisect.bisect_right(offsets, offset) - 1)
        while index < len(offsets) and offsets[index] < end:
            pos = offsets[index]
            data = memoryview(load(bytes.fromhex(entry["chunks"][index][0])))
            out.append(data[max(0, offset - pos):end - pos])
            index += 1
        if len(out) == 1:
            return out[0]
        # numpy copies large buffers with the GIL released; bytes.join of memoryviews
        # would hold it, and the decoders on the other threads need it.
        joined = np.empty(sum(len(part) for part in out), dtype=np.uint8)
        pos = 0
        for part in out:
            joined[pos:pos + len(part)] = np.frombuffer(part, dtype=np.uint8)
            pos += len(part)
        return joined.data

    def iter_file(self, entry: dict, pool: ThreadPoolExecutor | None = None):
        """Yield a file's bytes chunk by chunk, decoding a few chunks ahead on `pool`."""
        ids = [bytes.fromhex(c) for c, _ in entry["chunks"]]
        if pool is None:
            for chunk_id in ids:
                yield self.read_chunk(chunk_id)
            return
        ahead = []
        for chunk_id in ids:
            ahead.append(pool.submit(self.read_chunk, chunk_id))
            if len(ahead) > READ_AHEAD_CHUNKS:
                yield ahead.pop(0).result()
        for future in ahead:
            yield future.result()

    def iter_file_checked(self, entry: dict, pool: ThreadPoolExecutor | None = None,
                          hasher: ThreadPoolExecutor | None = None):
        """`iter_file`, hashing the bytes as they go by: after the last chunk, raises
        IntegrityError if the file's SHA-256 is not the one its entry (and sidecar)
        records. A reader that stops early has checked nothing. With `hasher` (one
        thread), the hashing overlaps the caller's use of the bytes."""
        sha = hashlib.sha256()
        pending = deque()
        for data in self.iter_file(entry, pool):
            if hasher is None:
                sha.update(data)
            else:
                pending.append(hasher.submit(sha.update, data))
                while len(pending) > 16:
                    pending.popleft().result()
            yield data
        for future in pending:
            future.result()
        if sha.hexdigest() != entry["sha256"]:
            raise IntegrityError(f"{entry['path']}: SHA-256 does not match the sidecar")

    # -- restore ------------------------------------------------------------------------
    def select_entries(self, project, run, version, patterns=None) -> list[dict]:
        """Entries of a version, or only files/symlinks matching any glob (and their dirs)."""
        entries = self.walk(project, run, version)
        if not patterns:
            return entries
        chosen = set()
        for pattern in patterns:
            hits = [e["path"] for e in entries if e["type"] != "dir"
                    and (fnmatch.fnmatchcase(e["path"], pattern)
                         or fnmatch.fnmatchcase(e["path"].rsplit("/", 1)[-1], pattern))]
            if not hits:
                raise NotFoundError(f"no file of {version_name(project, run, version)} "
                                    f"matches {pattern!r}")
            chosen.update(hits)
        parents = {p.rsplit("/", 1)[0] for p in chosen if "/" in p}
        for p in list(parents):
            while "/" in p:
                p = p.rsplit("/", 1)[0]
                parents.add(p)
        return [e for e in entries if e["path"] in chosen or e["path"] in parents]

    def restore(self, project, run, version, dest, patterns=None, progress=None,
                force: bool = False) -> RestoreReport:
        """Write a version (or the files matching `patterns`) into `dest`, a new or empty
        directory (with `force`, one whose files of the version's paths are replaced),
        checking every file's SHA-256; a file that fails is not written and is reported,
        the rest is restored. Never follows a symlink below `dest`, never leaves a partial
        file under a real name, keeps sparse files sparse (store/restore.py)."""
        self.require_version(project, run, version)
        entries = self.select_entries(project, run, version, patterns)
        return restore_entries(self, entries, dest, force, progress)

    # -- stats and verify ---------------------------------------------------------------
    def stats(self) -> dict:
        versions = self.all_versions()
        with self.index.read() as txn:
            chunks = self.index.get_int(txn, b"chunk_count")
            unique_raw = self.index.get_int(txn, b"chunk_raw_bytes")
            stored = self.index.get_int(txn, b"chunk_stored_bytes")
        sizes = pack_sizes(self.backend)
        pack_ids, pack_bytes = list(sizes), sum(sizes.values())
        logical = sum(v["logical_bytes"] for v in versions)
        return {
            "projects": len({v["project"] for v in versions}),
            "runs": len({(v["project"], v["run"]) for v in versions}),
            "versions": len(versions),
            "deleted_versions": self.deleted_count(),
            "files": sum(v["files"] for v in versions),
            "logical_bytes": logical,
            "chunks": chunks,
            "unique_bytes": unique_raw,
            "stored_bytes": stored,
            "packs": len(pack_ids),
            "pack_bytes": pack_bytes,
            "dedup_ratio": logical / unique_raw if unique_raw else 1.0,
            "compression_ratio": unique_raw / stored if stored else 1.0,
            "total_ratio": logical / pack_bytes if pack_bytes else 1.0,
        }

    def verify(self, progress=None, signatures: bool = False,
               trusted_keys: list | None = None, record: bool = True) -> VerifyReport:
        """Re-read every pack record, re-check every chunk id and every file's SHA-256.

        With `signatures`, also check each version's signature against the digest of its
        files as recomputed here, with the journaled public key its key id names, or
        with `trusted_keys` (Ed25519 public keys from outside the store) when given.
        With `record`, what it finds damaged (and what it finds healed) is written to the
        index: no ingest deduplicates against a damaged chunk, ls and get say so."""
        report = VerifyReport()
        if signatures:
            report.signatures = SignatureReport()
            known_keys = self.signing_state()["keys"]
        with self.index.read() as txn:
            located = {record_id: loc for db in (self.index.chunks, self.index.manifests)
                       for record_id, loc in self.index.iter_locations(txn, db)}
            chunk_ids = [chunk_id for chunk_id, _loc in self.index.iter_locations(txn, self.index.chunks)]
        referenced = {loc.pack_id for loc in located.values()}
        in_use: dict[int, list[Location]] = {}
        for loc in located.values():
            in_use.setdefault(loc.pack_id, []).append(loc)
        for pack_id in list_pack_ids(self.backend):
            scan = scan_pack(self.backend, pack_id)
            report.packs += 1
            self._judge_pack_scan(scan, in_use.get(pack_id, []), report)
        for pack_id in referenced - set(list_pack_ids(self.backend)):
            report.damaged_packs[pack_id] = [f"pack {pack_id:08x} is missing"]
        self._cache = _ChunkCache(CACHE_BYTES)  # verify what is on disk, not what is cached
        with ThreadPoolExecutor(2, thread_name_prefix="ckptfs-verify") as pool:
            for chunk_id, problem in zip(chunk_ids, pool.map(self._check_chunk, chunk_ids)):
                report.chunks += 1
                if problem:
                    message, pack_id = problem
                    report.damaged_chunks[chunk_id.hex()] = message
                    report.damaged_packs.setdefault(pack_id, []).append(message)
                if progress:
                    progress("chunks", report.chunks, len(chunk_ids))
            self._cache = _ChunkCache(CACHE_BYTES)
            for version in self.all_versions():
                digest = self._verify_version(version, report, pool, progress)
                if signatures:
                    self.check_version_signature(version, digest, known_keys, trusted_keys,
                                                 report.signatures)
        self._verify_tombstones(report)
        self._report_lost_versions(report)
        report.gc_interrupted = load_intent(self.backend) is not None
        if record:
            self.record_verify_findings(report, chunk_ids)
        return report

    @staticmethod
    def _judge_pack_scan(scan, in_use: list, report: VerifyReport) -> None:
        """Damage in a pack counts when a record in use is hit; damage only in records
        nothing uses any more (healed, or left by an interrupted import) is a note."""
        used_offsets = {loc.offset for loc in in_use}
        live = [m for m, at in zip(scan.damage, scan.damaged_at) if at in used_offsets]
        dead = [m for m, at in zip(scan.damage, scan.damaged_at) if at not in used_offsets]
        if not scan.complete and in_use:
            message = f"pack {scan.pack_id:08x} ends early: {scan.tail}"
            cut = any(loc.offset + loc.length > scan.scanned_to for loc in in_use)
            (live if cut else dead).append(message)
        elif not scan.complete:
            report.leftover_packs.append(scan.pack_id)
        if live:
            report.damaged_packs[scan.pack_id] = live
        if dead:
            report.dead_damage[scan.pack_id] = dead

    def _report_lost_versions(self, report: VerifyReport) -> None:
        """Versions whose file list was lost (rebuild-index found their manifest gone)."""
        for damage in self.version_damage():
            if damage.get("manifest"):
                name = version_name(damage["project"], damage["run"], damage["version"])
                report.damaged_versions.add(name)
                report.damaged_files.append((name, "(file list)", damage["manifest"]))

    def _verify_tombstones(self, report: VerifyReport):
        """A deleted version's data may be gone, but its manifest (its file list and
        SHA-256s, what its tombstone shows) must stay readable."""
        for tomb in self.tombstones():
            report.deleted_versions += 1
            record = tomb["record"]
            try:
                self.read_manifest(bytes.fromhex(record["manifest"]))
            except (IntegrityError, ValueError) as e:
                name = version_name(record["project"], record["run"], record["version"])
                report.damaged_versions.add(f"{name} (deleted)")
                report.damaged_files.append((name, "(manifest)", str(e)))

    def _check_chunk(self, chunk_id: bytes) -> tuple[str, int] | None:
        """None if the chunk reads back as the bytes its id names, else (problem, the pack
        at fault: for a delta whose base is damaged, the base's pack)."""
        own_pack = self.index_location(chunk_id).pack_id
        try:
            data = self.read_chunk(chunk_id)
        except IntegrityError as e:
            return str(e), e.pack_id if e.pack_id is not None else own_pack
        if self.chunk_id(data) != chunk_id:
            return f"pack {own_pack:08x}: chunk {chunk_id.hex()[:16]} does not match its id", own_pack
        return None

    def _verify_version(self, record, report, pool, progress) -> str:
        """Check a version's entries and files; returns the digest of its entries."""
        p, r, v = record["project"], record["run"], record["version"]
        name = version_name(p, r, v)
        report.versions += 1
        entries = self.walk(p, r, v)
        digest = version_digest(entries)
        if digest != record["digest"]:
            report.damaged_versions.add(name)
        for entry in entries:
            if entry["type"] != "file":
                continue
            report.files += 1
            bad = [c for c, _ in entry["chunks"] if c in report.damaged_chunks]
            if bad:
                report.damaged_files.append((name, entry["path"], f"{len(bad)} damaged chunk(s)"))
                report.damaged_versions.add(name)
                continue
            sha = hashlib.sha256()
            try:
                for data in self.iter_file(entry, pool):
                    sha.update(data)
            except IntegrityError as e:
                report.damaged_files.append((name, entry["path"], str(e)))
                report.damaged_versions.add(name)
                continue
            report.bytes += entry["size"]
            if sha.hexdigest() != entry["sha256"]:
                report.damaged_files.append((name, entry["path"], "SHA-256 mismatch"))
                report.damaged_versions.add(name)
            if progress:
                progress("files", report.files, None)
        return digest
