"""Garbage collection: versions deleted by retention policy, then the space of what no
version uses any more, reclaimed so that a crash at any moment leaves a sound store.

`ckptfs gc STORE` is `Store.collect_garbage()`, which is `GarbageCollector.collect`:

1. One gc at a time: an exclusive flock on `STORE/gc/lock`.
2. An interrupted gc is finished first (its intent file, see below).
3. Deletions: the retention plan, made again under the journal lock so it is exact, one
   `version.deleted` journal event per version (deletion.py).
4. Leftover packs: packs no index entry points into were left by imports that died, or
   belong to an ingest under way in another process (the mount writes packs long before
   a seal). They are removed only when no ingest is under way anywhere: every ingest
   holds `STORE/ingest.lock` shared; gc takes it exclusively, without waiting.
5. Liveness: the live chunks are those the entries of live versions name, plus the base
   of every live chunk stored as an XOR-delta (read through `ChunkReader.read_record`,
   the one place that may decrypt). The live manifests are those of live AND deleted
   versions (a tombstone's file list comes from its manifest). Every other chunk the
   index knows is dead.
6. Packs whose live records fill less than `gc.rewrite_below` of them (ckptfs.toml) are
   rewritten: their live records copied byte for byte, not decoded (a record holds
   nothing that depends on where it sits), into new packs, fsync'd and closed. Packs
   with nothing live are simply dropped.
7. The index switch, in one LMDB transaction under the journal lock: the copied records
   re-pointed to their new places, every dead chunk forgotten (counters updated).
8. The old packs deleted (each only if no index entry points into it), then the intent.

Crash safety. Before its first new pack, gc writes `STORE/gc/intent.json` with the old
pack ids, and adds each new pack id before that pack is created (written to a temporary
file, fsync'd, renamed). What is on disk then decides at every step: if no index entry
points into any new pack, the switch never happened and the new packs are unreferenced
copies (they go); if one does, it happened. Either way an old pack goes only once no
index entry points into it. The index never points at a record that is not on disk, so
`verify` passes after a crash anywhere, and the next gc finishes the job.

Concurrency with imports and the mount (both may run while gc does):
- An ingest may deduplicate against a chunk gc is about to declare dead. The switch and
  every commit take the journal lock, so they are ordered: a commit before the switch
  is seen by the switch (chunks of versions sealed since the liveness snapshot, and
  their delta bases, are "revived": they keep their index entry, and the old pack they
  are in is kept), and a commit after it finds the chunk gone (`Catalog.commit` checks)
  and the ingest starts over (`Store.import_directory`).
- A reader may have looked up a location in an old pack just before gc deleted it: a
  missing pack makes `ChunkReader.read_record` look the chunk up again, once.
- The test hook CKPTFS_GC_CRASH_AT=after-deletions|after-new-packs|after-index-switch|
  mid-old-pack-removal makes gc exit abruptly at that point (os._exit), so tests can
  check that the next gc finishes what a killed one started.
"""
import fcntl
import json
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone

from .codec import delta_base_id
from .damage import note_damaged_chunk
from .backend import Backend
from .errors import GcBusyError, IntegrityError, StoreError, StoreFullError
from .index import Location, version_key
from .ingest import INGEST_LOCK
from .pack import PackWriter, list_pack_ids, pack_name, pack_sizes
from .private import make_private_dirs, private_open

GC_DIR = "gc"
GC_LOCK = "lock"
INTENT_NAME = "gc/intent.json"  # a backend object (locally STORE/gc/intent.json)
CRASH_ENV = "CKPTFS_GC_CRASH_AT"
CRASH_POINTS = ("after-deletions", "after-new-packs", "after-index-switch",
                "mid-old-pack-removal")
CRASH_EXIT = 99
PACK_OVERHEAD = 16 + 60  # a new pack's header and end record
BASE_BATCH = 4096        # chunks whose records are read per batch (bounds memory)


def crash_point(name: str) -> None:
    """Test hook: die here, without cleaning up, if CKPTFS_GC_CRASH_AT names this point."""
    if os.environ.get(CRASH_ENV) == name:
        os._exit(CRASH_EXIT)


