"""The sealer: which units of the inbox are due, preparing their files ahead of the seal,
and sealing them (docs/mount.md, "When a unit is sealed").

The inbox (inbox.py) answers the file-system calls and tells the sealer what changed
(through SpoolActivity and a few calls); the sealer decides, on its own trio task, when
a unit is due, stages it (spool.py) and seals it through `archive_directory`, the same
path as `ckptfs import`, on a worker thread. Ingest starts before the seal: a file
written from its start is streamed into its unit's ingest as it is written
(streaming.py), any other is prepared (chunked, deduplicated, compressed, packed) once
its last writer closes it; the seal then only reads what changed since. Prepare and seal
take turns on one lane; streams run beside them, on threads of their own.
"""
import contextlib
import dataclasses
import errno
import functools
import logging
import os
import shutil
import time
from dataclasses import dataclass, field

import trio

from ckptfs.meta.errors import SealRefused
from ckptfs.meta.layout import (CHECKPOINT, FILES, GROUP, SEAL_MARKER, Unit,
                                free_version_name, is_checkpoint_directory, unit_of,
                                units_asked)
from ckptfs.meta.seal import archive_directory
from ckptfs.spool import records
from ckptfs.spool.directory import inner_path, listing_of
from ckptfs.spool.layout import REMOVED
from ckptfs.spool.records import provenance_key, provenance_of_record
from ckptfs.spool.seal_requests import take_requests
from ckptfs.store import StoreError
from ckptfs.store.backend import BackendUnavailableError

from .streaming import WriteStreams

log = logging.getLogger("ckptfs.inbox")

FILES_QUIET_MIN, FILES_QUIET_FACTOR = 60.0, 12  # seconds; times --seal-after
UNSEALED = "\0unit:"  # marks a read of a unit not sealed yet (never a version name)


@dataclass
class UnitState:
    """What the sealer knows of one unit waiting in the spool."""
    unit: Unit
    first_seen: float = field(default_factory=time.time)
    sealing: bool = False
    held: bool = False           # recovered after a crash, or failed: wait for a change
    error: str | None = None
    requested: bool = False      # seal it at once (.seal, ckptfs.seal, ckptfs seal)
    batch: str | None = None     # removed whole before its seal: its batch in spool/removed
    removed_while_sealing: bool = False
    version: str | None = None   # the name its seal under way gives it
    # Failed or held once: if the job removes it, it is let go rather than sealed.
    troubled: bool = False
    # The store could not be reached (an object store down): tried again at retry_at
    # (time.monotonic()), waiting longer after each failure; the inbox keeps the data.
    retry_at: float | None = None
    retries: int = 0
    waiting_for: str | None = None

    def __post_init__(self):
        self.troubled = self.troubled or self.held


@dataclass
class PrepareJob:
    run: tuple
    ino: int


