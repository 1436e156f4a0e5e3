"""The LMDB index (`STORE/index/`): derived from packs and journal, rebuildable from them.

Sub-databases (docs/format.md):
    meta       b"format", b"journal_seq", b"journal_head" (hash of that entry),
               b"next_pack_id", chunk counters
    chunks     chunk id (32 bytes) -> location: pack u32, offset u64, length u32, raw u32
    manifests  manifest id -> location (same encoding)
    versions   b"project/run/version" -> version record (JSON)
    entries    b"project/run/version" NUL dir NUL name -> entry (JSON)
    search     b"project/run/version" -> the version's catalog document (JSON): identity,
               storage figures and its sidecar's metadata, all but the file list
    columns    field NUL bucket (u32 big-endian) -> {"project/run/version": value of that
               field} for the versions whose journal seq is in the bucket (BUCKET_SEQS
               seqs each). The same documents stored by field, so `find` parses only the
               fields its expression names, in a few large JSON objects: over 100,000
               versions, parsing whole documents one by one takes seconds. The objects
               in SPLIT_FIELDS are stored one member per field ("lineage.data", …)
    aliases    b"project/run" NUL alias -> version name
    settings   b"project" NUL kind -> JSON (kind "settings": primary metric and other
               project settings; kind "schema": the project's JSON Schema; kind
               "retention": the retention policy, also under b"project/run" NUL kind)
    deleted    b"project/run/version" -> tombstone of a deleted version (JSON): its
               version record and catalog document as they were, when, why, by whom
    damaged_chunks    chunk id -> {"problem", "lost"} (JSON): a chunk found damaged by a
               read, verify or repair; never deduplicated against (an ingest stores a
               fresh copy, which heals it). "lost": repair dropped its record
    damaged_versions  b"project/run/version" -> {"project", "run", "version", "files":
               {path: problem}, "manifest": problem or null, "seq"} (JSON): what verify,
               rebuild-index or repair found damaged in a version ("manifest": its file
               list itself was lost; the version is then not in `versions`)

Names never contain "/" or NUL, so these keys are unambiguous and sort by component.
"""
import json
import os
import struct
from contextlib import contextmanager
from typing import NamedTuple

import lmdb
import orjson

from .errors import StoreError, StoreFullError
from .private import file_mode_in

INDEX_FORMAT = 2   # 2: search, columns, aliases and settings sub-databases
LOCATION = struct.Struct("<IQII")
MAP_SIZE = 1 << 40  # address space only; the file grows as data arrives
COUNTERS = (b"chunk_count", b"chunk_raw_bytes", b"chunk_stored_bytes")
SPLIT_FIELDS = ("lineage", "storage", "sealed_by", "extracted", "scan")
BUCKET_SEQS = 256
BUCKET = struct.Struct(">I")


class Location(NamedTuple):
    pack_id: int
    offset: int
    length: int
    raw_len: int

    def encode(self) -> bytes:
        return LOCATION.pack(*self)

    @classmethod
    def decode(cls, value: bytes) -> "Location":
        return cls(*LOCATION.unpack(value))


