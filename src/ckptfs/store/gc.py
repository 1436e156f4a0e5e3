"""Garbage collection: versions deleted by retention policy, then the space of what no
version uses any more, reclaimed so that a crash at any moment leaves a sound store,
on a local store and on a shared one (S3: many machines, each with its own index that
learns changes only from the journal, and no lock service).

`ckptfs gc STORE` is `Store.collect_garbage()`, which is `GarbageCollector.collect`:

1. One gc at a time on this machine: an exclusive flock on `gc/lock` (local state).
2. An interrupted gc's intent is finished first (a local store, below).
3. Deletions: the retention plan, made again under the journal lock so it is exact, one
   `version.deleted` journal event per version (deletion.py).
4. Leftover packs: packs no index entry points into, left by imports that died, or
   belonging to an ingest under way (the mount writes packs long before a seal). On a
   local store they go only when no ingest is under way (every ingest holds
   `ingest.lock` shared; gc takes it exclusively, without waiting). On a shared store
   that lock sees this machine only: a pack goes once its object is older than the
   grace period, and multipart uploads older than it are aborted.
5. Liveness: the live chunks are those the entries of live versions name, plus the base
   of every live chunk stored as an XOR-delta (read through `ChunkReader.read_record`,
   the one place that may decrypt). The live manifests are those of live AND deleted
   versions (a tombstone's file list comes from its manifest).
6. Packs whose live records fill less than `gc.rewrite_below` of them (ckptfs.toml) are
   rewritten: their live records copied byte for byte, not decoded (a record holds
   nothing that depends on where it sits), into new packs, closed. Packs with nothing
   live are simply dropped. Both are *retired*.
7. The switch is a journal entry, `packs.rewritten` (new packs, retired packs), made
   through `Committer.attempt` like every commit, and applied by events.apply in every
   index alike: what an index finds in a retired pack is forgotten, the new packs'
   records are indexed. Dead records in packs that stay are not forgotten (no index
   could learn that without the list of them in the journal): they are dead bytes
   until their pack is retired.
8. Retired packs are deleted by a gc once their retiring entry is older than
   `gc.grace_seconds` (a day on a shared store, 0 locally: the same gc), each only if no
   index entry points into it. Until then a reader whose index has not caught up still
   finds the old pack; one that finds a pack gone catches up and looks again.

Concurrency:
- An ingest may deduplicate against a chunk gc retires. The switch and every commit go
  through the journal (locally under its lock, on a shared store by the conditional
  create of the entry): a version sealed first is seen by the switch (its chunks that
  the liveness snapshot found dead are "revived", and the old packs holding them are not
  retired); a commit after it finds the chunk gone once its index has applied the switch
  (`Catalog.commit` checks) and the ingest starts over (`Store.import_directory`).
- Two gcs (on two machines): the second to reach the journal finds a `packs.rewritten`
  entry newer than its liveness snapshot and drops its own new packs (never named
  anywhere) instead of journaling a switch made on a stale view.
- A reader may have looked up a location in an old pack just before gc deleted it: a
  missing pack makes `ChunkReader.read_record` look the chunk up again, once.

Crash safety. Until the journal entry, new packs are unreferenced: a local gc writes
`gc/intent.json` (the old pack ids; each new pack id before that pack is created) so
the next gc deletes them at once; on a shared store (one intent object could not serve
many machines) they are leftovers that go after the grace period. After the entry, the
retired packs are known to every index that applied it (`retired_packs` in the index)
and the next gc deletes them when due. The index never points at a record that is not
there, so `verify` passes after a crash anywhere.

The test hook CKPTFS_GC_CRASH_AT=after-deletions|after-new-packs|after-index-switch|
mid-old-pack-removal makes gc exit abruptly at that point (os._exit), so tests can
check that the next gc finishes what a killed one started.
"""
import fcntl
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone

from .codec import delta_base_id
from .damage import note_damaged_chunk
from .backend import Backend
from .errors import GcBusyError, IntegrityError, StoreError, StoreFullError
from .events import packs_rewritten
from .index import Location, version_key
from .ingest import INGEST_LOCK
from .pack import PACKS_PREFIX, PackWriter, delete_pack, pack_id_from_name, pack_name, \
    pack_sizes
from .private import make_private_dirs, private_open
from .replay import index_record

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
    grace_seconds: float = 0.0        # gc.grace_seconds in force
    retired_waiting: list = field(default_factory=list)  # retired packs kept for the grace period
    delete_after: str | None = None   # ... until then (the latest of them)
    retired_deleted: list = field(default_factory=list)  # retired packs deleted by this gc
    superseded: bool = False          # another gc's switch came first: this one's was dropped
    uploads_aborted: int = 0          # stale multipart uploads (object stores)


