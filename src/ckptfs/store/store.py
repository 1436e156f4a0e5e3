"""The Store: the engine's public API. No FUSE here; the CLI and the daemon sit on top.

    store = Store.init("/data/ckpts")            # or Store.open(path)
    report = store.import_directory(src, "proj", "run-1", "step-100")
    store.restore("proj", "run-1", "step-100", "/tmp/out")

`Store` is a façade: opening a store opens its parts, each given its collaborators in
its constructor (`_open_parts`), and its methods are theirs:

    committer  commit.py    the journal and the index: every change, catch-up after a crash
    reader     reader.py    every read of stored bytes: locate, decrypt, decode, cache
    access     access.py    roles: checks, refusals, grants
    signing    signing.py   the signing key and signatures
    catalog    catalog.py   versions, documents, aliases, settings, tombstones; `commit`
    retention  deletion.py  retention policies and deletions
    collector  gc.py        garbage collection
    verifier   verify.py    verify
    repairer   repair.py    repair
    rebuilder  rebuild.py   the chunk id key check, an old index's upgrade, rebuild-index
    deltas     deltas.py    the delta bases an ingest codes tensors against

The write path goes one way: `import_directory` makes an Ingest (ingest.py), which
prepares the version (files -> chunks -> its own packs) and hands a PreparedVersion to
`catalog.commit` (manifest, journal, index). A restore (restore.py) reads through the
reader.
"""
import os
import time
from datetime import datetime, timezone

import blake3

from .access import AccessControl
from .backend import Backend, BackendUnavailableError, LocalBackend, ObjectMissingError
from .catalog import Catalog, version_name
from .commit import Committer
from .config import CONFIG_NAME, EncryptionSettings, StoreConfig
from .deletion import Retention
from .deltas import DeltaBases
from .encryption import RecordCipher, key_check, obtain_key_file, open_store_key
from .errors import ChunksReclaimedError, StoreError, StoreFormatError
from .gc import GarbageCollector
from .index import Index
from .ingest import Ingest, IngestReport
from .journal import Journal
from .location import bind_cache, is_object_store, load_settings, open_backend, store_id
from .pack import PackReader, pack_name, pack_sizes, random_pack_id, scan_pack
from .packsink import PackSinks
from .private import PRIVATE_DIR, make_private_dirs
from .reader import ChunkReader
from .rebuild import IndexRebuilder, OpenLock
from .repair import Repair
from .replay import PackRecords
from .restore import RestoreReport, restore_entries, select_entries
from .signing import Signing
from .verify import Verifier, VerifyReport

SUBDIRS = ("packs", "index", "journal", "spool")

__all__ = ["RestoreReport", "Store", "VerifyReport", "version_name"]


class delegate:
    """A Store method that is one of a part's: `aliases = delegate("catalog")` makes
    `store.aliases(...)` call `store.catalog.aliases(...)`."""

    def __init__(self, part: str):
        self.part = part

    def __set_name__(self, owner, name: str):
        self.name = name

    def __get__(self, store, owner=None):
        if store is None:
            return self
        return getattr(getattr(store, self.part), self.name)