class Sealer:
    """Seals the units of `inbox` (an InboxState: the Inbox of the daemon, or a bare
    state for `ckptfs seal` with no daemon) as they become due."""

    def __init__(self, inbox, seal_after: float):
        self.inbox = inbox
        self.store, self.spool, self.activity = inbox.store, inbox.spool, inbox.activity
        self.seal_after = seal_after
        # A unit of kind files is sealed when quiet and its writer is gone, or after this.
        self.files_seal_after = max(FILES_QUIET_MIN, FILES_QUIET_FACTOR * seal_after)
        self.units: dict[tuple, UnitState] = {}       # (p, r, unit path, batch) -> state
        self.counters = {"versions_sealed": 0, "seal_failures": 0, "bytes_in": 0,
                         "bytes_stored": 0, "bytes_sealed": 0, "ingest_seconds": 0.0,
                         "files_prepared": 0, "files_streamed": 0, "files_reused_at_seal": 0,
                         "sealer_rounds": 0,
                         "seal_retries": 0}
        self.on_sealed = None  # callback(p, r, version, unit path) for cache invalidation
        self.last_sealed: str | None = None
        # Lineage (reads.py): which version each unit became, in the order of its writes.
        self.unit_starts: dict[tuple, list[float]] = {}  # (p, r, pid) -> sealed units' starts
        self.sealed_units: dict[tuple, str] = {}   # (p, r, unit path) -> version it became
        self.sealed_history: dict[tuple, list] = {}  # (p, r) -> [(first write, checkpoint)]
        # Ingest ahead of the seal.
        self.staged: dict[tuple, object] = {}        # (p, r, unit path) -> Ingest begun early
        self.deferred: list[PrepareJob] = []
        self.lane = trio.Lock()                      # one prepare or seal at a time
        self._jobs_in, self._jobs_out = trio.open_memory_channel(float("inf"))
        self._wake = trio.Event()
        self._nursery = None
        self.streams = WriteStreams(self)            # files ingested as they are written

    def recover(self, crashed: bool):
        """Units left in the spool: after a clean stop they seal as usual; after a crash
        they wait for more writes or an explicit seal (a copy may have been cut short).
        A seal whose daemon died after its commit is finished (its spool copy goes)."""
        self.spool.clear_staging()
        if crashed:
            self.discard_packs_of_dead_daemon()
        self.finish_interrupted_seals()
        for p, r in self.spool.runs():
            for unit in self.inbox.units_of(p, r):
                self.units[(p, r, unit.path, None)] = UnitState(unit, held=crashed)
                if crashed:
                    log.warning("inbox %s was left by a daemon that died: it waits for more "
                                "writes or `ckptfs seal`", "/".join((p, r, unit.path)).rstrip("/"))
            for batch, unit in self.spool.removed_batches(p, r):
                self.units[(p, r, unit.path, batch)] = UnitState(unit, requested=True, batch=batch)

    def close(self, daemon: bool):
        for ingest in self.staged.values():   # unsealed units seal on the next mount
            ingest.abort()
        self.staged.clear()
        if daemon:
            records.forget_staged_packs(self.spool)

    async def run(self):
        """Sealing and preparing, until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self.run_sealer)
            nursery.start_soon(self.run_preparer)

    def unit_changed(self, run: tuple, rel: str):
        """Something changed at `rel`: a unit of it that failed, or was held after a
        crash, is released (the job fixed it, or goes on writing it)."""
        for key, state in self.units.items():
            if key[:2] == run and key[3] is None and state.unit.covers(rel):
                if state.error:
                    self.clear_error(key, state)
                state.held = False

    def state_of(self, run: tuple, rel: str) -> "UnitState | None":
        unit = unit_of(self.inbox.units_of(*run), rel)
        return self.units.get((*run, unit.path, None)) if unit else None

    def finish_interrupted_seals(self):
        for path, intent in records.interrupted_intents(self.spool):
            if intent is None:
                # Cut short or damaged: its unit is still in the spool, held; no clean-up.
                log.warning("ignored the damaged seal record spool/sealing/%s",
                            os.path.basename(path))
            elif self.store.version_record(
                    intent["project"], intent["run"], intent["version"]) is not None:
                unit = Unit(intent["unit"], intent["shape"], intent["kind"], ())
                source = intent["source"]
                self.spool.release_sealed(source, unit, intent["staged"])
                if intent.get("batch"):
                    self.spool.drop_batch(intent["project"], intent["run"], intent["batch"])
                log.info("finished the clean-up of %s/%s/%s, sealed before the daemon stopped",
                         intent["project"], intent["run"], intent["version"])
            records.drop_intent(path)

    def discard_packs_of_dead_daemon(self):
        pack_ids = records.staged_packs(self.spool)
        if pack_ids is None:
            return
        dropped = [i for i in pack_ids if self.store.discard_unfinished_pack(i)]
        if dropped:
            log.info("removed %d unfinished pack(s) left by the daemon that died", len(dropped))
        records.forget_staged_packs(self.spool)

    def _note_staged_pack(self, pack_id: int):
        records.note_staged_pack(self.spool, pack_id)

    def error_rel(self, run: tuple, unit: Unit) -> str:
        where = unit.path or unit.name_hint
        return f"{run[0]}/{run[1]}/{where}"

    def clear_error(self, key: tuple, state: UnitState):
        state.error = None
        self.spool.clear_error(self.error_rel(key[:2], state.unit))

    def queue_prepare(self, run: tuple | None, ino: int):
        """The file's writers have closed it (or it was truncated): its stream finishes
        it, else it is prepared from its bytes."""
        if ino in self.activity.open_writers:
            return
        if self.streams.closed(run, ino):
            self.activity.unprepared.discard(ino)
        elif run is not None and ino in self.activity.unprepared:
            self.activity.unprepared.discard(ino)
            self._jobs_in.send_nowait(PrepareJob(run, ino))

    def start_soon(self, fn, *args):
        """Run a task beside the sealer's (the streams' ends)."""
        self._nursery.start_soon(fn, *args)

    def state_for(self, run: tuple, unit: Unit, keep: bool = True) -> UnitState:
        """The unit's state (a new one is kept only with `keep`)."""
        key = (*run, unit.path, None)
        state = self.units.get(key) or UnitState(unit)
        return self.units.setdefault(key, state) if keep else state

    # -- preparing ahead of the seal ----------------------------------------------------------
    async def run_preparer(self):
        async for job in self._jobs_out:
            try:
                await self._prepare(job)
            except (StoreError, OSError) as e:  # e.g. a full disk: the seal reads it again
                log.warning("preparing a file of inbox/%s/%s ahead of its seal failed: %s",
                            *job.run, e)
            except Exception:  # whatever happens, the daemon keeps serving; the seal reads it
                log.exception("preparing a file of inbox/%s/%s failed unexpectedly", *job.run)

    def _earlier_pending(self, run: tuple, unit: Unit, state: UnitState | None,
                         unless=lambda other: False) -> bool:
        """Is a checkpoint that arrived earlier still unsealed? Wait for its seal: until
        then its chunks are not in the index (this one would store them again, whatever
        its run) and, in the same run, it is what this one's tensors are delta-coded
        against. Logs and metrics (kind files) neither wait nor hold others up."""
        if unit.kind != CHECKPOINT or state is None:
            return False
        return any(other is not state and other.first_seen < state.first_seen
                   and other.unit.kind == CHECKPOINT and not other.held and not other.error
                   and not unless(other.unit) for other in self.units.values())

    async def _prepare(self, job: PrepareJob):
        if job.ino in self.activity.open_writers:
            return  # written again: its close queues it again
        async with self.lane:
            # Where the file is now: it may have been renamed while this job waited for
            # the lane (rsync renames each temporary file into place).
            where, generation = self.activity.paths.get(job.ino), self.activity.generations.get(job.ino)
            if where is None or generation is None or where[:2] != job.run:
                return
            run, rel = job.run, where[2]
            unit = unit_of(self.inbox.units_of(*run), rel)
            if unit is None or os.path.basename(rel) == SEAL_MARKER:
                return
            state = self.state_for(run, unit)
            if state.sealing:
                return
            if self._earlier_pending(run, unit, state):
                self.deferred.append(job)
                return
            ingest = self._ingest_for(run, unit, state)
            if ingest is None:
                return
            started = time.monotonic()
            done = await trio.to_thread.run_sync(ingest.prepare_file, inner_path(unit, rel),
                                                 self.inbox.run_path(run, rel), (job.ino, generation),
                                                 job.ino)
            self.counters["ingest_seconds"] += time.monotonic() - started
            self.counters["files_prepared"] += done
        if not done and self._worth_retrying(job.ino, (*run, rel), generation):
            self._jobs_in.send_nowait(job)

    def _ingest_for(self, run: tuple, unit: Unit, state: UnitState):
        key = (*run, unit.path)
        ingest = self.staged.get(key)
        if ingest is not None and ingest.kind != unit.kind:
            ingest.reconsider(unit.kind, self.read_lineage(run, unit, state)[0])
        if ingest is None:
            name = free_version_name(unit.name_hint, functools.partial(self.name_taken, run))
            try:
                ingest = self.store.begin_ingest(*run, name)
            except StoreError:
                return None
            ingest.on_new_pack = self._note_staged_pack
            ingest.kind = unit.kind
            parent, _inputs = self.read_lineage(run, unit, state)
            ingest.preferred_parent = parent
            self.staged[key] = ingest
        return ingest

    def _discard_ingests_of_no_unit(self, units: set):
        """An ingest begun for a unit that is gone (its files removed or moved away;
        a stream begins one before the sealer's round sees the unit) is dropped, unless
        another unit now holds that path: its seal takes the ingest over."""
        for key in [k for k in self.staged if len(k) == 3 and (*k, None) not in units]:
            if not self._within_other_unit(key[:2], key[2]):
                self.discard_staged(key)

    def _within_other_unit(self, run: tuple, path: str) -> bool:
        """Is `path` (a unit that is gone) now part of another unit of the run (a file
        whose directory became a checkpoint directory: `.seal`, `config.json` written)?
        Its ingest is then kept for that unit's seal."""
        return any(u.path != path and u.covers(path) for u in self.inbox.units_of(*run))

    def _ingests_within(self, run: tuple, unit: Unit) -> list:
        """The ingests begun for parts of `unit` when they were units of their own."""
        keys = [key for key in self.staged if len(key) == 3 and key[:2] == run
                and key[2] != unit.path and unit.covers(key[2])]
        return [self.staged.pop(key) for key in keys]

    def _worth_retrying(self, ino: int, where: tuple, generation: int) -> bool:
        """A prepare that gave up: try again if the file was renamed meanwhile, or once
        per content generation (`cp -a` and `rsync -a` set the mtime just after closing,
        which the ingest takes for a change)."""
        if self.activity.paths.get(ino) != where:
            return True
        if self.activity.retried.get(ino) != generation:
            self.activity.retried[ino] = generation
            return True
        return False

    def discard_staged(self, key: tuple):
        """Drop what was prepared for a unit that will not be sealed: at once if no
        prepare is using the ingest now, else when the lane is free."""
        ingest = self.staged.pop(key, None)
        if ingest is not None and not self.lane.locked():
            ingest.abort()
        elif ingest is not None and self._nursery is not None:
            async def abort_when_idle():
                async with self.lane:
                    await trio.to_thread.run_sync(ingest.abort)
            self._nursery.start_soon(abort_when_idle)

    def requeue_deferred(self):
        jobs, self.deferred = self.deferred, []
        for job in jobs:
            self._jobs_in.send_nowait(job)

    def read_lineage(self, run: tuple, unit: Unit, state: UnitState):
        """(parent, inputs) of the unit's version from what its writer read (reads.py).
        Only checkpoints begin a new window for the parent: a log file the writer opened
        since it loaded its weights does not make it forget them."""
        started = self.activity.unit_started(run, unit)
        if started is None or not started[1]:
            return None, []
        until, chain = started
        pid = chain[0][0]
        earlier = [t for t in self.unit_starts.get((*run, pid), []) if t < until]
        for key, other in self.units.items():
            if key[:2] == run and other is not state and other.unit.kind == CHECKPOINT:
                other_start = self.activity.unit_started(run, other.unit)
                if other_start and other_start[1] and other_start[1][0][0] == pid \
                        and other_start[0] < until:
                    earlier.append(other_start[0])
        itself = (*run, UNSEALED + unit.path)
        parent, inputs = self.inbox.reads.lineage(chain, max(earlier, default=float("-inf")), until,
                                            itself=itself)
        parent = self._sealed_as(parent)
        inputs = [v for v in dict.fromkeys(self._sealed_as(v) for v in inputs) if v]
        as_ref = lambda v: {"project": v[0], "run": v[1], "version": v[2]}  # noqa: E731
        if parent is not None:
            return dict(as_ref(parent), source="read"), [as_ref(v) for v in inputs]
        return self._previous_by_write_order(run, unit, until), [as_ref(v) for v in inputs]

    def _previous_by_write_order(self, run: tuple, unit: Unit, until: float) -> dict | None:
        """The checkpoint of the run written last before this one (a rotation that removes
        a later checkpoint seals it first, so the order of seals is not the order of
        writes). None: the store takes its newest checkpoint."""
        if unit.kind != CHECKPOINT:
            return None
        earlier = [(start, version) for start, version in self.sealed_history.get(run, [])
                   if start < until]
        if not earlier:
            return None
        return {"project": run[0], "run": run[1], "version": max(earlier)[1], "source": "previous"}

    def _sealed_as(self, version: tuple | None) -> tuple | None:
        """A version read, or an unsealed unit read (Trainer loads its best checkpoint
        right after writing it): the version that unit was sealed as, if it was."""
        if version is None or not version[2].startswith(UNSEALED):
            return version
        name = self.sealed_units.get((version[0], version[1], version[2][len(UNSEALED):]))
        return (version[0], version[1], name) if name else None

    # -- sealing ------------------------------------------------------------------------------
    def wake(self):
        self._wake.set()

    def name_taken(self, run: tuple, name: str, own=None) -> bool:
        """Is `name` a version, alias or deleted version of the run, or the name another
        unit's ingest (not `own`) was begun under?"""
        return (self.store.version_record(*run, name) is not None
                or self.store.tombstone(*run, name) is not None
                or self.store.name_in_run(*run, name) is not None
                or any(ingest.version == name for key, ingest in self.staged.items()
                       if key[:2] == run and ingest is not own))

    def members_of(self, run: tuple, unit: Unit, batch: str | None) -> tuple[str, list[str]]:
        """(the directory the unit's paths are relative to, its member paths) now."""
        if batch is not None:
            root = self.spool.batch_root(*run, batch)
            members = [p for p in listing_of(root) if unit.covers(p)]
            return root, members
        unit_now = next((u for u in self.inbox.units_of(*run) if u.path == unit.path), None)
        return self.spool.run_dir(*run), list(unit_now.members) if unit_now else []

    def _due(self, run: tuple, key: tuple, state: UnitState, now: float) -> bool:
        if state.sealing or (state.retry_at is not None and now < state.retry_at):
            return False
        root, members = self.members_of(run, state.unit, key[3])
        if key[3] is None and not members:
            return False
        if self.activity.open_members(root, members):
            return False
        marker = any(os.path.basename(m) == SEAL_MARKER for m in members)
        if state.requested or marker:
            return True
        if self.activity.incomplete_members(root, members):
            # A write to it failed (a full disk): it is held until written again.
            state.troubled = state.held = True
            return False
        if state.held or state.error:
            return False
        quiet = now - self.activity.last_change(run, state.unit)
        if state.unit.kind == CHECKPOINT:
            return quiet >= self.seal_after
        # Logs and metrics (TensorBoard closes its file after each flush): sealed once the
        # job that writes them has ended, or after a long quiet; not at every pause.
        return quiet >= self.files_seal_after or (
            quiet >= self.seal_after and not self.activity.writers_alive(run, state.unit))

    def _refresh_units(self):
        """Bring `self.units` in line with what the spool holds."""
        seen = set()
        for run in self.spool.runs():
            for unit in self.inbox.units_of(*run):
                key = (*run, unit.path, None)
                seen.add(key)
                state = self.units.get(key)
                if state is None:
                    self.units[key] = UnitState(unit)
                elif not state.sealing:
                    state.unit = unit
            seen.update((*run, unit.path, batch) for batch, unit in self.spool.removed_batches(*run))
        gone = [k for k, s in self.units.items() if k not in seen and not s.sealing]
        for key in gone:
            if key[3] is None:
                self.spool.clear_error(self.error_rel(key[:2], self.units[key].unit))
            del self.units[key]
        self._discard_ingests_of_no_unit(seen)
        if gone:  # a unit that no longer exists (its files moved on) holds nobody up
            self.requeue_deferred()

    async def run_sealer(self):
        """Seal units as they become due, one at a time, until cancelled."""
        while True:
            with trio.move_on_after(self._next_deadline()):
                await self._wake.wait()
            self._wake = trio.Event()
            self.counters["sealer_rounds"] += 1  # the sealer is alive (stats.json)
            self._take_requests()
            self._refresh_units()
            now = time.monotonic()
            for key in sorted(self.units, key=lambda k: self.units[k].first_seen):
                state = self.units.get(key)
                if state is None or not self._due(key[:2], key, state, now):
                    continue
                try:
                    await self.seal(key)
                except Exception:  # whatever happens, the daemon keeps serving
                    log.exception("sealing inbox/%s failed unexpectedly", "/".join(key[:3]))
                    state.sealing, state.error = False, "unexpected error: see the log"

    def _next_deadline(self) -> float:
        """Seconds until the next unit's quiet period may end (at most 1, at least 0.05)."""
        now = time.monotonic()
        waits = [self.activity.last_change(key[:2], s.unit) + self.seal_after - now
                 for key, s in self.units.items() if not s.held and not s.error and not s.sealing]
        waits += [self.activity.last_change(key[:2], s.unit) + self.files_seal_after - now
                  for key, s in self.units.items() if s.unit.kind != CHECKPOINT
                  and not s.held and not s.error and not s.sealing]
        # A unit past its deadline is sealed already, or waits for a file to be closed
        # (which wakes the sealer): only deadlines still ahead count.
        return min([1.0] + [max(0.05, w) for w in waits if w > 0])

    def _take_requests(self):
        """`ckptfs seal` run beside the daemon leaves its requests in spool/requests."""
        for project, run, rel in take_requests(self.spool):
            self.request((project, run), rel)

    def request(self, run: tuple, rel: str) -> list[tuple]:
        """Seal the units at `rel` of the run now (all of them for ""), held or not:
        `ckptfs seal`. Returns their keys, with those of the units removed there."""
        keys = []
        for unit in units_asked(self.inbox.units_of(*run), rel):
            key = (*run, unit.path, None)
            state = self.units.setdefault(key, UnitState(unit))
            state.requested, state.held = True, False
            keys.append(key)
        return keys + [k for k in self.units if k[:2] == run and k[3] is not None
                       and (not rel or k[2] == rel)]

    async def seal(self, key: tuple):
        # Shielded: an unmount or signal lets a seal that has begun finish (it is atomic
        # in the store, but the spool copy must go once the version is sealed).
        with trio.CancelScope(shield=True):
            await self._seal(key)

    async def _seal(self, key: tuple):
        p, r, unit_path, batch = key
        run = (p, r)
        state = self.units[key]
        unit = state.unit
        state.sealing = True
        state.requested = False  # a request from now on asks for what is written next
        root, members = self.members_of(run, unit, batch)
        marker = [m for m in members if os.path.basename(m) == SEAL_MARKER]
        for m in marker:  # the marker itself is not archived
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(root, m))
        if marker:  # removed behind the inbox's back: its cached listing must not keep it
            self.inbox.bump_structure(run)
        members = [m for m in members if m not in marker]
        staging, staged = await trio.to_thread.run_sync(self.spool.stage, root, unit, members)
        self.activity.stage(staged["files"].values())
        try:
            await self._seal_staged(key, state, root, staging, staged)
        finally:
            self.activity.unstage(staged["files"].values())
            self.spool.unstage(staging)

    async def _seal_staged(self, key, state: UnitState, root: str, staging: str, staged: dict):
        p, r, unit_path, batch = key
        run, unit = (p, r), state.unit
        if unit.shape == GROUP:
            await trio.to_thread.run_sync(self._carry_over, run, unit, staging)
            if unit.path == "":  # the loose files hold a model if a carried file makes them
                files = [e.name for e in os.scandir(staging) if not e.is_dir()]
                kind = CHECKPOINT if is_checkpoint_directory(files) else FILES
                unit = state.unit = dataclasses.replace(unit, kind=kind)
        ingest_key = (*run, unit_path) if batch is None else (*run, unit_path, batch)
        version = free_version_name(unit.name_hint, functools.partial(
            self.name_taken, run, own=self.staged.get(ingest_key)))
        state.version = version
        hidden_ahead = state.removed_while_sealing or (
            batch is not None and self.spool.batch_hides(p, r, batch))
        if hidden_ahead:
            # The job removed it: hidden before its commit, so that no listing shows it
            # again between the commit and the clean-up (a job that lists its checkpoints
            # right after removing one would find it back, and fail to remove it again).
            self.inbox.hide(run, version, "")
        parent, inputs = self.read_lineage(run, unit, state)
        read_lineage = {"inputs": inputs} if inputs else {}
        if parent:
            read_lineage["parent"] = parent
        intent = None
        try:
            async with self.lane:
                ingest = self.staged.pop(ingest_key, None)
                others = self._ingests_within(run, unit) if batch is None else []
                if others:
                    ingest = await trio.to_thread.run_sync(_merged, ingest, others)
                if ingest is not None:
                    ingest.version = version
                    ingest.reconsider(unit.kind, parent)
                intent = records.write_intent(self.spool, {
                    "project": p, "run": r, "version": version, "unit": unit.path,
                    "shape": unit.shape, "kind": unit.kind, "source": root, "staged": staged,
                    "batch": batch})
                started = time.monotonic()
                try:
                    report = await trio.to_thread.run_sync(functools.partial(
                        archive_directory, self.store, staging, p, r, version,
                        provenance=provenance_of_record(self.inbox.provenance_record(run, provenance_key(unit))),
                        ingest=ingest, token_of=self.activity.token_of,
                        read_lineage=read_lineage,
                        annotations=records.load_annotations(self.spool, p, r, unit.path),
                        system={"kind": unit.kind,
                                "inbox": {"path": unit.path, "shape": unit.shape}}))
                except SealRefused:
                    if ingest is not None:  # refused before any use: keep it for the retry
                        self.staged[ingest_key] = ingest
                    raise
                self.counters["ingest_seconds"] += time.monotonic() - started
        except (StoreError, OSError) as e:
            if intent is not None:
                records.drop_intent(intent)
            if hidden_ahead or state.removed_while_sealing:
                self.inbox.unhide(run, version)  # no such version: the name is free again
            if isinstance(e, BackendUnavailableError):
                self._seal_deferred(key, state, e)
            else:
                self._seal_failed(key, state, e)
            return
        # Counted before the spool lets go of it: whoever sees the unit leave the inbox
        # (it shows under projects/ already) finds it in stats.json too.
        self._count_sealed(key, version, report)
        await trio.to_thread.run_sync(self._release_sealed, key, state, root, staged, version)
        records.drop_intent(intent)
        self._sealed_ok(key, state, version, report)

    def _carry_over(self, run: tuple, unit: Unit, staging: str):
        """A snapshot unit (the run's loose files, a folder's files) is archived whole:
        files of its previous version that the working view still shows, and that the
        job did not write again or remove, are restored into the staging directory."""
        view = self.inbox.view(run)
        previous = next((u for u in view.units if u.path == unit.path and u.shape == GROUP), None)
        if previous is None:
            return
        by_path, _children = view.version_entries(previous.version)
        for inner, entry in sorted(by_path.items()):
            if not inner or entry["type"] == "dir" or view.is_hidden(previous, inner):
                continue
            rel = f"{unit.path}/{inner}" if unit.path else inner
            target = os.path.join(staging, inner)
            if os.path.lexists(target) or os.path.lexists(self.inbox.run_path(run, rel)) or \
                    os.path.lexists(os.path.join(self.spool.run_dir(*run, REMOVED), rel)):
                continue
            if _claimed_elsewhere(self.inbox.units_of(*run), unit, rel):
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if entry["type"] == "symlink":
                os.symlink(entry["target"], target)
                continue
            self.inbox.restore_file(entry, target)
            os.chmod(target, entry["mode"])
            os.utime(target, ns=(entry["mtime_ns"], entry["mtime_ns"]))

    def _release_sealed(self, key, state: UnitState, root: str, staged: dict, version: str):
        p, r, unit_path, batch = key
        run, unit = (p, r), state.unit
        hide = state.removed_while_sealing or (
            batch is not None and self.spool.batch_hides(p, r, batch))
        if batch is not None:
            self.spool.drop_batch(p, r, batch)
        else:
            self.spool.release_sealed(root, unit, staged)
            self.spool.drop_removed_members(p, r, unit)
        if hide:
            self.inbox.hide(run, version, "")
        records.drop_annotations(self.spool, p, r, unit_path)

    def _count_sealed(self, key, version: str, report):
        p, r, _unit_path, _batch = key
        self.counters["versions_sealed"] += 1
        self.last_sealed = f"{p}/{r}/{version}"
        self.counters["files_reused_at_seal"] += report.stats.prepared_files
        self.counters["bytes_stored"] += report.stats.new_stored_bytes
        self.counters["bytes_sealed"] += report.stats.logical_bytes

    def _sealed_ok(self, key, state: UnitState, version: str, report):
        p, r, unit_path, batch = key
        run = (p, r)
        started = self.activity.unit_started(run, state.unit)
        if started and started[1] and state.unit.kind == CHECKPOINT:
            self.unit_starts.setdefault((*run, started[1][0][0]), []).append(started[0])
        if started and state.unit.kind == CHECKPOINT:
            self.sealed_history.setdefault(run, []).append((started[0], version))
        self.sealed_units[(p, r, unit_path)] = version
        self.activity.forget_sealed(
            run, state.unit, lambda path: os.path.lexists(self.inbox.run_path(run, path)))
        self.units.pop(key, None)
        self.inbox.bump_structure(run)
        self.inbox.forget_view(run)
        self._keep_request_made_while_sealing(run, state)
        self._forget_provenance_if_done(run, provenance_key(state.unit))
        log.info("sealed %s/%s/%s (written at inbox/%s/%s/%s): %d files (%d prepared ahead), "
                 "%d bytes, %d new stored", p, r, version, p, r, unit_path, report.files,
                 report.stats.prepared_files, report.stats.logical_bytes,
                 report.stats.new_stored_bytes)
        self.requeue_deferred()
        if self.on_sealed:
            self.on_sealed(p, r, version, unit_path)

    def _keep_request_made_while_sealing(self, run: tuple, sealed: UnitState):
        """A job that wrote the unit again and asked for its seal while this seal was
        under way asked it of the state just sealed: the request passes to what waits in
        the spool at that path now, rather than being dropped with the old state."""
        if not sealed.requested:
            return
        for unit in self.inbox.units_of(*run):
            if unit.path == sealed.unit.path:
                key = (*run, unit.path, None)
                self.units.setdefault(key, UnitState(unit)).requested = True
                self.wake()

    def _forget_provenance_if_done(self, run: tuple, top: str):
        """The record of who wrote the run's part under `top` goes once nothing of that
        part is left to seal."""
        if not any(key[:2] == run and provenance_key(state.unit) == top
                   for key, state in self.units.items()):
            self.inbox.forget_provenance(run, top)

    def _seal_deferred(self, key, state: UnitState, error: Exception):
        """The store could not be reached: nothing is lost (the unit stays in the inbox,
        as it was) and the seal is tried again, 2, 4, 8 … up to 60 s later."""
        state.sealing = False
        state.version = None
        state.retries += 1
        state.retry_at = time.monotonic() + min(60.0, 2.0 ** state.retries)
        state.waiting_for = getattr(error, "strerror", None) or str(error)
        self.counters["seal_retries"] += 1
        log.warning("sealing %s waits: %s (try %d; again in %.0f s)", "/".join(key[:3]),
                    error, state.retries, state.retry_at - time.monotonic())
        self.requeue_deferred()

    def _seal_failed(self, key, state: UnitState, error: Exception):
        p, r, unit_path, batch = key
        state.sealing = False
        state.requested = False
        state.version = None
        state.error = str(error)
        state.troubled = True
        self.counters["seal_failures"] += 1
        where = f"{p}/{r}/{unit_path}" if unit_path else f"{p}/{r} (its loose files)"
        log.error("sealing %s failed: %s", where, error)
        self.requeue_deferred()
        if state.removed_while_sealing and batch is None:
            state.removed_while_sealing = False  # removed meanwhile: retry it as removed
            self.remove_whole_unit((p, r), state.unit, REMOVED)
        if batch is not None and getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
            # The job removed it, and the store has no room to keep it: let it go rather
            # than hold the space the job meant to free.
            log.warning("inbox/%s/%s/%s, removed before its seal, could not be sealed on a "
                        "full disk: dropped", p, r, unit_path)
            self.spool.drop_batch(p, r, batch)
            self.units.pop(key, None)
            self.discard_staged((p, r, unit_path, batch))
            return
        try:
            self.spool.write_error(self.error_rel((p, r), state.unit),
                                   f"sealing {where} failed: {error}\n"
                                   "It stays in the inbox: fix it, and it is sealed again once "
                                   "it is quiet (or write a .seal file into it, or call "
                                   "ckptfs.seal on it).")
        except OSError as e:  # e.g. the same full disk: the log and status still say why
            log.error("could not write the error file of inbox/%s/%s/%s: %s", p, r, unit_path, e)

    # -- status ---------------------------------------------------------------------------------
    @staticmethod
    def state_name(state: UnitState) -> str:
        return ("sealing" if state.sealing else "failed" if state.error else "held" if state.held
                else "waiting for the store" if state.retry_at is not None
                else "removed" if state.batch else "pending")

    def public_state(self, run: tuple, state: UnitState, batch: str | None = None) -> str:
        """What `ckptfs status` and `user.ckptfs.state` say: a pending unit is `writing`
        while a file of it is open, else `quiet`."""
        name = self.state_name(state)
        if name == "pending":
            root, members = self.members_of(run, state.unit, batch)
            name = "writing" if self.activity.open_members(root, members) else "quiet"
        return name

    def status(self) -> list[dict]:
        now = time.time()
        out = []
        for (p, r, path, batch), state in sorted(self.units.items(), key=lambda kv: kv[1].first_seen):
            root, members = self.members_of((p, r), state.unit, batch)
            if not members and batch is None:
                continue
            name = self.public_state((p, r), state, batch)
            out.append({"version": f"{p}/{r}/{path}".rstrip("/") if path else f"{p}/{r}",
                        "path": path, "kind": state.unit.kind,
                        "age_seconds": round(now - state.first_seen, 1),
                        "state": name, "error": state.error or state.waiting_for})
        for rel in self.spool.refusals():
            out.append({"version": rel, "path": None, "kind": None,
                        "age_seconds": None, "state": "refused",
                        "error": self.spool.error_line(rel)})
        return out

    def run_state(self, run: tuple) -> dict:
        """The run directory's state: "sealed" once nothing of it waits in the spool."""
        waiting = {key[2]: self.state_name(s) for key, s in self.units.items() if key[:2] == run
                   and (key[3] is not None or self.members_of(run, s.unit, None)[1])}
        failed = {path: self.units[(*run, path, None)].error for path, name in waiting.items()
                  if name == "failed" and (*run, path, None) in self.units}
        if failed:
            return {"state": "failed", "pending": sorted(waiting),
                    "error": "; ".join(f"{p or '(loose files)'}: {e}" for p, e in failed.items())}
        return {"state": "sealed" if not waiting else "pending", "pending": sorted(waiting)}

    def remove_whole_unit(self, run: tuple, unit: Unit, area: str, hide: bool = True):
        """The job removed a unit that is not sealed yet: seal it now, then hide it (one
        that failed, or was held after a crash, is let go: the job gave up on it). With
        `hide` False, another process is writing a checkpoint file anew over it: the old
        content is sealed first, the new one stays where it is."""
        state = self.units.get((*run, unit.path, None))
        if state is not None and state.troubled and not state.sealing:
            log.info("inbox/%s/%s/%s was removed; it had failed to seal or was held since a "
                     "daemon died: not sealed", *run, unit.path)
            self.discard_files(run, unit, area)
            return
        if state is not None and state.sealing:
            # Its seal reads a staged copy: move it aside; the seal's end hides it.
            source = os.path.join(self.spool.run_dir(*run, area), unit.path)
            target = os.path.join(self.spool.run_dir(*run, REMOVED), unit.path)
            if source != target:
                os.makedirs(os.path.dirname(target), exist_ok=True)
                os.replace(source, target)
            state.removed_while_sealing = True
            if state.version is not None:  # not shown again once its seal commits
                self.inbox.hide(run, state.version, "")
            return
        try:
            batch = self.spool.detach_removed(*run, unit, area, hide=hide)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            log.warning("the store's disk is full: inbox/%s/%s/%s removed before its seal, "
                        "without sealing it", *run, unit.path)
            self.discard_files(run, unit, area)
            return
        self.units.pop((*run, unit.path, None), None)
        self.units[(*run, unit.path, batch)] = UnitState(
            unit, requested=True, batch=batch,
            first_seen=state.first_seen if state else time.time())
        staged = self.staged.pop((*run, unit.path), None)
        if staged is not None:
            self.staged[(*run, unit.path, batch)] = staged
        log.info("inbox/%s/%s/%s was %s before its seal: sealing it now", *run, unit.path,
                 "removed" if hide else "overwritten by another process")
        self.wake()

    def discard_files(self, run: tuple, unit: Unit, area: str):
        """Let a removed unit go without sealing it."""
        source = os.path.join(self.spool.run_dir(*run, area), unit.path)
        if os.path.isdir(source) and not os.path.islink(source):
            shutil.rmtree(source, ignore_errors=True)
        elif os.path.lexists(source):
            os.unlink(source)
        state = self.units.pop((*run, unit.path, None), None)
        if state is not None and state.error:
            self.clear_error((*run, unit.path, None), state)
        self.discard_staged((*run, unit.path))


def _merged(ingest, others: list):
    """One ingest for a unit from those begun for its parts (on a worker thread: the
    streams of their files are waited for)."""
    for other in others:
        if ingest is None:
            other.settle_streams()
            ingest = other
        elif not ingest.adopt(other):
            other.abort()  # delta-coded against another parent: its files are read again
    return ingest


def _claimed_elsewhere(units: list[Unit], group: Unit, rel: str) -> bool:
    return any(u is not group and u.path != group.path and u.covers(rel) for u in units)


