"""The index is derived: checking that it belongs to the store, bringing an old one up
to date, and rebuilding it from packs and journal alone (`ckptfs rebuild-index`).

`IndexRebuilder` is given the store's path and chunk id key, the index, the journal and
the committer (its lock; the journal's torn tail), the pack files (`backend`), the
reader (manifests, to check the key against) and the store's open lock (a rebuild takes
the store exclusively).
"""
import fcntl
import os
import shutil
from functools import partial

import blake3

from .backend import Backend
from .damage import record_missing_chunks
from .errors import ChunkKeyError, IntegrityError, StoreError
from .gc import intent_pack_ids
from .index import INDEX_FORMAT, Index
from .pack import KIND_MANIFEST, list_pack_ids, pack_records
from .private import private_open
from .replay import PackRecords, index_pack, replay

KEY_CHECK = b"chunk_key_check"  # meta: fingerprint of the chunk id key the store uses
KEY_CHECK_CONTEXT = "ckptfs 1 chunk id key check"
KEY_SAMPLE = 3                  # manifests checked against the key when none is recorded


def chunk_key_fingerprint(key: bytes) -> str:
    """Tells the right chunk id key from a wrong one without revealing it."""
    return blake3.blake3(key, derive_key_context=KEY_CHECK_CONTEXT).hexdigest()


class OpenLock:
    """Every open Store holds a shared flock on STORE/lock; rebuild-index needs it
    exclusively."""

    def __init__(self, store_path: str):
        self.fd = private_open(os.path.join(store_path, "lock"), os.O_RDWR | os.O_CREAT)
        fcntl.flock(self.fd, fcntl.LOCK_SH)

    def take_exclusively(self) -> None:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError("the store is in use by another ckptfs process (a mount or an "
                             "import): stop it before rebuilding the index") from None

    def share(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_SH)

    def close(self) -> None:
        os.close(self.fd)