def load_intent(backend: Backend) -> dict | None:
    """The intent of an unfinished gc: {"old": [pack ids], "new": [pack ids]}, or None."""
    try:
        intent = json.loads(backend.get(INTENT_NAME))
    except FileNotFoundError:
        return None
    except ValueError:
        # A torn intent cannot happen (it is put whole), so this is damage: refuse
        # rather than guess which packs are which.
        raise StoreError(f"{backend.describe(INTENT_NAME)} is not valid JSON: it records an "
                         "interrupted garbage collection; see docs/retention.md") from None
    return {"old": list(intent.get("old", [])), "new": list(intent.get("new", []))}


def intent_pack_ids(backend: Backend) -> list[int]:
    intent = load_intent(backend)
    return intent["old"] + intent["new"] if intent else []


def save_intent(backend: Backend, intent: dict) -> None:
    """Write the intent durably, replacing the last one whole."""
    backend.put(INTENT_NAME, json.dumps({"format": 1, **intent}, sort_keys=True).encode() + b"\n")


def remove_intent(backend: Backend) -> None:
    backend.delete(INTENT_NAME)


@dataclass
class Liveness:
    """What the index holds and what of it is live, at journal entry `seq`."""
    seq: int
    chunks: dict[bytes, Location]      # every chunk in the index
    manifests: dict[bytes, Location]   # every manifest in the index
    live_chunks: set[bytes]
    live_manifests: set[bytes]
    excluded_refs: set[bytes] = field(default_factory=set)  # named by versions planned to go

    def dead_chunks(self) -> dict[bytes, Location]:
        return {c: loc for c, loc in self.chunks.items() if c not in self.live_chunks}

    def dead_manifests(self) -> dict[bytes, Location]:
        return {m: loc for m, loc in self.manifests.items() if m not in self.live_manifests}

    def live_records(self):
        """(is manifest, id, location) of every live record."""
        for chunk_id in self.live_chunks:
            if chunk_id in self.chunks:
                yield False, chunk_id, self.chunks[chunk_id]
        for manifest_id in self.live_manifests:
            if manifest_id in self.manifests:
                yield True, manifest_id, self.manifests[manifest_id]


@dataclass
class PackPlan:
    rewrite: list[int]            # some live records, under the threshold: copied, then gone
    drop: list[int]               # nothing live: gone
    sizes: dict[int, int]         # bytes on disk of every pack the index points into
    live_bytes: dict[int, int]    # live record bytes per pack

    @property
    def old(self) -> list[int]:
        return sorted(self.rewrite + self.drop)

    @property
    def copy_bytes(self) -> int:
        return sum(self.live_bytes.get(p, 0) for p in self.rewrite)

    @property
    def dead_bytes_left(self) -> int:
        """Dead bytes in the packs that stay (above the threshold)."""
        old = set(self.old)
        return sum(size - self.live_bytes.get(p, 0) - PACK_OVERHEAD
                   for p, size in self.sizes.items() if p not in old)


@dataclass
class Move:
    manifest: bool
    record_id: bytes
    old: Location
    new: Location


@dataclass
class GcReport:
    dry_run: bool
    now: str
    threshold: float
    deletions: list = field(default_factory=list)      # retention.Decision, in seal order
    recovered: str | None = None      # what finishing an interrupted gc did
    pending_recovery: bool = False    # dry run: an interrupted gc would be finished first
    freed_chunks: int = 0             # chunks that leave the index
    freed_bytes: int = 0              # their stored bytes
    freed_by_deletions: int = 0       # of which: chunks only the deleted versions used
    packs_rewritten: list = field(default_factory=list)
    packs_dropped: list = field(default_factory=list)
    new_packs: list = field(default_factory=list)
    bytes_copied: int = 0
    pack_bytes_before: int = 0
    pack_bytes_after: int = 0         # dry run: what it would be
    dead_bytes_left: int = 0          # in packs above the threshold
    leftovers_removed: list = field(default_factory=list)
    leftovers_kept: list = field(default_factory=list)
    leftovers_reason: str | None = None
    revived: int = 0                  # dead chunks a concurrent import started using
    old_packs_kept: list = field(default_factory=list)  # ... and the old packs that hold them