def fs_bytes(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def fs_str(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def version_key(project: str, run: str, version: str) -> bytes:
    return fs_bytes(f"{project}/{run}/{version}")


def entry_key(vkey: bytes, path: str) -> bytes:
    """Key of the entry at `path` (relative, '/'-separated) inside a version."""
    parent, _, name = path.rpartition("/")
    return vkey + b"\0" + fs_bytes(parent) + b"\0" + fs_bytes(name)


def _map_lmdb_error(e: lmdb.Error, path: str) -> StoreError:
    """A user-facing error for a failed index write.

    LMDB reports a write cut short by a full disk as EIO, so the free space decides."""
    st = os.statvfs(path)
    nearly_full = st.f_bavail * st.f_frsize < 16 << 20
    if isinstance(e, lmdb.MapFullError) or "No space left" in str(e) or nearly_full:
        return StoreFullError(f"no space left on the store's disk while updating the index "
                              f"({e}); nothing was committed: free some space and retry")
    return StoreError(f"the index update failed: {e}; nothing was committed")


class Index:
    def __init__(self, path: str, readonly: bool = False):
        self.path = path
        self._open(readonly)

    def reopen(self) -> None:
        """Open the index at its path again, after `close`: the directory there was
        replaced by a new index (rebuild-index). Parts holding this object keep it."""
        self._open(readonly=False)

    def _open(self, readonly: bool) -> None:
        path = self.path
        try:
            # As bytes: py-lmdb encodes a str path as UTF-8, which a path with other
            # bytes (valid on Linux) is not.
            self.env = lmdb.open(os.fsencode(path), map_size=MAP_SIZE, max_dbs=16, subdir=True,
                                 readonly=readonly, max_readers=256, lock=True,
                                 mode=file_mode_in(path))
        except lmdb.Error as e:
            raise StoreError(f"cannot open the index {path}: {e} (if it is damaged, "
                             "`ckptfs rebuild-index` recreates it from packs and journal)") from None
        self.meta = self.env.open_db(b"meta", create=not readonly)
        self.chunks = self.env.open_db(b"chunks", create=not readonly)
        self.manifests = self.env.open_db(b"manifests", create=not readonly)
        self.versions = self.env.open_db(b"versions", create=not readonly)
        self.entries = self.env.open_db(b"entries", create=not readonly)
        self.search = self.env.open_db(b"search", create=not readonly)
        self.columns = self.env.open_db(b"columns", create=not readonly)
        self.aliases = self.env.open_db(b"aliases", create=not readonly)
        self.settings = self.env.open_db(b"settings", create=not readonly)
        self.deleted = self.env.open_db(b"deleted", create=not readonly)
        self.damaged_chunks = self.env.open_db(b"damaged_chunks", create=not readonly)
        self.damaged_versions = self.env.open_db(b"damaged_versions", create=not readonly)
        self._column_batch: dict | None = None  # see batched_columns

    def close(self):
        self.env.close()

    def read(self):
        return self.env.begin(buffers=False)

    def write(self):
        return self.env.begin(write=True)

    def commit(self, apply):
        """Run `apply(txn)` in one write transaction; map disk-full errors."""
        try:
            with self.write() as txn:
                return apply(txn)
        except lmdb.Error as e:
            raise _map_lmdb_error(e, self.path) from e

    # -- meta -------------------------------------------------------------------------
    def get_int(self, txn, key: bytes, default: int = 0) -> int:
        value = txn.get(key, db=self.meta)
        return int(value) if value is not None else default

    def put_int(self, txn, key: bytes, value: int) -> None:
        txn.put(key, str(value).encode(), db=self.meta)

    def add_int(self, txn, key: bytes, delta: int) -> None:
        self.put_int(txn, key, self.get_int(txn, key) + delta)

    def get_meta(self, txn, key: bytes) -> bytes | None:
        value = txn.get(key, db=self.meta)
        return None if value is None else bytes(value)

    def put_meta(self, txn, key: bytes, value: bytes) -> None:
        txn.put(key, value, db=self.meta)

    def set_applied(self, txn, seq: int, entry_hash: str) -> None:
        """The index reflects the journal up to entry `seq`, whose line hashes to
        `entry_hash` (kept so `audit verify` can tell an altered last entry)."""
        self.put_int(txn, b"journal_seq", seq)
        txn.put(b"journal_head", entry_hash.encode(), db=self.meta)

    def applied(self, txn) -> tuple[int, str | None]:
        head = txn.get(b"journal_head", db=self.meta)
        return self.get_int(txn, b"journal_seq"), head.decode() if head else None

    def allocate_pack_id(self) -> int:
        def apply(txn):
            pack_id = self.get_int(txn, b"next_pack_id", 1)
            self.put_int(txn, b"next_pack_id", pack_id + 1)
            return pack_id
        return self.commit(apply)

    # -- damage knowledge (docs/recovery.md) ----------------------------------------------
    def chunk_damage(self, txn, chunk_id: bytes) -> dict | None:
        value = txn.get(chunk_id, db=self.damaged_chunks)
        return orjson.loads(value) if value is not None else None

    def mark_chunk_damaged(self, txn, chunk_id: bytes, problem: str, lost: bool = False) -> None:
        txn.put(chunk_id, orjson.dumps({"problem": problem, "lost": lost}), db=self.damaged_chunks)

    def clear_chunk_damage(self, txn, chunk_id: bytes) -> None:
        txn.delete(chunk_id, db=self.damaged_chunks)

    def iter_chunk_damage(self, txn):
        for key, value in txn.cursor(db=self.damaged_chunks):
            yield bytes(key), orjson.loads(value)

    def sound_chunk(self, txn, chunk_id: bytes) -> bool:
        """Stored, and not known to be damaged: what an ingest may deduplicate against."""
        return self.get_chunk(txn, chunk_id) is not None and \
            txn.get(chunk_id, db=self.damaged_chunks) is None

    def put_version_damage(self, txn, vkey: bytes, damage: dict | None) -> None:
        if damage is None:
            txn.delete(vkey, db=self.damaged_versions)
        else:
            txn.put(vkey, orjson.dumps(damage, option=orjson.OPT_SORT_KEYS), db=self.damaged_versions)

    def version_damage(self, txn, vkey: bytes) -> dict | None:
        value = txn.get(vkey, db=self.damaged_versions)
        return orjson.loads(value) if value is not None else None

    def iter_version_damage(self, txn, prefix: bytes = b""):
        for _key, value in self._prefix_scan(txn, self.damaged_versions, prefix):
            yield orjson.loads(value)

    def replace_chunk(self, txn, chunk_id: bytes, loc: Location) -> None:
        """Point a chunk at a fresh copy of its record (a damaged one is being healed)."""
        old = self.get_chunk(txn, chunk_id)
        if old is not None:
            self.remove_chunk(txn, chunk_id, old)
        self.add_chunk(txn, chunk_id, loc)
        self.clear_chunk_damage(txn, chunk_id)

    # -- chunks -------------------------------------------------------------------------
    def get_chunk(self, txn, chunk_id: bytes) -> Location | None:
        value = txn.get(chunk_id, db=self.chunks)
        return Location.decode(value) if value is not None else None

    def add_chunk(self, txn, chunk_id: bytes, loc: Location) -> bool:
        """Index a chunk unless it already is; True if it was new (counters updated)."""
        if not txn.put(chunk_id, loc.encode(), db=self.chunks, overwrite=False):
            return False
        self.add_int(txn, b"chunk_count", 1)
        self.add_int(txn, b"chunk_raw_bytes", loc.raw_len)
        self.add_int(txn, b"chunk_stored_bytes", loc.length)
        return True

    def get_manifest(self, txn, manifest_id: bytes) -> Location | None:
        value = txn.get(manifest_id, db=self.manifests)
        return Location.decode(value) if value is not None else None

    def add_manifest(self, txn, manifest_id: bytes, loc: Location) -> None:
        txn.put(manifest_id, loc.encode(), db=self.manifests, overwrite=False)

    def remove_manifest(self, txn, manifest_id: bytes, loc: Location) -> None:
        """Forget a manifest if the index still has it at `loc`."""
        if self.get_manifest(txn, manifest_id) == loc:
            txn.delete(manifest_id, db=self.manifests)

    def remove_chunk(self, txn, chunk_id: bytes, loc: Location) -> bool:
        """Forget a chunk if the index still has it at `loc` (counters updated)."""
        if self.get_chunk(txn, chunk_id) != loc:
            return False
        txn.delete(chunk_id, db=self.chunks)
        self.add_int(txn, b"chunk_count", -1)
        self.add_int(txn, b"chunk_raw_bytes", -loc.raw_len)
        self.add_int(txn, b"chunk_stored_bytes", -loc.length)
        return True

    def move_record(self, txn, db, record_id: bytes, old: Location, new: Location) -> bool:
        """Point a chunk or manifest (`db`) at a copy of its record, if it is still at
        `old`. The copy has the same length, so the counters stay."""
        value = txn.get(record_id, db=db)
        if value is None or Location.decode(value) != old:
            return False
        txn.put(record_id, new.encode(), db=db)
        return True

    def iter_locations(self, txn, db):
        """(id, location) of every chunk or manifest (`db`)."""
        for key, value in txn.cursor(db=db):
            yield bytes(key), Location.decode(value)

    def forget_packs(self, txn, pack_ids: set[int]) -> None:
        """Forget every chunk and manifest whose record lies in one of `pack_ids` (packs
        a garbage collection retired; counters updated). One pass over both databases:
        the index has no way from a pack to its records."""
        for db in (self.chunks, self.manifests):
            doomed = [(bytes(key), Location.decode(value)) for key, value in txn.cursor(db=db)
                      if LOCATION.unpack_from(value)[0] in pack_ids]
            for record_id, loc in doomed:
                if db is self.chunks:
                    self.remove_chunk(txn, record_id, loc)
                else:
                    txn.delete(record_id, db=db)

    # Packs a gc retired and that may still be on the store: {pack id: [journal time of
    # the retiring entry, its seq]} (JSON in meta), until a gc deletes them.
    def retired_packs(self, txn) -> dict[int, tuple[str, int]]:
        value = txn.get(b"retired_packs", db=self.meta)
        return {} if value is None else {int(k): tuple(v) for k, v in orjson.loads(value).items()}

    def put_retired_packs(self, txn, retired: dict[int, tuple[str, int]]) -> None:
        if retired:
            txn.put(b"retired_packs", orjson.dumps({str(k): list(v) for k, v in
                                                    sorted(retired.items())}), db=self.meta)
        else:
            txn.delete(b"retired_packs", db=self.meta)

    def referenced_pack_ids(self, txn) -> set[int]:
        """Every pack some chunk or manifest of the index lies in."""
        return {loc.pack_id for db in (self.chunks, self.manifests)
                for _id, loc in self.iter_locations(txn, db)}

    # -- versions and entries ---------------------------------------------------------
    def get_version(self, txn, project: str, run: str, version: str) -> dict | None:
        value = txn.get(version_key(project, run, version), db=self.versions)
        return json.loads(value) if value is not None else None

    def put_version(self, txn, record: dict, entries: list[dict]) -> None:
        vkey = version_key(record["project"], record["run"], record["version"])
        txn.put(vkey, json.dumps(record, sort_keys=True).encode(), db=self.versions)
        for entry in entries:
            txn.put(entry_key(vkey, entry["path"]), json.dumps(entry, sort_keys=True).encode(),
                    db=self.entries)

    @staticmethod
    def _prefix_scan(txn, db, prefix: bytes):
        """(key, value) of every key starting with `prefix`, in key order."""
        cursor = txn.cursor(db=db)
        if not cursor.set_range(prefix):
            return
        for key, value in cursor:
            if not key.startswith(prefix):
                return
            yield key, value

    def iter_versions(self, txn, prefix: bytes = b""):
        """Version records whose key starts with `prefix`, in key order."""
        for _key, value in self._prefix_scan(txn, self.versions, prefix):
            yield json.loads(value)

    def distinct_components(self, txn, prefix: bytes, db=None) -> list[str]:
        """Distinct next path components of version keys under `prefix` (skip-scan) in
        `versions` (or `db`: `deleted`)."""
        names = []
        cursor = txn.cursor(db=self.versions if db is None else db)
        found = cursor.set_range(prefix)
        while found:
            key = cursor.key()
            if not key.startswith(prefix):
                break
            name = key[len(prefix):].split(b"/", 1)[0]
            names.append(fs_str(name))
            # "/" (0x2f) sorts just before "0" (0x30): jump past every key "name/…".
            found = cursor.set_range(prefix + name + b"0")
        return sorted(names, key=fs_bytes)  # key order puts "a-x/…" before "a/…"

    def delete_version(self, txn, vkey: bytes) -> tuple[dict, dict | None] | None:
        """Remove a version from `versions`, `entries`, `search` and `columns`; returns
        its (record, catalog document), or None if it is not there."""
        value = txn.get(vkey, db=self.versions)
        if value is None:
            return None
        record = json.loads(value)
        doc = self.get_search_doc(txn, vkey)
        txn.delete(vkey, db=self.versions)
        self._delete_prefix(txn, self.entries, vkey + b"\0")
        if doc is not None:
            txn.delete(vkey, db=self.search)
            self._remove_columns(txn, vkey, doc)
        return record, doc

    @staticmethod
    def _delete_prefix(txn, db, prefix: bytes) -> None:
        cursor = txn.cursor(db=db)
        if not cursor.set_range(prefix):
            return
        while cursor.key().startswith(prefix):
            if not cursor.delete():  # deletes and moves to the next key
                return

    def put_tombstone(self, txn, vkey: bytes, tombstone: dict) -> None:
        txn.put(vkey, orjson.dumps(tombstone, option=orjson.OPT_SORT_KEYS), db=self.deleted)

    def get_tombstone(self, txn, vkey: bytes) -> dict | None:
        value = txn.get(vkey, db=self.deleted)
        return orjson.loads(value) if value is not None else None

    def iter_tombstones(self, txn, prefix: bytes = b""):
        """Tombstones of the deleted versions under `prefix`, in key order."""
        for _key, value in self._prefix_scan(txn, self.deleted, prefix):
            yield orjson.loads(value)

    def deleted_count(self, txn) -> int:
        return txn.stat(self.deleted)["entries"]

    def version_count(self, txn) -> int:
        return txn.stat(self.versions)["entries"]

    def iter_file_entries(self, txn, vkey: bytes | None = None):
        """(version key, entry) of every file entry, of one version (`vkey`) or of all."""
        rows = self._prefix_scan(txn, self.entries, vkey + b"\0") if vkey is not None \
            else txn.cursor(db=self.entries)
        for key, value in rows:
            if b'"chunks"' in value:   # cheap test first: dirs and symlinks have none
                entry = orjson.loads(value)
                if entry.get("chunks") is not None:  # a dir or symlink whose name has the word
                    yield bytes(key).split(b"\0", 1)[0], entry

    def iter_chunk_lists(self, txn, vkey: bytes | None = None):
        """(version key, [[chunk id hex, length], …]) of every file entry, of one version
        (`vkey`) or of all: what garbage collection counts as referenced."""
        for key, entry in self.iter_file_entries(txn, vkey):
            yield key, entry["chunks"]

    def get_entry(self, txn, vkey: bytes, path: str) -> dict | None:
        value = txn.get(entry_key(vkey, path), db=self.entries)
        return json.loads(value) if value is not None else None

    def list_entries(self, txn, vkey: bytes, dir_path: str):
        """Entries directly inside `dir_path` ("" for the version's top), in name order."""
        prefix = vkey + b"\0" + fs_bytes(dir_path) + b"\0"
        for _key, value in self._prefix_scan(txn, self.entries, prefix):
            yield json.loads(value)

    # -- catalog documents, aliases, project settings ------------------------------------
    @staticmethod
    def document_columns(doc: dict) -> dict:
        """Column name -> value of a catalog document (see SPLIT_FIELDS)."""
        columns = {}
        for name, value in doc.items():
            if name in SPLIT_FIELDS and isinstance(value, dict) and value and \
                    all("." not in member and "\0" not in member for member in value):
                for member, member_value in value.items():
                    columns[f"{name}.{member}"] = member_value
            else:
                columns[name] = value
        return columns

    def put_search_doc(self, txn, vkey: bytes, doc: dict) -> None:
        self.put_search_docs(txn, [(vkey, doc)])

    def put_search_docs(self, txn, docs: list[tuple[bytes, dict]]) -> None:
        """Store catalog documents: whole, and field by field into their buckets (one
        read-modify-write per bucket and field however many documents it gets)."""
        updates: dict[bytes, dict] = {} if self._column_batch is None else self._column_batch
        for vkey, doc in docs:
            txn.put(vkey, orjson.dumps(doc, option=orjson.OPT_SORT_KEYS), db=self.search)
            bucket = BUCKET.pack(doc["seq"] // BUCKET_SEQS)
            for name, value in self.document_columns(doc).items():
                updates.setdefault(name.encode() + b"\0" + bucket, {})[fs_str(vkey)] = value
        if self._column_batch is None:
            self._write_columns(txn, updates)

    @contextmanager
    def batched_columns(self, txn):
        """Within this, catalog columns are gathered and written once at the end (a
        journal replay: one write per bucket and field, not one per version)."""
        self._column_batch = {}
        try:
            yield
            self._write_columns(txn, self._column_batch)
        finally:
            self._column_batch = None

    def _write_columns(self, txn, updates: dict[bytes, dict]) -> None:
        for key, values in updates.items():
            column = orjson.loads(txn.get(key, b"{}", db=self.columns))
            column.update(values)
            self._put_column(txn, key, column)

    def _put_column(self, txn, key: bytes, column: dict) -> None:
        if not column:  # its last version was deleted
            txn.delete(key, db=self.columns)
            return
        # Sorted: a replay (rebuild-index) must write exactly the same bytes.
        txn.put(key, orjson.dumps(column, option=orjson.OPT_SORT_KEYS), db=self.columns)

    def _remove_columns(self, txn, vkey: bytes, doc: dict) -> None:
        """Take a deleted version's values out of its column buckets (and out of a replay's
        pending batch, where the version may have been sealed a moment ago)."""
        name = fs_str(vkey)
        bucket = BUCKET.pack(doc["seq"] // BUCKET_SEQS)
        for column_name in self.document_columns(doc):
            key = column_name.encode() + b"\0" + bucket
            if self._column_batch is not None and key in self._column_batch:
                self._column_batch[key].pop(name, None)
            value = txn.get(key, db=self.columns)
            if value is not None:
                column = orjson.loads(value)
                if name in column:
                    del column[name]
                    self._put_column(txn, key, column)

    def get_search_doc(self, txn, vkey: bytes) -> dict | None:
        value = txn.get(vkey, db=self.search)
        return orjson.loads(value) if value is not None else None

    def iter_search_docs(self, txn, prefix: bytes = b""):
        """Whole catalog documents of the versions under `prefix`, in key order."""
        for _key, value in self._prefix_scan(txn, self.search, prefix):
            yield orjson.loads(value)

    def column_values(self, txn, name: str, prefix: bytes = b"") -> dict[str, object]:
        """{"project/run/version": value of column `name`} for the versions under
        `prefix` that have it."""
        head = name.encode() + b"\0"
        found: dict[str, object] = {}
        cursor = txn.cursor(db=self.columns)
        if cursor.set_range(head):
            for key, value in cursor:
                if not key.startswith(head):
                    break
                found.update(orjson.loads(value))
        if prefix:
            text = fs_str(prefix)
            found = {k: v for k, v in found.items() if k.startswith(text)}
        return found

    def column_names(self, txn) -> set[str]:
        """Every column name in use (a skip-scan: one seek per name)."""
        names = set()
        cursor = txn.cursor(db=self.columns)
        found = cursor.first()
        while found:
            name = cursor.key().split(b"\0", 1)[0]
            names.add(name.decode())
            found = cursor.set_range(name + b"\1")
        return names

    @staticmethod
    def alias_key(project: str, run: str, alias: str) -> bytes:
        return fs_bytes(f"{project}/{run}") + b"\0" + fs_bytes(alias)

    def set_alias(self, txn, project: str, run: str, alias: str, version: str) -> None:
        txn.put(self.alias_key(project, run, alias), fs_bytes(version), db=self.aliases)

    def delete_alias(self, txn, project: str, run: str, alias: str) -> None:
        txn.delete(self.alias_key(project, run, alias), db=self.aliases)

    def get_alias(self, txn, project: str, run: str, alias: str) -> str | None:
        value = txn.get(self.alias_key(project, run, alias), db=self.aliases)
        return fs_str(value) if value is not None else None

    def iter_aliases(self, txn, prefix: bytes = b""):
        """(project, run, alias, version) of every alias whose key starts with `prefix`."""
        for key, value in self._prefix_scan(txn, self.aliases, prefix):
            run_key, _, alias = key.partition(b"\0")
            project, _, run = fs_str(run_key).partition("/")
            yield project, run, fs_str(alias), fs_str(value)

    def put_setting(self, txn, project: str, kind: str, value) -> None:
        key = fs_bytes(project) + b"\0" + kind.encode()
        if value is None:
            txn.delete(key, db=self.settings)
        else:
            txn.put(key, orjson.dumps(value, option=orjson.OPT_SORT_KEYS), db=self.settings)

    def get_setting(self, txn, project: str, kind: str):
        value = txn.get(fs_bytes(project) + b"\0" + kind.encode(), db=self.settings)
        return orjson.loads(value) if value is not None else None

    def iter_settings(self, txn, kind: str):
        """(project, value) of every project with a setting of `kind`."""
        for key, value in txn.cursor(db=self.settings):
            project, _, key_kind = key.partition(b"\0")
            if key_kind == kind.encode():
                yield fs_str(project), orjson.loads(value)

    def clear_catalog(self, txn) -> None:
        """Empty the sub-databases derived from journal events other than chunks (an
        upgrade replays the journal into them)."""
        for db in (self.search, self.columns, self.aliases, self.settings, self.deleted):
            txn.drop(db, delete=False)

    def dump(self) -> dict:
        """Every key and value of every sub-database (for tests and debugging)."""
        out = {}
        with self.read() as txn:
            for name, db in ((b"meta", self.meta), (b"chunks", self.chunks),
                             (b"manifests", self.manifests), (b"versions", self.versions),
                             (b"entries", self.entries), (b"search", self.search),
                             (b"columns", self.columns),
                             (b"aliases", self.aliases), (b"settings", self.settings),
                             (b"deleted", self.deleted),
                             (b"damaged_chunks", self.damaged_chunks),
                             (b"damaged_versions", self.damaged_versions)):
                out[name.decode()] = dict(txn.cursor(db=db))
        return out