class IndexRebuilder:
    def __init__(self, store_path: str, chunk_key: bytes, config_path: str, index: Index,
                 journal, committer, backend: Backend, reader, open_lock: OpenLock):
        self.path = store_path
        self.chunk_key = chunk_key
        self.config_path = config_path   # where the key is kept (named in the error)
        self.index = index
        self.journal = journal
        self.committer = committer
        self.backend = backend
        self.reader = reader
        self.open_lock = open_lock

    # -- the chunk id key ---------------------------------------------------------------
    def check_chunk_key(self) -> None:
        """Refuse a chunk id key that is not the store's (ckptfs.toml edited, or another
        store's copied in): every id would mismatch, which looks like total damage, and
        new versions would be named with the wrong key. The index records the key's
        fingerprint; an index without one (older, or new) first checks a few manifests."""
        with self.index.read() as txn:
            recorded = self.index.get_meta(txn, KEY_CHECK)
        mine = chunk_key_fingerprint(self.chunk_key)
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
                f"{self.config_path} is not the key its data was stored "
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
            try:  # no index yet: find the record in the packs the version wrote (from
                # their index objects on a shared backend: a new cache downloads no pack)
                places += [(pack_id, rec.offset, rec.length)
                           for rec in pack_records(self.backend, pack_id).records
                           if rec.kind == KIND_MANIFEST and rec.record_id == manifest_id]
            except OSError:
                continue
        for pack_id, offset, length in places:
            try:
                raw = self.reader.decoded(self._records().record_at(pack_id, offset, length),
                                          pack_id)
            except (OSError, StoreError, ValueError):
                continue
            return self.reader.chunk_id(raw) == manifest_id
        return None

    # -- an index made by an older ckptfs -------------------------------------------------
    def upgrade_if_old(self) -> None:
        """An index made by an older ckptfs lacks the catalog sub-databases: replay the
        journal into them (versions, aliases and settings are idempotent to re-apply)."""
        with self.index.read() as txn:
            stored = self.index.get_meta(txn, b"format")
            empty = self.index.version_count(txn) == 0
        if stored is not None and int(stored) >= INDEX_FORMAT:
            return
        if stored is None and not empty:  # format 1 did not record its number
            with self.committer.locked():
                self.index.commit(self.index.clear_catalog)
                replay(self.index, self.journal.entries(), self._records())
        self.index.commit(lambda txn: self.index.put_int(txn, b"format", INDEX_FORMAT))

    def _records(self) -> PackRecords:
        """The packs are indexed already: a replay reads the manifests from them."""
        return PackRecords(self.backend, self.reader, scan=False)

    # -- rebuild-index ------------------------------------------------------------------
    def rebuild(self, moved_aside: str | None) -> dict:
        """Recreate the LMDB index from packs and journal alone.

        The new index is built beside the live one and swapped in only when complete,
        so a failure leaves the store as it was. It salvages: a version whose manifest
        is lost, or files whose chunks are, are recorded as damaged (`summary["damaged"]`,
        and in the index for verify, ls and get) and everything else is rebuilt.
        `moved_aside`: where an index that could not be opened went."""
        self.open_lock.take_exclusively()
        try:
            with self.committer.locked():
                self.committer.settle_journal_tail(strict=True)  # never replay without a committed entry
                self.check_chunk_key()
                new_path = os.path.join(self.path, "index.rebuild")
                shutil.rmtree(new_path, ignore_errors=True)
                try:
                    summary = self._build_index(new_path, moved_aside)
                except BaseException:
                    shutil.rmtree(new_path, ignore_errors=True)
                    raise
                self._swap_in_index(new_path)
        finally:
            self.open_lock.share()
        return summary

    def _build_index(self, path: str, moved_aside: str | None) -> dict:
        torn = self.journal.torn_tail()
        summary = {"packs": 0, "damaged_packs": [], "unfinished_packs": [], "versions": 0,
                   "damaged": [], "moved_aside": moved_aside,
                   "torn_tail": len(torn[0]) if torn else 0}
        entries = list(self.journal.entries())
        sealed_in = {pack_id for e in entries if e["type"] == "version.sealed"
                     for pack_id in e["packs"]}
        named = {pack_id for e in entries for pack_id in e.get("packs") or ()}
        index = Index(path)
        try:
            index.commit(lambda txn: index.put_int(txn, b"format", INDEX_FORMAT))
            for pack_id in self._packs_to_index(named):
                scan = index.commit(partial(self._index_pack, index, pack_id))
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
            summary["versions"] = replay(index, self.journal.entries(), self._records())
            index.commit(lambda txn: record_missing_chunks(index, txn))
            index.commit(lambda txn: index.put_meta(txn, KEY_CHECK,
                                                    chunk_key_fingerprint(self.chunk_key).encode()))
            with index.read() as txn:
                summary["damaged"] = list(index.iter_version_damage(txn))
        finally:
            index.close()
        return summary

    def _packs_to_index(self, named: set[int]) -> list[int]:
        """Every pack of a local store (the index has always held what any pack holds).
        On a shared store only those the journal names: another machine's ingest under
        way, or a gc killed midway, leaves packs with copies of records whose journaled
        place is elsewhere, and indexing a copy would make the original look unused."""
        packs = list_pack_ids(self.backend)
        return [p for p in packs if p in named] if self.backend.shared else packs

    def _index_pack(self, index: Index, pack_id: int, txn):
        return index_pack(index, txn, self.backend, pack_id)

    def _rebuilt_pack_counter(self, index: Index, txn) -> None:
        """Pack ids are never handed out twice: the rebuilt counter does not fall below the
        old index's (packs may have been deleted since) nor below a gc intent's ids."""
        try:
            with self.index.read() as old_txn:
                old = self.index.get_int(old_txn, b"next_pack_id", 1)
        except Exception:  # noqa: BLE001 - a damaged old index: the packs and the intent decide
            old = 1
        floor = max([old] + [pack_id + 1 for pack_id in intent_pack_ids(self.backend)])
        if index.get_int(txn, b"next_pack_id", 1) < floor:
            index.put_int(txn, b"next_pack_id", floor)

    def _swap_in_index(self, new_path: str):
        live = os.path.join(self.path, "index")
        old = os.path.join(self.path, "index.old")
        self.index.close()
        shutil.rmtree(old, ignore_errors=True)
        os.rename(live, old)
        os.rename(new_path, live)
        shutil.rmtree(old, ignore_errors=True)
        self.index.reopen()
        self.reader.clear_cache()