class Store:
    def __init__(self, path: str, config: StoreConfig, cipher: RecordCipher | None = None,
                 for_rebuild: bool = False, backend: Backend | None = None):
        self.path = path  # this machine's state: the store's directory, or its cache dir
        self.backend = backend or LocalBackend(path)  # packs, journal, settings
        self.location = self.backend.location  # the store, as users name it
        self.config = config
        # First: without its key an encrypted store is refused before anything is opened.
        if cipher is None and config.encryption is not None:
            cipher = open_store_key(self.location, config.encryption.key_file,
                                    config.encryption.key_check)
        self.cipher = cipher
        self.spool_dir = os.path.join(path, "spool")
        self._key = config.chunk_id_key
        self._open_lock = OpenLock(path)
        self.index_moved_aside = None  # where a damaged index went (rebuild-index)
        try:
            if for_rebuild:
                self._open_lock.take_exclusively()
            self.index = self._open_index(for_rebuild)
        except BaseException:
            self._open_lock.close()
            raise
        self.journal = Journal(self.backend.journal())
        self.packs = PackReader(self.backend)
        self._open_parts()
        if for_rebuild:
            return  # rebuild_index checks the key and replays everything itself
        try:
            self.rebuilder.check_chunk_key()  # first: with a wrong key, a replay would see only damage
            self.rebuilder.upgrade_if_old()
            self.committer.catch_up_if_behind()
        except BaseException:
            self.close()
            raise

    def _open_parts(self) -> None:
        """Each part, given what it works with (and nothing else)."""
        self.reader = ChunkReader(self.index, self.packs, self.chunk_id, self.cipher, self.location)
        self.committer = Committer(self.index, self.journal,
                                   PackRecords(self.backend, self.reader, scan=True,
                                               journal=self.journal))
        if self.backend.shared:  # a pack gone: another machine's gc deleted it (gc.py)
            self.reader.catch_up = self.committer.catch_up_for_reader
        self.access = AccessControl(self.index, self.committer, self.location)
        self.signing = Signing(self.index, self.committer, self.access, self.config, self.path,
                              self.backend)
        self.catalog = Catalog(self.index, self.committer, self.access, self.signing,
                               self.chunk_id)
        self.retention = Retention(self.index, self.committer, self.catalog, self.access,
                                   self.reader.read_manifest)
        self.collector = GarbageCollector(self.path, self.config, self.index, self.committer,
                                          self.backend, self.packs, self.reader, self.catalog,
                                          self.retention, self.allocate_pack_id)
        self.verifier = Verifier(self.path, self.index, self.backend, self.reader,
                                 self.catalog, self.signing)
        self.pack_sinks = PackSinks(self.backend, self.allocate_pack_id, self.cipher,
                                    self.config.packs.target_size)
        self.repairer = Repair(self.path, self.config, self.index, self.committer,
                               self.backend, self.packs, self.reader, self.verifier,
                               self.pack_sinks)
        self.deltas = DeltaBases(self.catalog, self.reader, self.config)
        self.rebuilder = IndexRebuilder(self.path, self._key, self.backend.describe(CONFIG_NAME),
                                        self.index, self.journal, self.committer,
                                        self.backend, self.reader, self._open_lock)

    # -- lifecycle --------------------------------------------------------------------
    @classmethod
    def init(cls, path: str, shared: bool = False, key_file: str | None = None,
             cache_dir: str | None = None) -> "Store":
        """A new store in `path` (a directory, or `s3://BUCKET/PREFIX` with this
        machine's state in `cache_dir`, location.py); its creator is its admin.
        `shared`: roles are enforced, and the directory is private to its owner (others
        come in through the mount). With `key_file`, an encrypted store whose key is in
        that file (read if it exists, else created with a new random key)."""
        encryption = cipher = None
        if key_file is not None:
            key_path, key = obtain_key_file(key_file)
            encryption = EncryptionSettings(key_file=key_path, key_check=key_check(key))
            cipher = RecordCipher(key)  # this key, whatever CKPTFS_KEY_FILE names
        config = StoreConfig.new(encryption)
        if is_object_store(path):
            path, backend = cls._init_object_store(path, cache_dir, config)
        else:
            path, backend = cls._init_directory(path)
        config.save(backend)
        store = cls(path, config, cipher, backend=backend)
        try:
            store.access.start(shared)
        except BaseException:
            store.close()
            raise
        return store

    @staticmethod
    def _init_directory(path: str) -> tuple[str, Backend]:
        path = os.path.abspath(path)
        if os.path.exists(os.path.join(path, CONFIG_NAME)):
            raise StoreError(f"{path} is already a ckptfs store")
        if os.path.isdir(path) and os.listdir(path):
            raise StoreError(f"{path} exists and is not empty: choose a new or empty directory")
        if os.path.exists(path) and not os.path.isdir(path):
            raise StoreError(f"{path} exists and is not a directory")
        # Private, shared or not: the store holds every version's data and sidecars, and
        # others come in through the mount (docs/format.md, "Permissions").
        make_private_dirs(path)
        os.chmod(path, PRIVATE_DIR)  # also an empty directory that existed
        for sub in SUBDIRS:
            make_private_dirs(os.path.join(path, sub))
        return path, LocalBackend(path)

    @staticmethod
    def _init_object_store(url: str, cache_dir: str | None,
                           config: StoreConfig) -> tuple[str, Backend]:
        """Check the bucket (reachable, nothing under the prefix, conditional writes
        honoured) and bind this machine's cache directory to the new store."""
        local, backend = open_backend(url, cache_dir)
        try:
            problem = backend.root_problem()
            if problem:
                raise StoreError(f"{url}{problem}")
            if backend.list(""):
                what = "is already a ckptfs store" if backend.list(CONFIG_NAME) else \
                    "is not empty: choose a new prefix"
                raise StoreError(f"{url} {what}")
            problem = backend.probe_conditional_writes()
            if problem:
                raise StoreError(problem)
            bind_cache(local, url, store_id(config.chunk_id_key))
        except BaseException:
            backend.close()
            raise
        return local, backend

    @classmethod
    def open(cls, path: str, for_rebuild: bool = False, cache_dir: str | None = None) -> "Store":
        """Open a store (a directory, or `s3://BUCKET/PREFIX` with this machine's state
        in `cache_dir`). `for_rebuild`: only to rebuild its index (`rebuild_index`): the
        store is taken exclusively, and an index that cannot be opened is moved aside."""
        local, backend = open_backend(path, cache_dir)
        try:
            config = load_settings(backend, local) if is_object_store(path) else \
                StoreConfig.load(backend)
            if backend.shared:
                bind_cache(local, backend.location, store_id(config.chunk_id_key))
            else:
                for sub in ("packs", "journal"):
                    if not os.path.isdir(os.path.join(local, sub)):
                        raise StoreFormatError(
                            f"{local} is damaged: its {sub}/ directory is missing")
            # The index is derived: a missing one is recreated from the journal on open.
            make_private_dirs(os.path.join(local, "index"))
            make_private_dirs(os.path.join(local, "spool"))
            return cls(local, config, for_rebuild=for_rebuild, backend=backend)
        except BaseException:
            backend.close()
            raise

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

    def close(self):
        self.reader.close()
        self.packs.close()
        self.index.close()
        self._open_lock.close()
        self.backend.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def rebuild_index(self) -> dict:
        """Recreate the LMDB index from packs and journal alone (rebuild.py)."""
        return self.rebuilder.rebuild(self.index_moved_aside)

    # -- writing: the one-way path ------------------------------------------------------
    def allocate_pack_id(self) -> int:
        """A new pack's id: the index's counter, or a random one on a shared backend
        (many machines, no counter spans them: pack.random_pack_id)."""
        return random_pack_id() if self.backend.shared else self.index.allocate_pack_id()

    def chunk_id(self, data) -> bytes:
        return blake3.blake3(data, key=self._key).digest()

    def import_directory(self, src: str, project: str, run: str, version: str,
                         progress=None, ingest: Ingest | None = None,
                         token_of=None, metadata: dict | None = None,
                         actor: dict | None = None) -> IngestReport:
        """Archive the directory `src` as PROJECT/RUN/VERSION (atomically).

        `ingest` is one begun earlier with `begin_ingest` whose files were prepared as
        they were written; `token_of` then names each file's prepared result. On any
        error the ingest is aborted: its packs are deleted. `metadata` (JSON-able, made
        by the meta layer) is sealed with the version and becomes its catalog document;
        `actor` is who the journal names for the seal (default: this process).
        """
        if ingest is None:
            self.signing.current_signing_key()  # a signing key that cannot be used: fail before the work
            ingest = self.begin_ingest(project, run, version)
        else:
            try:
                self.catalog.check_new_version(project, run, version)
                self.signing.current_signing_key()
            except BaseException:
                ingest.abort()
                raise
        ingest.progress = progress
        ingest.metadata = metadata or {}
        try:
            return self._seal(ingest, src, token_of, metadata, actor)
        except ChunksReclaimedError:
            # A garbage collection in another process reclaimed chunks this ingest had
            # deduplicated against (the ingest was aborted). Once more from scratch:
            # reading the files again, deduplicating against the index as it is now.
            retry = self.begin_ingest(project, run, version)
            retry.on_new_pack = ingest.on_new_pack
            retry.progress, retry.metadata = progress, metadata or {}
            report = self._seal(retry, src, None, metadata, actor)
            report.retried = True
            return report

    def _seal(self, ingest: Ingest, src: str, token_of, metadata: dict | None,
              actor: dict | None) -> IngestReport:
        """The ingest prepares the version, the catalog commits it."""
        started = time.monotonic()
        with ingest.aborted_on_error():
            prepared = ingest.prepare_version(src, token_of)
            self._check_own_packs_stored(prepared)
            report = self.catalog.commit(prepared, metadata, actor)
        report.seconds = time.monotonic() - started
        return report

    def _check_own_packs_stored(self, prepared) -> None:
        """On a shared store, another machine's gc removes packs nothing references once
        they are older than the grace period: an ingest prepared longer ago than that
        (a mount's prepare-ahead of a very long write) may have lost its own packs. It
        starts over rather than journal a version that names a pack that is gone."""
        if not self.backend.shared:
            return
        uploaded = [w.pack_id for w in prepared.sink.writers if w.closed]  # the last: at commit
        for pack_id in uploaded:
            try:
                self.backend.stat(pack_name(pack_id))
            except ObjectMissingError:
                name = version_name(prepared.project, prepared.run, prepared.version)
                raise ChunksReclaimedError(
                    f"pack {pack_id:08x} of {name} was removed as a leftover (older than "
                    "gc.grace_seconds) before its commit; nothing was committed: import it "
                    "again") from None

    def begin_ingest(self, project: str, run: str, version: str) -> Ingest:
        """An ingest of PROJECT/RUN/VERSION to feed file by file (`Ingest.prepare_file`)
        and finish with `import_directory(..., ingest=...)`, or `abort`."""
        self.catalog.check_new_version(project, run, version)
        return Ingest(project, run, version, chunking=self.config.chunking,
                      compression=self.config.compression, chunk_id=self.chunk_id,
                      is_stored=self._is_stored, deltas=self.deltas, sink=self.pack_sinks(),
                      store_path=self.path)

    def _is_stored(self, chunk_id: bytes) -> bool:
        """Stored and not known to be damaged: an ingest deduplicates only against such a
        chunk, and stores a fresh copy of a damaged one (which heals it)."""
        with self.index.read() as txn:
            return self.index.sound_chunk(txn, chunk_id)

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

    # -- restore ------------------------------------------------------------------------
    def select_entries(self, project, run, version, patterns=None) -> list[dict]:
        """Entries of a version, or only files/symlinks matching any glob (and their dirs)."""
        return select_entries(self.catalog.walk(project, run, version), patterns,
                              version_name(project, run, version))

    def restore(self, project, run, version, dest, patterns=None, progress=None,
                force: bool = False) -> RestoreReport:
        """Write a version (or the files matching `patterns`) into `dest`, a new or empty
        directory (with `force`, one whose files of the version's paths are replaced),
        checking every file's SHA-256; a file that fails is not written and is reported,
        the rest is restored. Never follows a symlink below `dest`, never leaves a partial
        file under a real name, keeps sparse files sparse (store/restore.py)."""
        self.catalog.require_version(project, run, version)
        entries = self.select_entries(project, run, version, patterns)
        return restore_entries(self.reader, entries, dest, force, progress)

    # -- stats --------------------------------------------------------------------------
    def stats(self) -> dict:
        """The store's figures: the index's (`index_stats`) and its packs' on storage."""
        st = self.index_stats()
        try:
            sizes = pack_sizes(self.backend)
        except BackendUnavailableError:
            sizes = None  # the object store is down: the index's figures are still known
        pack_bytes = sum((sizes or {}).values())
        st.update(packs=len(sizes or ()), pack_bytes=pack_bytes,
                  total_ratio=st["logical_bytes"] / pack_bytes if pack_bytes else 1.0)
        return st

    def index_stats(self) -> dict:
        """The figures the index alone knows, without listing the packs (a walk of the
        packs' directory, or LIST requests to an object store): the mount's stats.json."""
        versions = self.catalog.all_versions()
        with self.index.read() as txn:
            chunks = self.index.get_int(txn, b"chunk_count")
            unique_raw = self.index.get_int(txn, b"chunk_raw_bytes")
            stored = self.index.get_int(txn, b"chunk_stored_bytes")
        logical = sum(v["logical_bytes"] for v in versions)
        return {
            "projects": len({v["project"] for v in versions}),
            "runs": len({(v["project"], v["run"]) for v in versions}),
            "versions": len(versions),
            "deleted_versions": self.catalog.deleted_count(),
            "files": sum(v["files"] for v in versions),
            "logical_bytes": logical,
            "chunks": chunks,
            "unique_bytes": unique_raw,
            "stored_bytes": stored,
            "dedup_ratio": logical / unique_raw if unique_raw else 1.0,
            "compression_ratio": unique_raw / stored if stored else 1.0,
        }

    # -- the parts' methods ---------------------------------------------------------------
    # the journal
    applied_seq = delegate("committer")
    check_journal = delegate("committer")
    journal_entries = delegate("committer")
    # reading
    read_chunk = delegate("reader")
    read_range = delegate("reader")
    read_view = delegate("reader")
    read_view_cached = delegate("reader")
    prefetch = delegate("reader")
    iter_file = delegate("reader")
    iter_file_checked = delegate("reader")
    read_manifest = delegate("reader")
    index_location = delegate("reader")
    # versions and the catalog
    projects = delegate("catalog")
    runs = delegate("catalog")
    versions = delegate("catalog")
    all_versions = delegate("catalog")
    version_record = delegate("catalog")
    require_version = delegate("catalog")
    check_new_version = delegate("catalog")
    newest_checkpoint = delegate("catalog")
    list_dir = delegate("catalog")
    entry = delegate("catalog")
    walk = delegate("catalog")
    catalog_document = delegate("catalog")
    catalog_documents = delegate("catalog")
    add_catalog_fields = delegate("catalog")
    aliases = delegate("catalog")
    named_version = delegate("catalog")
    set_alias = delegate("catalog")
    remove_alias = delegate("catalog")
    rename_alias = delegate("catalog")
    name_in_run = delegate("catalog")
    project_settings = delegate("catalog")
    update_project_settings = delegate("catalog")
    project_schema = delegate("catalog")
    set_project_schema = delegate("catalog")
    tombstone = delegate("catalog")
    tombstones = delegate("catalog")
    tombstone_document = delegate("catalog")
    deleted_count = delegate("catalog")
    deleted_projects = delegate("catalog")
    deleted_runs = delegate("catalog")
    deleted_error = delegate("catalog")
    check_name_not_deleted = delegate("catalog")
    version_damage = delegate("catalog")
    raise_if_lost = delegate("catalog")
    # access
    access_rules = delegate("access")
    access_grants = delegate("access")
    enforcing = delegate("access")
    role_of = delegate("access")
    allowed = delegate("access")
    readable_projects = delegate("access")
    entry_visible = delegate("access")
    check_access = delegate("access")
    record_refusal = delegate("access")
    authorize = delegate("access")
    grant = delegate("access")
    revoke = delegate("access")
    set_enforcement = delegate("access")
    # signing
    signing_state = delegate("signing")
    signing_key_file = delegate("signing")
    generate_signing_key = delegate("signing")
    set_signing_key = delegate("signing")
    unset_signing_key = delegate("signing")
    current_signing_key = delegate("signing")
    # retention, deletion, garbage collection
    retention_policies = delegate("retention")
    retention_policy = delegate("retention")
    effective_retention = delegate("retention")
    set_retention_policy = delegate("retention")
    clear_retention_policy = delegate("retention")
    plan_retention = delegate("retention")
    apply_retention = delegate("retention")
    delete_version = delegate("retention")
    tombstone_entries = delegate("retention")

    def collect_garbage(self, dry_run: bool = False, now: datetime | None = None,
                        actor: dict | None = None, progress=None):
        return self.collector.collect(dry_run, now, actor, progress)

    # damage
    verify = delegate("verifier")
    repair = delegate("repairer")