def pack_bytes_on_disk(backend: Backend) -> int:
    return sum(pack_sizes(backend).values())


class GarbageCollector:
    """Garbage collection of the store at `store_path` (module docstring). Given the
    index, the committer (its lock orders the index switch with every commit), the
    backend (the pack objects, read through `packs`), the reader (delta bases of live
    chunks), the catalog (tombstones) and retention (what the policies delete)."""

    def __init__(self, store_path: str, config, index, committer, backend: Backend, packs,
                 reader, catalog, retention, allocate_pack_id):
        self.path = store_path
        self.config = config
        self.index = index
        self.committer = committer
        self.backend = backend
        self.packs = packs
        self.reader = reader
        self.catalog = catalog
        self.retention = retention
        self.allocate_pack_id = allocate_pack_id  # random on a shared backend

    @property
    def grace(self) -> float:
        """Seconds a retired pack is kept, and the age of a leftover pack on a shared
        store (gc.grace_seconds, or the backend's default)."""
        return self.config.gc.grace_for(self.backend.shared)

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
        report.grace_seconds = self.grace
        with self._gc_locked():
            report.recovered = self._finish_interrupted_gc()
            report.pack_bytes_before = pack_bytes_on_disk(self.backend)
            report.deletions = self.retention.apply_retention(now, actor)
            crash_point("after-deletions")
            self._remove_leftover_packs(report)
            liveness = self.liveness(progress=progress)
            plan = self.plan_packs(liveness)
            self.reclaim(liveness, plan, report, progress, actor)
            report.pack_bytes_after = pack_bytes_on_disk(self.backend)
        return report

    def _dry_run(self, report: GcReport, now: datetime, actor, progress) -> GcReport:
        plan = self.retention.plan_retention(now)
        self.retention.refuse_unless_allowed(plan.deletions, actor)  # a plan is for maintainers
        report.deletions = plan.deletions
        report.pending_recovery = load_intent(self.backend) is not None
        report.grace_seconds = self.grace
        going = {version_key(d.project, d.run, d.version) for d in report.deletions}
        liveness = self.liveness(exclude=going, progress=progress)
        packs = self.plan_packs(liveness)
        old = set(packs.old)
        dead = {c: loc for c, loc in liveness.dead_chunks().items() if loc.pack_id in old}
        report.freed_chunks = len(dead)
        report.freed_bytes = sum(loc.length for loc in dead.values())
        report.freed_by_deletions = sum(loc.length for c, loc in dead.items()
                                        if c in liveness.excluded_refs)
        report.packs_rewritten, report.packs_dropped = packs.rewrite, packs.drop
        report.bytes_copied = packs.copy_bytes
        report.dead_bytes_left = packs.dead_bytes_left
        report.pack_bytes_before = pack_bytes_on_disk(self.backend)
        removable, kept, reason = self._leftovers()
        report.leftovers_removed = removable   # would be
        report.leftovers_kept, report.leftovers_reason = kept, reason
        sizes = pack_sizes(self.backend)
        due, waiting = self._retired_due()
        if self.grace and old:   # what this gc retires waits too
            waiting.update({p: time.time() + self.grace for p in old})
        self._note_waiting(report, waiting)
        gone = sum(sizes.get(p, 0) for p in removable) + sum(sizes.get(p, 0) for p in due)
        new_pack_count = -(-packs.copy_bytes // self.config.packs.target_size)
        leaving = 0 if self.grace else sum(packs.sizes[p] for p in old)
        report.pack_bytes_after = (report.pack_bytes_before - leaving - gone + packs.copy_bytes
                                   + new_pack_count * PACK_OVERHEAD)
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
    def reclaim(self, liveness: Liveness, plan: PackPlan, report: GcReport, progress,
                actor: dict | None = None):
        # A local store's intent names the new packs so that a crash's go at once; on a
        # shared one they are leftovers (one intent object cannot serve many machines).
        intent = {"old": plan.old, "new": []} if not self.backend.shared else None
        if plan.old and intent is not None:
            save_intent(self.backend, intent)
        moves = self._copy_live_records(liveness, plan, report, progress, intent)
        crash_point("after-new-packs")
        self._switch(liveness, plan, moves, report, actor)
        crash_point("after-index-switch")
        self._delete_retired_packs(report)
        if intent is not None:
            remove_intent(self.backend)

    def _copy_live_records(self, liveness: Liveness, plan: PackPlan, report: GcReport,
                           progress, intent: dict | None) -> list[Move]:
        """Copy the live records of the packs to rewrite into new packs (closed, durable)."""
        rewrite = set(plan.rewrite)
        records = sorted(((loc.pack_id, loc.offset), manifest, record_id, loc)
                         for manifest, record_id, loc in liveness.live_records()
                         if loc.pack_id in rewrite)
        moves, writers = [], []
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
                if w.closed:
                    delete_pack(self.backend, w.pack_id)
                else:
                    w.abort()
            if intent is not None:
                remove_intent(self.backend)
            if isinstance(e, OSError) and e.errno in (28, 122):  # ENOSPC, EDQUOT
                raise StoreFullError("no space left on the store's disk while rewriting packs; "
                                     "nothing was reclaimed (the deletions stand): free some "
                                     "space, or lower gc.rewrite_below, and run gc again") from None
            raise
        report.new_packs = [w.pack_id for w in writers]
        return moves

    def _new_gc_pack(self, intent: dict | None) -> PackWriter:
        """A new pack for copies (named in a local store's intent before it exists)."""
        pack_id = self.allocate_pack_id()
        if intent is not None:
            intent["new"].append(pack_id)
            save_intent(self.backend, intent)
        return PackWriter(self.backend, pack_id)

    def _switch(self, liveness: Liveness, plan: PackPlan, moves: list[Move],
                report: GcReport, actor) -> None:
        """Journal the switch (`packs.rewritten`) through the committer: checked again
        on each try, on an index that has caught up. Packs holding chunks a version
        sealed meanwhile uses are not retired. Another gc's switch since our liveness
        snapshot, or new packs gone meanwhile, drop ours."""
        def journal_switch():
            with self.index.read() as txn:
                if self.index.get_int(txn, b"rewritten_seq") > liveness.seq:
                    return None
            if not all(self._exists(p) for p in report.new_packs):
                return None  # another machine's gc took them for leftovers
            revived = self._revived_since(liveness)
            keep = {liveness.chunks[c].pack_id for c in revived if c in liveness.chunks}
            retired = [p for p in plan.old if p not in keep]
            if retired:
                self.committer.journal_and_index(packs_rewritten(report.new_packs, retired),
                                                 actor, CopiedRecords(moves))
            return revived, keep, retired
        outcome = self.committer.attempt(journal_switch)
        if outcome is None or not outcome[2]:
            for pack_id in report.new_packs:   # named nowhere: they go at once
                delete_pack(self.backend, pack_id)
            report.new_packs = []
        if outcome is None:
            report.superseded = True
            return
        self._report_switch(liveness, plan, report, *outcome)

    def _exists(self, pack_id: int) -> bool:
        try:
            self.backend.stat(pack_name(pack_id))
            return True
        except FileNotFoundError:
            return False

    def _report_switch(self, liveness: Liveness, plan: PackPlan, report: GcReport,
                       revived: set[bytes], keep: set[int], retired: list[int]) -> None:
        gone = set(retired)
        dead = {c: loc for c, loc in liveness.dead_chunks().items()
                if loc.pack_id in gone and c not in revived}
        report.freed_chunks = len(dead)
        report.freed_bytes = sum(loc.length for loc in dead.values())
        deleted_refs = self._chunks_of_tombstoned(report.deletions)
        report.freed_by_deletions = sum(loc.length for c, loc in dead.items() if c in deleted_refs)
        report.revived = len(revived & liveness.chunks.keys())
        report.packs_rewritten = [p for p in plan.rewrite if p in gone]
        report.packs_dropped = [p for p in plan.drop if p in gone]
        report.old_packs_kept = sorted(keep & set(plan.old))
        report.dead_bytes_left = plan.dead_bytes_left

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

    # -- retired packs ----------------------------------------------------------------------
    def _retired_due(self) -> tuple[list[int], dict[int, float]]:
        """The retired packs whose grace period is over, and {pack id: when it is over}
        of the others."""
        with self.index.read() as txn:
            retired = self.index.retired_packs(txn)
        now, due, waiting = time.time(), [], {}
        for pack_id, (when, _seq) in sorted(retired.items()):
            until = datetime.fromisoformat(when).timestamp() + self.grace
            if until <= now:
                due.append(pack_id)
            else:
                waiting[pack_id] = until
        return due, waiting

    def _delete_retired_packs(self, report: GcReport) -> None:
        """Delete the retired packs whose grace period is over, each only if no index
        entry points into it (each deletion is durable before the next)."""
        due, waiting = self._retired_due()
        with self.index.read() as txn:
            referenced = self.index.referenced_pack_ids(txn)
        gone = []
        for pack_id in due:
            if pack_id in referenced:
                continue
            if delete_pack(self.backend, pack_id):
                report.retired_deleted.append(pack_id)
                if len(report.retired_deleted) == 1:
                    crash_point("mid-old-pack-removal")
            gone.append(pack_id)

        def forget(txn):
            retired = self.index.retired_packs(txn)
            for pack_id in gone:
                retired.pop(pack_id, None)
            self.index.put_retired_packs(txn, retired)
        if gone:
            self.index.commit(forget)   # derived state: the packs are gone
        self._note_waiting(report, waiting)
        self._bump_gc_generation()

    @staticmethod
    def _note_waiting(report: GcReport, waiting: dict[int, float]) -> None:
        report.retired_waiting = sorted(waiting)
        if waiting:
            report.delete_after = datetime.fromtimestamp(
                max(waiting.values()), timezone.utc).isoformat(timespec="seconds")

    def _bump_gc_generation(self):
        """Tell readers (the mount, in another process) that packs were deleted, so they
        close their descriptors of them (which would keep the disk space)."""
        self.index.commit(lambda txn: self.index.add_int(txn, b"gc_generation", 1))

    # -- an interrupted gc -------------------------------------------------------------------
    def _finish_interrupted_gc(self) -> str | None:
        """Finish what a local gc that died left (its intent file); says what it did. Its
        retired packs, if its switch was journaled, go with the others (when due)."""
        intent = load_intent(self.backend)
        if intent is None:
            return None
        with self.committer.locked():
            self.committer.catch_up()   # a switch journaled but not yet applied
        with self.index.read() as txn:
            referenced = self.index.referenced_pack_ids(txn)
        switched = any(p in referenced for p in intent["new"])
        removed_new = []
        if not switched:
            for pack_id in intent["new"]:  # unreferenced copies
                if delete_pack(self.backend, pack_id):
                    removed_new.append(pack_id)
        remove_intent(self.backend)
        self._bump_gc_generation()
        if switched:
            return "finished an interrupted gc: its switch was journaled"
        return (f"finished an interrupted gc: its switch was not journaled; removed "
                f"{len(removed_new)} unused new pack(s)")

    # -- leftover packs --------------------------------------------------------------------
    def _unreferenced_packs(self) -> dict[int, float | None]:
        """{pack id: its object's mtime} of the packs no index entry points into and that
        no gc is busy with (retired ones awaiting deletion, an intent's)."""
        with self.index.read() as txn:
            busy = self.index.referenced_pack_ids(txn) | set(self.index.retired_packs(txn))
        busy.update(intent_pack_ids(self.backend))
        found = {}
        for info in self.backend.list(PACKS_PREFIX):
            pack_id = pack_id_from_name(info.name)
            if pack_id is not None and info.name == pack_name(pack_id) and pack_id not in busy:
                found[pack_id] = info.mtime
        return found

    def _leftovers(self, ingest_locked: bool = False) -> tuple[list[int], list[int], str | None]:
        """(the leftover packs gc may remove now, those it keeps, why). A local store:
        all of them, unless an ingest is under way (it may own them; `ingest_locked`:
        the caller holds `ingest.lock`, so none is). A shared store:
        those older than the grace period (an ingest on another machine may be writing
        the younger ones; no lock spans machines)."""
        unreferenced = self._unreferenced_packs()
        if not self.backend.shared:
            if unreferenced and not ingest_locked and self._ingest_in_flight():
                return [], sorted(unreferenced), "an import or a mount is ingesting now"
            return sorted(unreferenced), [], None
        cutoff = time.time() - self.grace
        old = sorted(p for p, mtime in unreferenced.items()
                     if mtime is not None and mtime <= cutoff)
        young = sorted(p for p in unreferenced if p not in old)
        why = (f"younger than the grace period ({self.grace:g} s): an import on another "
               "machine may be writing them") if young else None
        return old, young, why

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
        died (`_leftovers` says which may go), and an object store's stale uploads. On a
        local store `ingest.lock` is held meanwhile, so no ingest starts."""
        report.uploads_aborted = self.backend.abort_stale_uploads(self.grace)
        fd = private_open(os.path.join(self.path, INGEST_LOCK), os.O_RDWR | os.O_CREAT)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not self.backend.shared:   # an ingest is under way: nothing goes
                    _none, report.leftovers_kept, report.leftovers_reason = self._leftovers()
                    return
            with self.committer.locked():
                self.committer.catch_up()  # a version journaled but not indexed names its packs
            removable, report.leftovers_kept, report.leftovers_reason = \
                self._leftovers(ingest_locked=True)
            for pack_id in removable:
                if delete_pack(self.backend, pack_id):
                    report.leftovers_removed.append(pack_id)
        finally:
            os.close(fd)


class CopiedRecords:
    """The records a gc has just copied into its new packs (events.Records): indexed as
    reading those packs back would, without reading them."""

    def __init__(self, moves: list[Move]):
        self.moves = moves

    def index_packs(self, index, txn, pack_ids) -> None:
        for move in self.moves:
            index_record(index, txn, move.manifest, move.record_id, move.new)