def pack_bytes_on_disk(backend: Backend) -> int:
    return sum(pack_sizes(backend).values())


class GarbageCollector:
    """Garbage collection of the store at `store_path` (module docstring). Given the
    index, the committer (its lock orders the index switch with every commit), the
    backend (the pack objects, read through `packs`), the reader (delta bases of live
    chunks), the catalog (tombstones) and retention (what the policies delete)."""

    def __init__(self, store_path: str, config, index, committer, backend: Backend, packs,
                 reader, catalog, retention):
        self.path = store_path
        self.config = config
        self.index = index
        self.committer = committer
        self.backend = backend
        self.packs = packs
        self.reader = reader
        self.catalog = catalog
        self.retention = retention

    # -- the whole run ------------------------------------------------------------------
    def collect(self, dry_run: bool = False, now: datetime | None = None,
                        actor: dict | None = None, progress=None) -> GcReport:
        """Delete what the retention policies say and reclaim the space of every chunk no
        version uses any more (module docstring). With `dry_run`, change nothing and
        report what would happen; `now` is the moment policy ages are measured from."""
        now = now or datetime.now(timezone.utc)
        report = GcReport(dry_run, now.isoformat(), self.config.gc.rewrite_below)
        if dry_run:
            return self._dry_run(report, now, actor, progress)
        with self._gc_locked():
            report.recovered = self._finish_interrupted_gc()
            report.pack_bytes_before = pack_bytes_on_disk(self.backend)
            report.deletions = self.retention.apply_retention(now, actor)
            crash_point("after-deletions")
            self._remove_leftover_packs(report)
            liveness = self.liveness(progress=progress)
            plan = self.plan_packs(liveness)
            self.reclaim(liveness, plan, report, progress)
            report.pack_bytes_after = pack_bytes_on_disk(self.backend)
        return report

    def _dry_run(self, report: GcReport, now: datetime, actor, progress) -> GcReport:
        plan = self.retention.plan_retention(now)
        self.retention.refuse_unless_allowed(plan.deletions, actor)  # a plan is for maintainers
        report.deletions = plan.deletions
        report.pending_recovery = load_intent(self.backend) is not None
        going = {version_key(d.project, d.run, d.version) for d in report.deletions}
        liveness = self.liveness(exclude=going, progress=progress)
        packs = self.plan_packs(liveness)
        dead = liveness.dead_chunks()
        report.freed_chunks = len(dead)
        report.freed_bytes = sum(loc.length for loc in dead.values())
        report.freed_by_deletions = sum(loc.length for c, loc in dead.items()
                                        if c in liveness.excluded_refs)
        report.packs_rewritten, report.packs_dropped = packs.rewrite, packs.drop
        report.bytes_copied = packs.copy_bytes
        report.dead_bytes_left = packs.dead_bytes_left
        report.pack_bytes_before = pack_bytes_on_disk(self.backend)
        leftovers = self._unreferenced_packs()
        report.leftovers_kept = leftovers
        if leftovers and self._ingest_in_flight():
            report.leftovers_reason = "an import or a mount is ingesting now"
        sizes = pack_sizes(self.backend)
        leftover_bytes = sum(sizes.get(p, 0) for p in leftovers)
        new_pack_count = -(-packs.copy_bytes // self.config.packs.target_size)
        report.pack_bytes_after = (report.pack_bytes_before
                                   - sum(packs.sizes[p] for p in packs.old) + packs.copy_bytes
                                   + new_pack_count * PACK_OVERHEAD
                                   - (0 if report.leftovers_reason else leftover_bytes))
        return report

    @contextmanager
    def _gc_locked(self):
        gc_dir = os.path.join(self.path, GC_DIR)
        make_private_dirs(gc_dir)
        fd = private_open(os.path.join(gc_dir, GC_LOCK), os.O_RDWR | os.O_CREAT)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise GcBusyError("another `ckptfs gc` is running on this store: wait for it "
                                  "to finish") from None
            yield
        finally:
            os.close(fd)

    # -- liveness ---------------------------------------------------------------------
    def liveness(self, exclude: set[bytes] = frozenset(), progress=None) -> Liveness:
        """Live chunks and manifests; versions in `exclude` (version keys) count as
        deleted already (a dry run)."""
        with self.index.read() as txn:
            seq = self.index.get_int(txn, b"journal_seq")
            chunks = dict(self.index.iter_locations(txn, self.index.chunks))
            manifests = dict(self.index.iter_locations(txn, self.index.manifests))
            referenced, excluded = set(), set()
            for vkey, chunk_list in self.index.iter_chunk_lists(txn):
                target = excluded if vkey in exclude else referenced
                target.update(bytes.fromhex(c) for c, _ in chunk_list)
            live_manifests = {bytes.fromhex(r["manifest"]) for r in self.index.iter_versions(txn)}
            live_manifests.update(bytes.fromhex(t["record"]["manifest"])
                                  for t in self.index.iter_tombstones(txn))
        live = referenced & chunks.keys()
        live |= self._delta_bases(live, progress)
        return Liveness(seq, chunks, manifests, live, live_manifests, excluded)

    def _delta_bases(self, chunk_ids, progress=None) -> set[bytes]:
        """The bases of those of `chunk_ids` stored as XOR-delta (every record is read,
        through the reader: the codec and base id are only known from the record)."""
        ids = list(chunk_ids)
        bases = set()
        with ThreadPoolExecutor(2, thread_name_prefix="ckptfs-gc") as pool:
            for start in range(0, len(ids), BASE_BATCH):
                batch = ids[start:start + BASE_BATCH]
                bases.update(b for b in pool.map(self._delta_base_of, batch) if b is not None)
                if progress:
                    progress("liveness", min(start + BASE_BATCH, len(ids)), len(ids))
        return bases

    def _delta_base_of(self, chunk_id: bytes) -> bytes | None:
        try:
            record = self.reader.read_record(chunk_id)
        except IntegrityError as e:
            # Its base cannot be known, so nothing may be declared dead: stop here.
            note_damaged_chunk(self.index, e.chunk_id or chunk_id, str(e))
            raise StoreError(f"garbage collection cannot read a live chunk ({e}); nothing "
                             "was reclaimed: run `ckptfs verify` to see the damage and `ckptfs "
                             "repair` to mend it (docs/recovery.md)") from None
        return delta_base_id(record.codec, record.payload)

    # -- which packs go -------------------------------------------------------------------
    def plan_packs(self, liveness: Liveness) -> PackPlan:
        live_bytes: dict[int, int] = {}
        referenced = set()
        for db_records, live in ((liveness.chunks, liveness.live_chunks),
                                 (liveness.manifests, liveness.live_manifests)):
            for record_id, loc in db_records.items():
                referenced.add(loc.pack_id)
                if record_id in live:
                    live_bytes[loc.pack_id] = live_bytes.get(loc.pack_id, 0) + loc.length
        sizes = {}
        for pack_id in referenced:
            try:
                sizes[pack_id] = self.backend.stat(pack_name(pack_id))
            except FileNotFoundError:
                pass  # damage `verify` reports: gc leaves it alone
        threshold = self.config.gc.rewrite_below
        rewrite, drop = [], []
        for pack_id, size in sorted(sizes.items()):
            used = live_bytes.get(pack_id, 0)
            records = size - PACK_OVERHEAD  # a pack whose records are all live has used == records
            if used == 0:
                drop.append(pack_id)
            elif used < records and used < threshold * records:
                rewrite.append(pack_id)
        return PackPlan(rewrite, drop, sizes, live_bytes)

    # -- reclaiming -------------------------------------------------------------------------
    def reclaim(self, liveness: Liveness, plan: PackPlan, report: GcReport, progress):
        if plan.old:
            save_intent(self.backend, {"old": plan.old, "new": []})
        moves = self._copy_live_records(liveness, plan, report, progress)
        crash_point("after-new-packs")
        keep_old = self._switch_index(liveness, moves, report)
        crash_point("after-index-switch")
        report.packs_rewritten = [p for p in plan.rewrite if p not in keep_old]
        report.packs_dropped = [p for p in plan.drop if p not in keep_old]
        report.old_packs_kept = sorted(keep_old)
        report.dead_bytes_left = plan.dead_bytes_left
        self._remove_old_packs([p for p in plan.old if p not in keep_old])
        remove_intent(self.backend)
        self._bump_gc_generation()

    def _copy_live_records(self, liveness: Liveness, plan: PackPlan, report: GcReport,
                           progress) -> list[Move]:
        """Copy the live records of the packs to rewrite into new packs (closed, fsync'd)."""
        rewrite = set(plan.rewrite)
        records = sorted(((loc.pack_id, loc.offset), manifest, record_id, loc)
                         for manifest, record_id, loc in liveness.live_records()
                         if loc.pack_id in rewrite)
        moves, writers, intent = [], [], {"old": plan.old, "new": []}
        try:
            for _order, manifest, record_id, loc in records:
                writer = writers[-1] if writers else None
                if writer is None or writer.size >= self.config.packs.target_size:
                    if writer is not None:
                        writer.close()
                    writer = self._new_gc_pack(intent)
                    writers.append(writer)
                raw = self.packs.read_raw(loc.pack_id, loc.offset, loc.length)
                offset, length = writer.append_raw(raw)
                moves.append(Move(manifest, record_id, loc,
                                  Location(writer.pack_id, offset, length, loc.raw_len)))
                report.bytes_copied += length
                if progress:
                    progress("copying", len(moves), len(records))
            if writers:
                writers[-1].close()
        except BaseException as e:
            for w in writers:  # nothing points into them yet: they go, the old packs stay
                w.abort()
            remove_intent(self.backend)
            if isinstance(e, OSError) and e.errno in (28, 122):  # ENOSPC, EDQUOT
                raise StoreFullError("no space left on the store's disk while rewriting packs; "
                                     "nothing was reclaimed (the deletions stand): free some "
                                     "space, or lower gc.rewrite_below, and run gc again") from None
            raise
        report.new_packs = [w.pack_id for w in writers]
        return moves

    def _new_gc_pack(self, intent: dict) -> PackWriter:
        """A new pack for copies, named in the intent before it exists."""
        pack_id = self.index.allocate_pack_id()
        intent["new"].append(pack_id)
        save_intent(self.backend, intent)
        return PackWriter(self.backend, pack_id)

    def _switch_index(self, liveness: Liveness, moves: list[Move], report: GcReport) -> set[int]:
        """Re-point the copied records and forget the dead chunks, in one transaction
        under the journal lock. Returns the old packs that must stay (they hold chunks a
        version sealed meanwhile uses)."""
        with self.committer.locked():
            self.committer.catch_up()
            revived = self._revived_since(liveness)
            dead = {c: loc for c, loc in liveness.dead_chunks().items() if c not in revived}
            dead_manifests = liveness.dead_manifests()

            def apply(txn):
                for move in moves:
                    db = self.index.manifests if move.manifest else self.index.chunks
                    self.index.move_record(txn, db, move.record_id, move.old, move.new)
                freed = [loc for c, loc in dead.items() if self.index.remove_chunk(txn, c, loc)]
                for manifest_id, loc in dead_manifests.items():
                    self.index.remove_manifest(txn, manifest_id, loc)
                return freed
            freed = self.index.commit(apply)
        report.freed_chunks = len(freed)
        report.freed_bytes = sum(loc.length for loc in freed)
        deleted_refs = self._chunks_of_tombstoned(report.deletions)
        report.freed_by_deletions = sum(loc.length for c, loc in dead.items() if c in deleted_refs)
        report.revived = len(revived & liveness.chunks.keys())
        return {liveness.chunks[c].pack_id for c in revived if c in liveness.chunks}

    def _chunks_of_tombstoned(self, decisions) -> set[bytes]:
        refs = set()
        for d in decisions:
            tomb = self.catalog.tombstone(d.project, d.run, d.version)
            if tomb is not None:
                for entry in self.retention.tombstone_entries(tomb):
                    refs.update(bytes.fromhex(c) for c, _ in entry.get("chunks", ()))
        return refs

    def _revived_since(self, liveness: Liveness) -> set[bytes]:
        """Chunks of versions sealed since the liveness snapshot (and their delta bases)
        that the snapshot did not count as live. Caller holds the journal lock."""
        with self.index.read() as txn:
            if self.index.get_int(txn, b"journal_seq") == liveness.seq:
                return set()
            refs = set()
            for record in self.index.iter_versions(txn):
                if record["seq"] <= liveness.seq:
                    continue
                vkey = version_key(record["project"], record["run"], record["version"])
                for _vkey, chunk_list in self.index.iter_chunk_lists(txn, vkey):
                    refs.update(bytes.fromhex(c) for c, _ in chunk_list)
        new = refs - liveness.live_chunks
        return new | self._delta_bases(new)

    def _remove_old_packs(self, old: list[int]) -> list[int]:
        """Delete the old packs no index entry points into any more."""
        with self.index.read() as txn:
            referenced = self.index.referenced_pack_ids(txn)
        removed = []
        for pack_id in old:  # each deletion is durable before the intent goes
            if pack_id in referenced or not self.backend.delete(pack_name(pack_id)):
                continue
            removed.append(pack_id)
            if len(removed) == 1:
                crash_point("mid-old-pack-removal")
        return removed

    def _bump_gc_generation(self):
        """Tell readers (the mount, in another process) that packs were deleted, so they
        close their descriptors of them (which would keep the disk space)."""
        self.index.commit(lambda txn: self.index.add_int(txn, b"gc_generation", 1))

    # -- an interrupted gc -------------------------------------------------------------------
    def _finish_interrupted_gc(self) -> str | None:
        """Finish what a gc that died left (its intent file); says what it did."""
        intent = load_intent(self.backend)
        if intent is None:
            return None
        with self.index.read() as txn:
            referenced = self.index.referenced_pack_ids(txn)
        switched = any(p in referenced for p in intent["new"])
        removed_new = []
        if not switched:
            for pack_id in intent["new"]:  # unreferenced copies
                if self.backend.delete(pack_name(pack_id)):
                    removed_new.append(pack_id)
        removed_old = self._remove_old_packs(intent["old"])
        remove_intent(self.backend)
        self._bump_gc_generation()
        if switched:
            return (f"finished an interrupted gc: its index switch was done; removed "
                    f"{len(removed_old)} old pack(s)")
        return (f"finished an interrupted gc: its index switch was not done; removed "
                f"{len(removed_new)} unused new pack(s) and {len(removed_old)} old pack(s) "
                "nothing pointed into")

    # -- leftover packs --------------------------------------------------------------------
    def _unreferenced_packs(self) -> list[int]:
        with self.index.read() as txn:
            referenced = self.index.referenced_pack_ids(txn)
        busy = set(intent_pack_ids(self.backend))
        return [p for p in list_pack_ids(self.backend) if p not in referenced and p not in busy]

    def _ingest_in_flight(self) -> bool:
        fd = private_open(os.path.join(self.path, INGEST_LOCK), os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    def _remove_leftover_packs(self, report: GcReport) -> None:
        """Remove packs nothing points into (complete or unfinished), left by imports that
        died, but only while no ingest is under way anywhere: one under way owns such
        packs until it commits."""
        fd = private_open(os.path.join(self.path, INGEST_LOCK), os.O_RDWR | os.O_CREAT)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                report.leftovers_kept = self._unreferenced_packs()
                if report.leftovers_kept:
                    report.leftovers_reason = "an import or a mount is ingesting now"
                return
            with self.committer.locked():
                self.committer.catch_up()  # a version journaled but not indexed names its packs
            leftovers = self._unreferenced_packs()
            for pack_id in leftovers:
                if self.backend.delete(pack_name(pack_id)):
                    report.leftovers_removed.append(pack_id)
        finally:
            os.close(fd)
