"""The writable inbox: each `inbox/<project>/<run>/` is a training job's working directory.

A job points its output directory at `inbox/<p>/<r>/` and writes what it always writes
(docs/mount.md, "Training straight into the mount"). What it writes goes to real files
under `STORE/spool/inbox/` (never to memory, and it survives the daemon dying). The
rules of meta/layout.py cut the run directory into units: checkpoint directories,
checkpoint files, the run's loose files, the files of its folders. A unit is sealed as a
version of the run (through `archive_directory`, the same path as `ckptfs import`) once
no file of it is open and nothing in it changed for the quiet period, at once when asked
(a `.seal` file, `ckptfs.seal(path)`, `ckptfs seal`), or when the job removes it.

After the seal, the job still finds what it wrote where it wrote it: the working view
lays the spool over the run's sealed versions (workview.py), each where it was written.
A sealed checkpoint directory is read-only there (EROFS); a checkpoint file or a loose
file can be written again (the next version of it). Removing sealed content only hides
it from the working view: the archive keeps every version.

Ingest starts before the seal: a file is prepared (chunked, deduplicated, compressed,
packed) on a worker thread once its last writer closes it, into the ingest of its unit;
the seal then only reads what changed since. Prepare and seal take turns on one lane.
"""
import dataclasses
import errno
import functools
import json
import logging
import os
import shutil
import stat
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import pyfuse3
import trio

from ckptfs.meta.errors import SealRefused
from ckptfs.meta.layout import (CHECKPOINT, DIR, FILE, FILES, GROUP, SEAL_MARKER, Unit,
                                free_version_name, is_checkpoint_directory,
                                looks_like_job_output, unit_of)
from ckptfs.meta.provenance import describe_process
from ckptfs.meta.seal import archive_directory, deep_merge, env_allow_list
from ckptfs.meta.user import clean_document
from ckptfs.store import StoreError
from ckptfs.store.names import InvalidNameError, validate_name

from .reads import ReadTracker, process_chain, process_start
from .spool import (ANNOTATIONS, ERROR_SUFFIX, INBOX, PROVENANCE, REMOVED, REQUESTS, SEALING,
                    Spool, inner_path, read_json, unit_key, write_json_atomically)
from .tree import Node
from .workview import RunView

log = logging.getLogger("ckptfs.inbox")

RUNNING_MARKER = "daemon.running"
STAGED_PACKS = "staged-packs"   # ids of packs opened ahead of a seal, one per line (hex)
MAX_OTHER_WRITERS = 8
XATTR_SEAL = b"user.ckptfs.seal"
XATTR_ANNOTATE = b"user.ckptfs.annotate"
XATTR_STATE = b"user.ckptfs.state"
XATTR_VERSION = b"user.ckptfs.version"
FILES_QUIET_MIN, FILES_QUIET_FACTOR = 60.0, 12  # seconds; times --seal-after
UNSEALED = "\0unit:"  # marks a read of a unit not sealed yet (never a version name)


def provenance_path(spool_path: str, project: str, run: str, top: str) -> str:
    """Who wrote the part of run p/r under its top-level entry `top` ("": loose files)."""
    return os.path.join(spool_path, PROVENANCE, project, run, unit_key(top) + ".json")


def load_provenance_record(path: str) -> dict:
    record = read_json(path)
    if not isinstance(record, dict):
        return {"writer": None, "others": [], "seen": []}
    return record


def provenance_of_record(record: dict) -> dict:
    """The `provenance` a version's sidecar gets from its spooled record."""
    provenance = dict(record.get("writer") or {"via": "mount", "unknown": True})
    if record.get("others"):
        provenance["other_writers"] = record["others"]
    return provenance


def give_to_caller(path: str, ctx):
    """A daemon running as root makes what a user writes into the inbox that user's, so
    `ls -l inbox/…` shows who wrote it (ownership is not archived)."""
    if ctx is None or os.geteuid() != 0 or ctx.uid == 0:
        return
    try:
        os.lchown(path, ctx.uid, ctx.gid)
    except OSError as e:
        log.debug("could not give %s to uid %d: %s", path, ctx.uid, e)


def printable(name: str) -> str:
    """A name as it can stand in one log line: quoted only if it holds control characters."""
    return name if name.isprintable() else repr(name)


def top_of(rel: str) -> str:
    """The provenance key of a path in a run directory: its top-level directory, or ""
    for the files directly in the run directory."""
    return rel.split("/", 1)[0] if "/" in rel else ""


def provenance_key(unit: Unit) -> str:
    """The provenance key of a unit's files (see top_of)."""
    if unit.shape == DIR or (unit.shape == GROUP and unit.path):
        return unit.path.split("/", 1)[0]
    return top_of(unit.path)


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
    # Failed or held once: if the job removes it, it is let go rather than sealed.
    troubled: bool = False

    def __post_init__(self):
        self.troubled = self.troubled or self.held


@dataclass
class InboxFile:
    fd: int
    key: tuple
    ino: int
    writable: bool


@dataclass
class PrepareJob:
    run: tuple
    ino: int


class Inbox:
    def __init__(self, store, seal_after: float = 5.0, daemon: bool = True):
        self.store = store
        self.seal_after = seal_after
        # A unit of kind files is sealed when quiet and its writer is gone, or after this.
        self.files_seal_after = max(FILES_QUIET_MIN, FILES_QUIET_FACTOR * seal_after)
        self.spool = Spool(store.path)
        self.root = self.spool.inbox
        self.reads = ReadTracker()
        self.units: dict[tuple, UnitState] = {}       # (p, r, unit path, batch) -> state
        self.counters = {"versions_sealed": 0, "seal_failures": 0, "bytes_in": 0,
                         "bytes_stored": 0, "bytes_sealed": 0, "ingest_seconds": 0.0,
                         "files_prepared": 0, "files_reused_at_seal": 0}
        self.on_sealed = None  # callback(p, r, version, unit path) for cache invalidation
        # Per run: when each path last changed, who created it and when (lineage).
        self.changed: dict[tuple, dict[str, float]] = {}
        self.created: dict[tuple, dict[str, tuple[float, list]]] = {}
        self.unit_starts: dict[tuple, list[float]] = {}  # (p, r, pid) -> sealed units' starts
        self.sealed_units: dict[tuple, str] = {}   # (p, r, unit path) -> version it became
        self.sealed_history: dict[tuple, list] = {}  # (p, r) -> [(first write, checkpoint)]
        self._listings: dict[tuple, tuple[int, list[Unit]]] = {}
        self._structure: dict[tuple, int] = {}      # (p, r) -> bumped by every structure change
        self._hidden: dict[tuple, dict[str, set[str]]] = {}
        self._views: dict[tuple, tuple[int, RunView]] = {}
        self._view_entries = OrderedDict()
        # Ingest ahead of the seal.
        self.staged: dict[tuple, object] = {}        # (p, r, unit path) -> Ingest begun early
        self.generation = 0
        self.generations: dict[int, int] = {}        # spool inode -> generation of its content
        self.paths: dict[int, tuple] = {}            # spool inode -> (p, r, rel)
        self.open_handles: dict[int, int] = {}       # spool inode -> handles open on it
        self.open_writers: dict[int, int] = {}       # spool inode -> handles open for writing
        self.staged_inodes: dict[int, int] = {}      # spool inode -> seals reading it now
        self.unprepared: set[int] = set()
        self.incomplete: set[int] = set()            # spool inodes a write to failed
        self.retried: dict[int, int] = {}
        self.deferred: list[PrepareJob] = []
        self.lane = trio.Lock()                      # one prepare or seal at a time
        self.writers: dict[tuple, dict] = {}         # (p, r, top) -> provenance record
        self.mountpoint: str | None = None
        self._jobs_in, self._jobs_out = trio.open_memory_channel(float("inf"))
        self._wake = trio.Event()
        self._nursery = None
        self.daemon = daemon          # False: `ckptfs seal` with no daemon running
        self.last_sealed: str | None = None
        self._recover_after_restart()

    # -- startup / shutdown ---------------------------------------------------------------
    def _recover_after_restart(self):
        """Units left in the spool: after a clean stop they seal as usual; after a crash
        they wait for more writes or an explicit seal (a copy may have been cut short).
        A seal whose daemon died after its commit is finished (its spool copy goes)."""
        marker = os.path.join(self.spool.path, RUNNING_MARKER)
        crashed = self.daemon and os.path.exists(marker)
        self.spool.clear_staging()
        if crashed:
            self._discard_packs_of_dead_daemon()
        self._finish_interrupted_seals()
        for p, r in self.spool.runs():
            for unit in self._units_of(p, r):
                self.units[(p, r, unit.path, None)] = UnitState(unit, held=crashed)
                if crashed:
                    log.warning("inbox %s was left by a daemon that died: it waits for more "
                                "writes or `ckptfs seal`", "/".join((p, r, unit.path)).rstrip("/"))
            for batch, unit in self.spool.removed_batches(p, r):
                self.units[(p, r, unit.path, batch)] = UnitState(unit, requested=True, batch=batch)
        if self.daemon:
            with open(marker, "w") as f:
                f.write(str(os.getpid()))

    def _finish_interrupted_seals(self):
        base = self.spool.area(SEALING)
        for name in sorted(os.listdir(base)) if os.path.isdir(base) else []:
            intent = read_json(os.path.join(base, name))
            if isinstance(intent, dict) and self.store.version_record(
                    intent["project"], intent["run"], intent["version"]) is not None:
                unit = Unit(intent["unit"], intent["shape"], intent["kind"], ())
                source = intent["source"]
                self.spool.release_sealed(source, unit, intent["staged"])
                if intent.get("batch"):
                    self.spool.drop_batch(intent["project"], intent["run"], intent["batch"])
                log.info("finished the clean-up of %s/%s/%s, sealed before the daemon stopped",
                         intent["project"], intent["run"], intent["version"])
            os.unlink(os.path.join(base, name))

    def _discard_packs_of_dead_daemon(self):
        listing = os.path.join(self.spool.path, STAGED_PACKS)
        try:
            with open(listing) as f:
                pack_ids = [int(line, 16) for line in f if line.strip()]
        except FileNotFoundError:
            return
        dropped = [i for i in pack_ids if self.store.discard_unfinished_pack(i)]
        if dropped:
            log.info("removed %d unfinished pack(s) left by the daemon that died", len(dropped))
        os.unlink(listing)

    def _note_staged_pack(self, pack_id: int):
        with open(os.path.join(self.spool.path, STAGED_PACKS), "a") as f:
            f.write(f"{pack_id:08x}\n")

    def close(self):
        for ingest in self.staged.values():   # unsealed units seal on the next mount
            ingest.abort()
        self.staged.clear()
        for name in (STAGED_PACKS, RUNNING_MARKER) if self.daemon else ():
            try:
                os.unlink(os.path.join(self.spool.path, name))
            except FileNotFoundError:
                pass

    async def run(self):
        """The inbox's background work until cancelled: sealing and preparing."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self.run_sealer)
            nursery.start_soon(self.run_preparer)
            nursery.start_soon(self._forget_dead_readers)

    async def _forget_dead_readers(self):
        while True:
            await trio.sleep(60)
            self.reads.forget_dead()

    # -- keys, paths and units ----------------------------------------------------------------
    @staticmethod
    def parts(key: tuple) -> list[str]:
        return key[1].split("/") if key[1] else []

    @staticmethod
    def child(parent: tuple, name: str) -> tuple:
        return ("inbox", f"{parent[1]}/{name}" if parent[1] else name)

    def split(self, key: tuple) -> tuple[tuple | None, str]:
        """((p, r), path in the run directory) of a key below a run; (None, "") above."""
        parts = self.parts(key)
        if len(parts) < 2:
            return None, ""
        return (parts[0], parts[1]), "/".join(parts[2:])

    def spool_path(self, key: tuple) -> str:
        return os.path.join(self.root, key[1]) if key[1] else self.root

    def run_path(self, run: tuple, rel: str) -> str:
        return os.path.join(self.root, run[0], run[1], rel) if rel else \
            os.path.join(self.root, run[0], run[1])

    def _bump_structure(self, run: tuple):
        self._structure[run] = self._structure.get(run, 0) + 1

    def _units_of(self, p: str, r: str) -> list[Unit]:
        generation = self._structure.get((p, r), 0)
        cached = self._listings.get((p, r))
        if cached is None or cached[0] != generation:
            cached = self._listings[(p, r)] = (generation, self.spool.units(p, r))
        return cached[1]

    def _unit_state_of(self, run: tuple, rel: str) -> UnitState | None:
        unit = unit_of(self._units_of(*run), rel)
        return self.units.get((*run, unit.path, None)) if unit else None

    # -- the working view of sealed versions -------------------------------------------------
    def hidden(self, run: tuple) -> dict[str, set[str]]:
        if run not in self._hidden:
            self._hidden[run] = self.spool.hidden(*run)
        return self._hidden[run]

    def _hide(self, run: tuple, version: str, inner: str):
        hidden = self.hidden(run)
        paths = hidden.setdefault(version, set())
        if "" in paths:
            return
        if inner == "":
            paths.clear()
        paths.add(inner)
        self.spool.save_hidden(*run, hidden)
        self._views.pop(run, None)

    def view(self, run: tuple) -> RunView:
        """The sealed part of the run's working view, as of the catalog now."""
        seq = self.store.applied_seq()
        cached = self._views.get(run)
        if cached is None or cached[0] != seq:
            # A version's entries never change (names are never reused), so they are
            # cached across catalog changes.
            cached = self._views[run] = (seq, RunView(self.store, *run, self.hidden(run),
                                                      self._view_entries))
        return cached[1]

    def _sealed(self, run: tuple, rel: str):
        return self.view(run).lookup(rel) if rel else None

    # -- nodes and listings -------------------------------------------------------------------
    def node(self, key: tuple) -> Node | None:
        try:
            st = os.lstat(self.spool_path(key))
        except (FileNotFoundError, NotADirectoryError):
            st = None
        except OSError as e:
            if e.errno != errno.ENAMETOOLONG:
                raise
            st = None  # a name the rules refuse anyway (with their own errno)
        if st is not None:
            return self._spool_node(key, st)
        run, rel = self.split(key)
        if run is not None:
            found = self._sealed(run, rel)
            if found is not None:
                return self._sealed_node(key, run, found)
            if rel == "" and self.store.versions(*run):
                return Node(key, "dir", 0o755, mtime_ns=time.time_ns())
        elif len(self.parts(key)) == 1 and self.store.runs(key[1]):
            return Node(key, "dir", 0o755, mtime_ns=time.time_ns())
        return self._error_node(key)

    def _spool_node(self, key: tuple, st) -> Node:
        kind = "dir" if stat.S_ISDIR(st.st_mode) else "symlink" if stat.S_ISLNK(st.st_mode) else "file"
        node = Node(key, kind, stat.S_IMODE(st.st_mode), st.st_size if kind != "dir" else 0,
                    st.st_mtime_ns, uid=st.st_uid, gid=st.st_gid)
        if kind == "symlink":
            node.target = os.readlink(self.spool_path(key))
        return node

    def _sealed_node(self, key: tuple, run: tuple, found) -> Node:
        node = Node(key, found.kind, found.mode, found.size, found.mtime_ns, target=found.target,
                    entry=found.entry, subdirs=found.subdirs)
        if found.unit is not None:
            node.uid = found.unit.uid
            node.origin = (*run, found.unit.version, found.inner)
        return node

    def _error_node(self, key: tuple) -> Node | None:
        if not key[1].endswith(ERROR_SUFFIX):
            return None
        path = self.spool.area("errors", key[1])
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return Node(key, "file", 0o444, st.st_size, st.st_mtime_ns, source_path=path)

    def child_key(self, parent: tuple, name: str) -> tuple | None:
        key = self.child(parent, name)
        return key if self.node(key) is not None else None

    def children(self, key: tuple) -> list[tuple[str, tuple]]:
        names: set[str] = set()
        try:
            names.update(os.listdir(self.spool_path(key)))
        except (FileNotFoundError, NotADirectoryError):
            pass
        run, rel = self.split(key)
        depth = len(self.parts(key))
        if run is not None:
            names.update(self.view(run).children(rel))
        elif depth == 0:
            names.update(self.store.projects())
        elif depth == 1:
            names.update(self.store.runs(key[1]))
        names.update(self.spool.error_names(key[1]))
        return [(n, self.child(key, n)) for n in sorted(names, key=os.fsencode)]

    # -- rules --------------------------------------------------------------------------------
    def _refuse_wrong_depth(self, parent: tuple, name: str, is_dir: bool):
        """Only projects in inbox/ and runs in inbox/<p>/, with valid names that do not
        look like what a job writes inside its run directory (a job pointed too high
        fails at its first mkdir or create, with an error file that says why)."""
        depth = len(self.parts(parent))
        what = ("project", "run")[depth]
        where = "inbox/" + parent[1] if parent[1] else "inbox"
        reason = None
        if not is_dir:
            reason = (f"a file cannot be written directly in {where}: only {what} directories "
                      "belong there")
        elif looks_like_job_output(name):
            reason = (f"{name!r} looks like what a training job writes inside its run "
                      f"directory, not like a {what} name")
        if reason is None:
            try:
                validate_name(name, what)
                return
            except InvalidNameError as e:
                log.warning("refused %s/%s: %s", where, printable(name), e)
                raise pyfuse3.FUSEError(errno.EINVAL) from None
        hint = ("point the job's output directory at inbox/<project>/<run>/ (e.g. Trainer "
                "output_dir, Lightning dirpath, accelerate project_dir)")
        message = f"refused {where}/{name}: {reason}; {hint}"
        log.warning("%s", printable(message))
        self.spool.write_error(f"{parent[1]}/{name}" if parent[1] else name, message)
        raise pyfuse3.FUSEError(errno.EPERM)

    def _check_new(self, parent: tuple, name: str, is_dir: bool) -> tuple[tuple, str]:
        """Checks for creating `name` in `parent`; returns (run, path in it)."""
        if len(self.parts(parent)) < 2:
            self._refuse_wrong_depth(parent, name, is_dir)
            return None, ""
        run, parent_rel = self.split(parent)
        rel = f"{parent_rel}/{name}" if parent_rel else name
        self._refuse_in_sealed_directory(run, parent_rel)
        self._refuse_while_sealing(run, rel)
        return run, rel

    def _refuse_in_sealed_directory(self, run: tuple, rel_dir: str):
        """Nothing may be added to a sealed checkpoint directory (EROFS)."""
        if not rel_dir or os.path.isdir(self.run_path(run, rel_dir)):
            return
        found = self._sealed(run, rel_dir)
        if found is not None and found.unit is not None and found.unit.read_only:
            log.warning("refused a change in inbox/%s/%s/%s: %s is sealed (version %s); "
                        "write a new checkpoint directory instead", *run, rel_dir,
                        found.unit.path, found.unit.version)
            raise pyfuse3.FUSEError(errno.EROFS)

    def _refuse_while_sealing(self, run: tuple, rel: str):
        """A checkpoint directory being sealed refuses changes (EBUSY); other units take
        them (what they seal was staged already)."""
        state = self._unit_state_of(run, rel)
        if state is not None and state.sealing and state.unit.shape == DIR:
            log.warning("refused a change to inbox/%s/%s/%s: it is being sealed", *run, rel)
            raise pyfuse3.FUSEError(errno.EBUSY)

    def _materialize_dirs(self, run: tuple, rel_dir: str):
        """Make the spool hold the directories down to `rel_dir`, which the working view
        may show from sealed versions only (a new file in a sealed folder of logs)."""
        if not rel_dir or os.path.isdir(self.run_path(run, rel_dir)):
            os.makedirs(self.run_path(run, rel_dir), exist_ok=True)
            return
        parts = rel_dir.split("/")
        for i in range(1, len(parts) + 1):
            path = self.run_path(run, "/".join(parts[:i]))
            if not os.path.isdir(path):
                found = self._sealed(run, "/".join(parts[:i]))
                os.makedirs(path, exist_ok=True)
                if found is not None:
                    os.chmod(path, found.mode | 0o200)

    # -- change tracking ------------------------------------------------------------------------
    def _touched(self, run: tuple, rel: str):
        """Content changed (a write: on the hot path, so nothing more)."""
        self.changed.setdefault(run, {})[rel] = time.monotonic()

    def _changed(self, run: tuple, rel: str):
        """Something changed at `rel`: its quiet period starts again, and a unit that
        failed or was held after a crash is released (the job fixed it, or goes on)."""
        self._touched(run, rel)
        for key, state in self.units.items():
            if key[:2] == run and key[3] is None and _covers(state.unit, rel):
                if state.error:
                    self._clear_error(key, state)
                state.held = False

    def _created(self, run: tuple, rel: str, ctx):
        chain = process_chain(ctx.pid) if ctx is not None else []
        self.created.setdefault(run, {})[rel] = (time.monotonic(), chain)

    def _bump(self, ino: int):
        self.generation += 1
        self.generations[ino] = self.generation
        self.unprepared.add(ino)

    def _queue_prepare(self, run: tuple | None, ino: int):
        if run is not None and ino in self.unprepared and ino not in self.open_writers:
            self.unprepared.discard(ino)
            self._jobs_in.send_nowait(PrepareJob(run, ino))

    def _error_rel(self, run: tuple, unit: Unit) -> str:
        where = unit.path or unit.name_hint
        return f"{run[0]}/{run[1]}/{where}"

    def _clear_error(self, key: tuple, state: UnitState):
        state.error = None
        self.spool.clear_error(self._error_rel(key[:2], state.unit))

    # -- provenance: who writes each part of a run -------------------------------------------
    def _provenance_record(self, run: tuple, top: str) -> dict:
        record = self.writers.get((*run, top))
        if record is None:
            record = self.writers[(*run, top)] = load_provenance_record(
                provenance_path(self.spool.path, *run, top))
        return record

    async def _note_writer(self, run: tuple, rel: str, ctx):
        """Record the process creating a file while it waits for our reply (so it cannot
        be gone yet): the first becomes the provenance of what it writes under this
        top-level entry of the run, a few more are listed. Kept in the spool."""
        if ctx is None:
            return
        top = top_of(rel)
        record = self._provenance_record(run, top)
        if ctx.pid in record["seen"] or len(record["seen"]) > 4 * MAX_OTHER_WRITERS:
            return
        env_allow = env_allow_list(self.store, run[0])
        described = await trio.to_thread.run_sync(describe_process, ctx.pid, env_allow,
                                                  self.mountpoint)
        described["via"] = "mount"
        record["seen"] = sorted(set(record["seen"]) | {ctx.pid, described.get("pid")} - {None})
        if record["writer"] is None:
            record["writer"] = described
        elif described.get("pid") != record["writer"].get("pid") and \
                all(o.get("pid") != described.get("pid") for o in record["others"]) and \
                len(record["others"]) < MAX_OTHER_WRITERS:
            record["others"].append({k: described.get(k) for k in ("pid", "executable", "command_line")})
        write_json_atomically(provenance_path(self.spool.path, *run, top), record)

    def _forget_provenance(self, run: tuple, top: str):
        """When nothing of the run under `top` is left to seal."""
        if any(key[:2] == run and provenance_key(state.unit) == top
               for key, state in self.units.items()):
            return
        self.writers.pop((*run, top), None)
        try:
            os.unlink(provenance_path(self.spool.path, *run, top))
        except FileNotFoundError:
            pass

    # -- operations -----------------------------------------------------------------------------
    async def create(self, parent, name, mode, flags, ctx):
        run, rel = self._check_new(parent, name, is_dir=False)
        key = self.child(parent, name)
        await self._note_writer(run, rel, ctx)
        self._materialize_dirs(run, rel.rpartition("/")[0])
        self._replace_staged(self.spool_path(key), keep_content=False)
        fd = os.open(self.spool_path(key), (flags & ~os.O_APPEND) | os.O_CREAT, stat.S_IMODE(mode))
        os.fchmod(fd, stat.S_IMODE(mode))  # the writer's umask is applied; not ours again
        give_to_caller(self.spool_path(key), ctx)
        self._created(run, rel, ctx)
        self._changed(run, rel)
        self._bump_structure(run)
        handle = self._opened(fd, key, writable=True)
        self._bump(handle.ino)
        if name == SEAL_MARKER:
            self._wake_sealer()
        return key, handle

    async def open(self, key, flags, ctx):
        """A spool file (InboxFile), or a sealed one to read (its Node): writing to a
        sealed file first copies it into the spool (EROFS in a checkpoint directory)."""
        writable = bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC))
        path = self.spool_path(key)
        if not os.path.lexists(path):
            node = self.node(key)
            if node is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            if not writable:
                if node.kind != "file":
                    raise pyfuse3.FUSEError(errno.EISDIR if node.kind == "dir" else errno.EINVAL)
                return node
            await self._copy_up(key, node, truncate=bool(flags & os.O_TRUNC), ctx=ctx)
        run, rel = self.split(key)
        if writable:
            if run is None:
                raise pyfuse3.FUSEError(errno.EROFS)  # an error file
            self._refuse_while_sealing(run, rel)
            self._replace_staged(path, keep_content=not flags & os.O_TRUNC)
        fd = os.open(path, flags & ~(os.O_APPEND | os.O_CREAT | os.O_EXCL))
        handle = self._opened(fd, key, writable)
        if flags & os.O_TRUNC:
            self._changed(run, rel)
            self._bump(handle.ino)
            self.incomplete.discard(handle.ino)
        return handle

    async def _copy_up(self, key: tuple, node: Node, truncate: bool, ctx):
        """Bring a sealed file into the spool so it can be written: the job rewrites a
        checkpoint file or a loose file it wrote before (its new content is sealed as
        the next version of it). A sealed checkpoint directory stays read-only."""
        run, rel = self.split(key)
        found = self._sealed(run, rel) if run else None
        if found is None or found.kind != "file" or found.unit is None:
            raise pyfuse3.FUSEError(errno.EROFS)
        if found.unit.read_only:
            log.warning("refused writing inbox/%s: it is part of the sealed checkpoint "
                        "directory %s (version %s)", key[1], found.unit.path, found.unit.version)
            raise pyfuse3.FUSEError(errno.EROFS)
        await self._note_writer(run, rel, ctx)
        self._materialize_dirs(run, rel.rpartition("/")[0])
        target = self.spool_path(key)
        tmp = f"{target}.ckptfs-copy-up"
        if truncate:
            with open(tmp, "wb"):
                pass
        else:
            await trio.to_thread.run_sync(self._restore_file, found.entry, tmp)
        os.chmod(tmp, found.mode)
        os.utime(tmp, ns=(found.mtime_ns, found.mtime_ns))
        give_to_caller(tmp, ctx)
        os.rename(tmp, target)
        self._created(run, rel, ctx)
        self._changed(run, rel)
        self._bump_structure(run)

    def _restore_file(self, entry: dict, target: str):
        with open(target, "wb") as f:
            for piece in self.store.iter_file_checked(entry):
                f.write(piece)

    def _replace_staged(self, path: str, keep_content: bool):
        """Before a spool file that a seal is reading changes, give the path a new inode
        (a copy, or an empty file when it is truncated anyway): the seal reads the
        content as it was when the unit was staged."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if st.st_ino not in self.staged_inodes or not stat.S_ISREG(st.st_mode):
            return
        tmp = f"{path}.ckptfs-cow"
        if keep_content:
            shutil.copy2(path, tmp)
        else:
            with open(tmp, "wb"):
                pass
            os.chmod(tmp, stat.S_IMODE(st.st_mode))
        os.chown(tmp, st.st_uid, st.st_gid) if os.geteuid() == 0 else None
        os.rename(tmp, path)

    def _opened(self, fd, key, writable: bool) -> InboxFile:
        ino = os.fstat(fd).st_ino
        self.open_handles[ino] = self.open_handles.get(ino, 0) + 1
        run, rel = self.split(key)
        if writable:
            self.open_writers[ino] = self.open_writers.get(ino, 0) + 1
        if run is not None:
            self.paths[ino] = (*run, rel)
        return InboxFile(fd, key, ino, writable)

    async def read(self, handle: InboxFile, off, size):
        return os.pread(handle.fd, size, off)

    async def write(self, handle: InboxFile, off, buf):
        try:
            written = os.pwrite(handle.fd, buf, off)
        except OSError:
            self.incomplete.add(handle.ino)  # e.g. a full disk: the file was cut short
            raise
        self.counters["bytes_in"] += written
        where = self.paths.get(handle.ino)
        if where is not None:
            self._touched(where[:2], where[2])
        self._bump(handle.ino)
        return written

    async def fsync(self, handle: InboxFile, datasync):
        await trio.to_thread.run_sync(os.fdatasync if datasync else os.fsync, handle.fd)

    async def release(self, handle: InboxFile):
        os.close(handle.fd)
        for table in (self.open_handles, self.open_writers) if handle.writable else (self.open_handles,):
            left = table.get(handle.ino, 1) - 1
            if left > 0:
                table[handle.ino] = left
            else:
                table.pop(handle.ino, None)
        where = self.paths.get(handle.ino)
        self._queue_prepare(where[:2] if where else None, handle.ino)
        if handle.ino not in self.open_handles:
            self._wake_sealer()

    async def setattr(self, key, attr, fields, fh, ctx):
        path = self.spool_path(key)
        run, rel = self.split(key)
        if run is None:
            raise pyfuse3.FUSEError(errno.EPERM)
        if not os.path.lexists(path):
            node = self.node(key)
            if node is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            if node.kind != "file":
                raise pyfuse3.FUSEError(errno.EROFS)
            await self._copy_up(key, node, truncate=fields.update_size and attr.st_size == 0, ctx=ctx)
        self._refuse_while_sealing(run, rel)
        self._replace_staged(path, keep_content=not (fields.update_size and attr.st_size == 0))
        if fields.update_size:
            os.truncate(path, attr.st_size)
            ino = os.lstat(path).st_ino
            if attr.st_size == 0:
                self.incomplete.discard(ino)
            self._bump(ino)
            self.paths[ino] = (*run, rel)
            self._queue_prepare(run, ino)  # `truncate FILE`: no write follows
        if fields.update_mode and not os.path.islink(path):  # a symlink's mode means nothing
            os.chmod(path, stat.S_IMODE(attr.st_mode))
        if fields.update_mtime or fields.update_atime:
            st = os.lstat(path)
            atime = attr.st_atime_ns if fields.update_atime else st.st_atime_ns
            mtime = attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns
            os.utime(path, ns=(atime, mtime), follow_symlinks=False)
        if fields.update_uid or fields.update_gid:
            pass  # ownership is not archived; accepted so `cp -a` and `tar -x` do not fail
        self._changed(run, rel)

    async def mkdir(self, parent, name, mode, ctx):
        key = self.child(parent, name)
        if self.node(key) is not None:
            raise pyfuse3.FUSEError(errno.EEXIST)  # makedirs(exist_ok=True) is content
        run, rel = self._check_new(parent, name, is_dir=True)
        if run is not None:
            self._materialize_dirs(run, rel.rpartition("/")[0])
        else:  # a run of a project the store has but the spool does not (yet)
            os.makedirs(self.spool_path(parent), exist_ok=True)
        os.mkdir(self.spool_path(key))
        os.chmod(self.spool_path(key), stat.S_IMODE(mode))  # the writer's mode, not our umask
        give_to_caller(self.spool_path(key), ctx)
        if run is not None and rel:
            self._created(run, rel, ctx)
            self._changed(run, rel)
            self._bump_structure(run)
        return key

    async def symlink(self, parent, name, target, ctx):
        key = self.child(parent, name)
        if self.node(key) is not None:
            raise pyfuse3.FUSEError(errno.EEXIST)
        run, rel = self._check_new(parent, name, is_dir=False)
        await self._note_writer(run, rel, ctx)
        self._materialize_dirs(run, rel.rpartition("/")[0])
        os.symlink(target, self.spool_path(key))
        give_to_caller(self.spool_path(key), ctx)
        self._created(run, rel, ctx)
        self._changed(run, rel)
        self._bump_structure(run)
        return key

    async def unlink(self, parent, name, ctx):
        key = self.child(parent, name)
        run, rel = self.split(key)
        path = self.spool_path(key)
        shown_error = key[1][:-len(ERROR_SUFFIX)] if key[1].endswith(ERROR_SUFFIX) else None
        if run is None or not rel:
            if shown_error is not None and self.spool.clear_error(shown_error):
                return
            raise pyfuse3.FUSEError(errno.EPERM if os.path.lexists(path) else errno.ENOENT)
        if os.path.lexists(path):
            if os.path.isdir(path) and not os.path.islink(path):
                raise pyfuse3.FUSEError(errno.EISDIR)
            self._remove_spooled(run, rel)
        elif self._sealed(run, rel) is not None:
            self._hide_sealed(run, rel)
        elif shown_error is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        else:
            # An error file goes by itself once its unit changes: `rm -r` (or rmtree) of
            # a directory that listed one must not fail because it went first.
            self.spool.clear_error(shown_error)
        self._changed(run, rel)
        self._bump_structure(run)

    def _remove_spooled(self, run: tuple, rel: str):
        """`rm` of an unsealed file or symlink: it leaves the working view. If it is a
        whole checkpoint file, it is sealed first (a job that rotates its checkpoints
        faster than the quiet period loses none); a file of a larger unit is kept aside
        until that unit is sealed (if the job goes on to remove the whole unit, it is
        sealed with it)."""
        units = self._units_of(*run)
        unit = unit_of(units, rel)
        if self._sealed(run, rel) is not None:
            self._hide_sealed(run, rel)  # it shadowed a sealed file: that one goes too
        if unit is not None and self._incomplete_members(*self._members(run, unit, None)):
            self.units.setdefault((*run, unit.path, None), UnitState(unit)).troubled = True
        if unit is not None and unit.shape == FILE and unit.path == rel:
            self._remove_whole_unit(run, unit, INBOX)
            return
        state = self.units.get((*run, unit.path, None)) if unit else None
        if state is not None and state.troubled:
            os.unlink(self.run_path(run, rel))  # a unit that could not be sealed as it was
            return
        target = os.path.join(self.spool.run_dir(*run, REMOVED), rel)
        try:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if os.path.isdir(target) and not os.path.islink(target):
                shutil.rmtree(target)
            os.replace(self.run_path(run, rel), target)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            # The disk is full: a removal must still free space, not fail.
            log.warning("the store's disk is full: inbox/%s/%s/%s removed without keeping it "
                        "for its unit's seal", *run, rel)
            os.unlink(self.run_path(run, rel))

    def _remove_whole_unit(self, run: tuple, unit: Unit, area: str):
        """The job removed a unit that is not sealed yet: seal it now, then hide it (one
        that failed, or was held after a crash, is let go: the job gave up on it)."""
        state = self.units.get((*run, unit.path, None))
        if state is not None and state.troubled and not state.sealing:
            log.info("inbox/%s/%s/%s was removed; it had failed to seal or was held since a "
                     "daemon died: not sealed", *run, unit.path)
            self._discard_files(run, unit, area)
            return
        if state is not None and state.sealing:
            # Its seal reads a staged copy: move it aside; the seal's end hides it.
            source = os.path.join(self.spool.run_dir(*run, area), unit.path)
            target = os.path.join(self.spool.run_dir(*run, REMOVED), unit.path)
            if source != target:
                os.makedirs(os.path.dirname(target), exist_ok=True)
                os.replace(source, target)
            state.removed_while_sealing = True
            return
        try:
            batch = self.spool.detach_removed(*run, unit, area)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            log.warning("the store's disk is full: inbox/%s/%s/%s removed before its seal, "
                        "without sealing it", *run, unit.path)
            self._discard_files(run, unit, area)
            return
        self.units.pop((*run, unit.path, None), None)
        self.units[(*run, unit.path, batch)] = UnitState(
            unit, requested=True, batch=batch,
            first_seen=state.first_seen if state else time.time())
        staged = self.staged.pop((*run, unit.path), None)
        if staged is not None:
            self.staged[(*run, unit.path, batch)] = staged
        log.info("inbox/%s/%s/%s was removed before its seal: sealing it now", *run, unit.path)
        self._wake_sealer()

    def _discard_files(self, run: tuple, unit: Unit, area: str):
        """Let a removed unit go without sealing it."""
        source = os.path.join(self.spool.run_dir(*run, area), unit.path)
        if os.path.isdir(source) and not os.path.islink(source):
            shutil.rmtree(source, ignore_errors=True)
        elif os.path.lexists(source):
            os.unlink(source)
        state = self.units.pop((*run, unit.path, None), None)
        if state is not None and state.error:
            self._clear_error((*run, unit.path, None), state)
        self._discard_staged((*run, unit.path))

    def _hide_sealed(self, run: tuple, rel: str):
        found = self._sealed(run, rel)
        if found is None or found.unit is None:
            return
        self._hide(run, found.unit.version, found.inner if found.unit.shape != FILE else "")

    async def rmdir(self, parent, name, ctx):
        key = self.child(parent, name)
        run, rel = self.split(key)
        path = self.spool_path(key)
        if any(True for _ in self.children(key)):
            raise pyfuse3.FUSEError(errno.ENOTEMPTY)
        if run is None or not rel:  # a project or run directory
            if os.path.isdir(path):
                os.rmdir(path)
            elif self.node(key) is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            return
        before = self._units_of(*run)
        if os.path.isdir(path):
            os.rmdir(path)
        found = self._sealed(run, rel)
        if found is not None and found.unit is not None:
            self._hide(run, found.unit.version,
                       found.inner if found.unit.path != rel else "")
        self._changed(run, rel)
        self._bump_structure(run)
        self._seal_if_unit_removed(run, rel, before)

    def _seal_if_unit_removed(self, run: tuple, rel: str, units_before: list[Unit]):
        """After `rmdir` of `rel`: if it was the root of an unsealed unit whose files the
        job removed one by one (`shutil.rmtree`), that unit is sealed from what was kept
        aside, then hidden."""
        state = self.units.get((*run, rel, None))
        removed_root = os.path.join(self.spool.run_dir(*run, REMOVED), rel)
        if state is not None and not state.sealing and (
                state.troubled or not os.path.isdir(removed_root)):
            # Nothing kept to seal (it could not be sealed, or the disk was full): what
            # was prepared of it goes now, freeing its space.
            self._discard_files(run, state.unit, REMOVED)
            return
        if not os.path.isdir(removed_root):
            return
        removed = self.spool.listing(*run, REMOVED, below=rel)
        removed[rel] = "dir"
        candidates = [u for u in units_before if u.path == rel and u.shape != FILE] or \
            [u for u in _classify_removed(removed) if u.path == rel]
        for unit in candidates:
            self._remove_whole_unit(run, unit, REMOVED)
            return
        # A directory inside a unit: its files wait in removed/ with the unit.

    async def rename(self, old_parent, old_name, new_parent, new_name, flags, ctx):
        old, new = self.child(old_parent, old_name), self.child(new_parent, new_name)
        old_run, old_rel = self.split(old)
        new_run, new_rel = self.split(new)
        if old_run is None or new_run is None or old_run != new_run or not old_rel or not new_rel:
            raise pyfuse3.FUSEError(errno.EXDEV)  # mv falls back to copy and delete
        run = old_run
        if not os.path.lexists(self.spool_path(old)):
            if self._sealed(run, old_rel) is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            raise pyfuse3.FUSEError(errno.EXDEV)  # sealed content: copy and hide instead
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise pyfuse3.FUSEError(errno.EINVAL)  # not supported: never half-done
        if flags & pyfuse3.RENAME_NOREPLACE and self.node(new) is not None:
            raise pyfuse3.FUSEError(errno.EEXIST)
        self._refuse_in_sealed_directory(run, new_rel.rpartition("/")[0])
        self._refuse_while_sealing(run, old_rel)
        self._refuse_while_sealing(run, new_rel)
        replaced = self._sealed(run, new_rel)
        if replaced is not None and replaced.kind == "dir":
            if self.view(run).children(new_rel):
                raise pyfuse3.FUSEError(errno.ENOTEMPTY)
        self._materialize_dirs(run, new_rel.rpartition("/")[0])
        moved = os.lstat(self.spool_path(old))
        os.rename(self.spool_path(old), self.spool_path(new))
        if stat.S_ISREG(moved.st_mode):
            self.paths[moved.st_ino] = (*run, new_rel)   # `rsync -a`: temp file, then its name
        for rel in (old_rel, new_rel):
            self._changed(run, rel)
        self._bump_structure(run)

    # -- extended attributes: the Python API's channel --------------------------------------
    def setxattr(self, key: tuple, name: bytes, value: bytes):
        """`user.ckptfs.seal`: seal the unit at/under this path now; `user.ckptfs.annotate`
        (a JSON object shaped like ckptfs.json): metadata for its version."""
        run, rel = self.split(key)
        if run is None or name not in (XATTR_SEAL, XATTR_ANNOTATE):
            raise pyfuse3.FUSEError(errno.ENOTSUP)
        units = self._units_of(*run)
        if not rel and name == XATTR_SEAL:  # the run directory: everything waiting in it
            for unit in units:
                state = self.units.setdefault((*run, unit.path, None), UnitState(unit))
                state.requested, state.held = True, False
            self._wake_sealer()
            return
        if not rel:
            raise pyfuse3.FUSEError(errno.EINVAL)  # annotate a checkpoint, not a run
        unit = unit_of(units, rel) or _unit_below(units, rel)
        if unit is None:
            if self._sealed(run, rel) is not None:
                if name == XATTR_ANNOTATE:
                    raise pyfuse3.FUSEError(errno.EROFS)  # sealed: its metadata is final
                return
            raise pyfuse3.FUSEError(errno.ENOENT if self.node(key) is None else errno.EINVAL)
        state = self.units.setdefault((*run, unit.path, None), UnitState(unit))
        if name == XATTR_SEAL:
            state.requested, state.held = True, False
            self._wake_sealer()
            return
        try:
            doc = json.loads(value)
        except ValueError:
            log.warning("refused annotating inbox/%s: not a JSON object", key[1])
            raise pyfuse3.FUSEError(errno.EINVAL) from None
        warnings: list[str] = []
        clean = clean_document(doc, warnings) if isinstance(doc, dict) else None
        if clean is None or warnings:
            log.warning("refused annotating inbox/%s: %s", key[1],
                        "; ".join(warnings) or "not a JSON object")
            raise pyfuse3.FUSEError(errno.EINVAL)
        path = self.spool.area(ANNOTATIONS, *run, unit_key(unit.path) + ".json")
        write_json_atomically(path, deep_merge(read_json(path, {}) or {}, clean))
        self._changed(run, rel)

    def getxattr(self, key: tuple, name: bytes) -> bytes:
        run, rel = self.split(key)
        if run is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        if not rel and name == XATTR_STATE:
            return json.dumps(self.run_state(run)).encode()
        if not rel:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        if name == XATTR_VERSION:
            found = None if os.path.lexists(self.spool_path(key)) else self._sealed(run, rel)
            if found is None or found.unit is None:
                raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
            return f"{run[0]}/{run[1]}/{found.unit.version}".encode()
        if name == XATTR_STATE:
            return json.dumps(self.state_of(run, rel, key)).encode()
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR)

    def run_state(self, run: tuple) -> dict:
        """The run directory's state: "sealed" once nothing of it waits in the spool."""
        waiting = {key[2]: self._state_name(s) for key, s in self.units.items() if key[:2] == run
                   and (key[3] is not None or self._members(run, s.unit, None)[1])}
        failed = {path: self.units[(*run, path, None)].error for path, name in waiting.items()
                  if name == "failed" and (*run, path, None) in self.units}
        if failed:
            return {"state": "failed", "pending": sorted(waiting),
                    "error": "; ".join(f"{p or '(loose files)'}: {e}" for p, e in failed.items())}
        return {"state": "sealed" if not waiting else "pending", "pending": sorted(waiting)}

    def state_of(self, run: tuple, rel: str, key: tuple) -> dict:
        if os.path.lexists(self.spool_path(key)):
            units = self._units_of(*run)
            unit = unit_of(units, rel) or _unit_below(units, rel)
            state = self.units.get((*run, unit.path, None)) if unit else None
            if state is None:
                return {"state": "writing" if unit else "empty", "unit": unit.path if unit else None}
            return {"state": self._public_state(run, state), "unit": unit.path,
                    "error": state.error}
        found = self._sealed(run, rel)
        if found is not None and found.unit is not None:
            return {"state": "sealed", "version": f"{run[0]}/{run[1]}/{found.unit.version}"}
        for (p, r, path, batch), state in self.units.items():
            if (p, r) == run and batch and (rel == path or rel.startswith(path + "/")):
                return {"state": self._public_state(run, state, batch), "unit": path,
                        "error": state.error}
        raise pyfuse3.FUSEError(errno.ENOENT)

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

    def _earlier_pending(self, run: tuple, unit: Unit, state: UnitState | None) -> bool:
        """Is a checkpoint that arrived earlier still unsealed? Wait for its seal: until
        then its chunks are not in the index (this one would store them again, whatever
        its run) and, in the same run, it is what this one's tensors are delta-coded
        against. Logs and metrics (kind files) neither wait nor hold others up."""
        if unit.kind != CHECKPOINT or state is None:
            return False
        return any(other is not state and other.first_seen < state.first_seen
                   and other.unit.kind == CHECKPOINT and not other.held and not other.error
                   for other in self.units.values())

    async def _prepare(self, job: PrepareJob):
        if job.ino in self.open_writers:
            return  # written again: its close queues it again
        async with self.lane:
            # Where the file is now: it may have been renamed while this job waited for
            # the lane (rsync renames each temporary file into place).
            where, generation = self.paths.get(job.ino), self.generations.get(job.ino)
            if where is None or generation is None or where[:2] != job.run:
                return
            run, rel = job.run, where[2]
            unit = unit_of(self._units_of(*run), rel)
            if unit is None or os.path.basename(rel) == SEAL_MARKER:
                return
            state = self.units.setdefault((*run, unit.path, None), UnitState(unit))
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
                                                 self.run_path(run, rel), (job.ino, generation),
                                                 job.ino)
            self.counters["ingest_seconds"] += time.monotonic() - started
            self.counters["files_prepared"] += done
        if not done and self._worth_retrying(job.ino, (*run, rel), generation):
            self._jobs_in.send_nowait(job)

    def _ingest_for(self, run: tuple, unit: Unit, state: UnitState):
        key = (*run, unit.path)
        ingest = self.staged.get(key)
        if ingest is None:
            name = free_version_name(unit.name_hint, functools.partial(self._name_taken, run))
            try:
                ingest = self.store.begin_ingest(*run, name)
            except StoreError:
                return None
            ingest.on_new_pack = self._note_staged_pack
            ingest.kind = unit.kind
            parent, _inputs = self._read_lineage(run, unit, state)
            ingest.preferred_parent = parent
            self.staged[key] = ingest
        return ingest

    def _worth_retrying(self, ino: int, where: tuple, generation: int) -> bool:
        """A prepare that gave up: try again if the file was renamed meanwhile, or once
        per content generation (`cp -a` and `rsync -a` set the mtime just after closing,
        which the ingest takes for a change)."""
        if self.paths.get(ino) != where:
            return True
        if self.retried.get(ino) != generation:
            self.retried[ino] = generation
            return True
        return False

    def _discard_staged(self, key: tuple):
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

    def _requeue_deferred(self):
        jobs, self.deferred = self.deferred, []
        for job in jobs:
            self._jobs_in.send_nowait(job)

    # -- lineage from what the writer read ------------------------------------------------------
    def _unit_started(self, run: tuple, unit: Unit) -> tuple[float, list] | None:
        """(when, writer's process chain) of the first write of the unit's members."""
        created = self.created.get(run, {})
        found = [created[m] for m in created if _covers(unit, m)]
        return min(found, key=lambda c: c[0]) if found else None

    def _read_lineage(self, run: tuple, unit: Unit, state: UnitState):
        """(parent, inputs) of the unit's version from what its writer read (reads.py).
        Only checkpoints begin a new window for the parent: a log file the writer opened
        since it loaded its weights does not make it forget them."""
        started = self._unit_started(run, unit)
        if started is None or not started[1]:
            return None, []
        until, chain = started
        pid = chain[0][0]
        earlier = [t for t in self.unit_starts.get((*run, pid), []) if t < until]
        for key, other in self.units.items():
            if key[:2] == run and other is not state and other.unit.kind == CHECKPOINT:
                other_start = self._unit_started(run, other.unit)
                if other_start and other_start[1] and other_start[1][0][0] == pid \
                        and other_start[0] < until:
                    earlier.append(other_start[0])
        itself = (*run, UNSEALED + unit.path)
        parent, inputs = self.reads.lineage(chain, max(earlier, default=float("-inf")), until,
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

    def note_spool_read(self, key: tuple, ctx):
        """A process opened an unsealed file to read it: if it is a checkpoint's, what the
        process writes next may come from it."""
        run, rel = self.split(key)
        if run is None or ctx is None:
            return
        unit = unit_of(self._units_of(*run), rel)
        if unit is not None and unit.kind == CHECKPOINT:
            self.reads.note(ctx.pid, (*run, UNSEALED + unit.path), rel)

    # -- sealing ------------------------------------------------------------------------------
    def _wake_sealer(self):
        self._wake.set()

    def _name_taken(self, run: tuple, name: str) -> bool:
        return (self.store.version_record(*run, name) is not None
                or self.store.tombstone(*run, name) is not None
                or self.store.name_in_run(*run, name) is not None
                or any(ingest.version == name for key, ingest in self.staged.items()
                       if key[:2] == run))

    def _members(self, run: tuple, unit: Unit, batch: str | None) -> tuple[str, list[str]]:
        """(the directory the unit's paths are relative to, its member paths) now."""
        if batch is not None:
            root = self.spool.batch_root(*run, batch)
            listing = _listing_of(root)
            members = [p for p in listing if _covers(unit, p)]
            return root, members
        unit_now = next((u for u in self._units_of(*run) if u.path == unit.path), None)
        return self.spool.run_dir(*run), list(unit_now.members) if unit_now else []

    def _incomplete_members(self, root: str, members: list[str]) -> bool:
        """Does a file of the unit miss bytes because a write to it failed?"""
        if not self.incomplete:
            return False
        for path in members:
            try:
                if os.lstat(os.path.join(root, path)).st_ino in self.incomplete:
                    return True
            except FileNotFoundError:
                continue
        return False

    def _open_members(self, root: str, members: list[str]) -> bool:
        for path in members:
            try:
                st = os.lstat(os.path.join(root, path))
            except FileNotFoundError:
                continue
            if st.st_ino in self.open_handles:
                return True
        return False

    def _last_change(self, run: tuple, unit: Unit) -> float:
        changes = self.changed.get(run, {})
        return max((t for path, t in changes.items() if _covers(unit, path)), default=0.0)

    def _due(self, run: tuple, key: tuple, state: UnitState, now: float) -> bool:
        if state.sealing:
            return False
        root, members = self._members(run, state.unit, key[3])
        if key[3] is None and not members:
            return False
        if self._open_members(root, members):
            return False
        marker = any(os.path.basename(m) == SEAL_MARKER for m in members)
        if state.requested or marker:
            return True
        if self._incomplete_members(root, members):
            # A write to it failed (a full disk): it is held until written again.
            state.troubled = state.held = True
            return False
        if state.held or state.error:
            return False
        quiet = now - self._last_change(run, state.unit)
        if state.unit.kind == CHECKPOINT:
            return quiet >= self.seal_after
        # Logs and metrics (TensorBoard closes its file after each flush): sealed once the
        # job that writes them has ended, or after a long quiet; not at every pause.
        return quiet >= self.files_seal_after or (
            quiet >= self.seal_after and not self._writers_alive(run, state.unit))

    def _writers_alive(self, run: tuple, unit: Unit) -> bool:
        """Is a process that created a file of the unit still running?"""
        created = self.created.get(run, {})
        members = set(unit.members)  # (the folder itself may be the job's output dir's)
        writers = {chain[0] for path, (_t, chain) in created.items()
                   if chain and path in members}
        return not writers or any(process_start(pid) == start for pid, start in writers)

    def _refresh_units(self):
        """Bring `self.units` in line with what the spool holds."""
        seen = set()
        for run in self.spool.runs():
            for unit in self._units_of(*run):
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
                self.spool.clear_error(self._error_rel(key[:2], self.units[key].unit))
                self._discard_staged(key[:3])
            del self.units[key]
        if gone:  # a unit that no longer exists (its files moved on) holds nobody up
            self._requeue_deferred()

    async def run_sealer(self):
        """Seal units as they become due, one at a time, until cancelled."""
        while True:
            with trio.move_on_after(self._next_deadline()):
                await self._wake.wait()
            self._wake = trio.Event()
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
        waits = [self._last_change(key[:2], s.unit) + self.seal_after - now
                 for key, s in self.units.items() if not s.held and not s.error and not s.sealing]
        waits += [self._last_change(key[:2], s.unit) + self.files_seal_after - now
                  for key, s in self.units.items() if s.unit.kind != CHECKPOINT
                  and not s.held and not s.error and not s.sealing]
        # A unit past its deadline is sealed already, or waits for a file to be closed
        # (which wakes the sealer): only deadlines still ahead count.
        return min([1.0] + [max(0.05, w) for w in waits if w > 0])

    def _take_requests(self):
        """`ckptfs seal` run beside the daemon leaves its requests in spool/requests."""
        base = self.spool.area(REQUESTS)
        for name in sorted(os.listdir(base)) if os.path.isdir(base) else []:
            request = read_json(os.path.join(base, name))
            try:
                os.unlink(os.path.join(base, name))
            except FileNotFoundError:
                continue
            if not isinstance(request, dict):
                continue
            run, rel = (request.get("project"), request.get("run")), request.get("path", "")
            units = self._units_of(*run)
            unit = unit_of(units, rel) or _unit_below(units, rel)
            if unit is not None:
                state = self.units.setdefault((*run, unit.path, None), UnitState(unit))
                state.requested, state.held = True, False

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
        root, members = self._members(run, unit, batch)
        marker = [m for m in members if os.path.basename(m) == SEAL_MARKER]
        for m in marker:  # the marker itself is not archived
            os.unlink(os.path.join(root, m))
        members = [m for m in members if m not in marker]
        staging, staged = await trio.to_thread.run_sync(self.spool.stage, root, unit, members)
        for ino in staged["files"].values():
            self.staged_inodes[ino] = self.staged_inodes.get(ino, 0) + 1
        try:
            await self._seal_staged(key, state, root, staging, staged)
        finally:
            for ino in staged["files"].values():
                left = self.staged_inodes.get(ino, 1) - 1
                if left > 0:
                    self.staged_inodes[ino] = left
                else:
                    self.staged_inodes.pop(ino, None)
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
        version = free_version_name(unit.name_hint, functools.partial(self._name_taken_for, run, key))
        ingest_key = (*run, unit_path) if batch is None else (*run, unit_path, batch)
        intent = self.spool.area(SEALING, self.spool.new_id() + ".json")
        parent, inputs = self._read_lineage(run, unit, state)
        read_lineage = {"inputs": inputs} if inputs else {}
        if parent:
            read_lineage["parent"] = parent
        annotations_path = self.spool.area(ANNOTATIONS, *run, unit_key(unit.path) + ".json")
        try:
            async with self.lane:
                ingest = self.staged.pop(ingest_key, None)
                if ingest is not None:
                    ingest.version = version
                write_json_atomically(intent, {"project": p, "run": r, "version": version,
                                               "unit": unit.path, "shape": unit.shape,
                                               "kind": unit.kind, "source": root,
                                               "staged": staged, "batch": batch})
                started = time.monotonic()
                try:
                    report = await trio.to_thread.run_sync(functools.partial(
                        archive_directory, self.store, staging, p, r, version,
                        provenance=provenance_of_record(self._provenance_record(run, provenance_key(unit))),
                        ingest=ingest, token_of=self._token_of,
                        read_lineage=read_lineage,
                        annotations=read_json(annotations_path, None),
                        system={"kind": unit.kind,
                                "inbox": {"path": unit.path, "shape": unit.shape}}))
                except SealRefused:
                    if ingest is not None:  # refused before any use: keep it for the retry
                        self.staged[ingest_key] = ingest
                    raise
                self.counters["ingest_seconds"] += time.monotonic() - started
        except (StoreError, OSError) as e:
            os.unlink(intent) if os.path.exists(intent) else None
            self._seal_failed(key, state, e)
            return
        await trio.to_thread.run_sync(self._release_sealed, key, state, root, staged, version)
        os.unlink(intent)
        self._sealed_ok(key, state, version, report)

    def _name_taken_for(self, run: tuple, key: tuple, name: str) -> bool:
        own = self.staged.get((*run, key[2]) if key[3] is None else (*run, key[2], key[3]))
        if own is not None and own.version == name:
            return (self.store.version_record(*run, name) is not None
                    or self.store.tombstone(*run, name) is not None
                    or self.store.name_in_run(*run, name) is not None)
        return self._name_taken(run, name)

    def _token_of(self, entry):
        generation = self.generations.get(entry.st.st_ino)
        return (entry.st.st_ino, generation) if generation is not None else None

    def _carry_over(self, run: tuple, unit: Unit, staging: str):
        """A snapshot unit (the run's loose files, a folder's files) is archived whole:
        files of its previous version that the working view still shows, and that the
        job did not write again or remove, are restored into the staging directory."""
        view = self.view(run)
        previous = next((u for u in view.units if u.path == unit.path and u.shape == GROUP), None)
        if previous is None:
            return
        by_path, _children = view._version_entries(previous.version)
        for inner, entry in sorted(by_path.items()):
            if not inner or entry["type"] == "dir" or view._is_hidden(previous, inner):
                continue
            rel = f"{unit.path}/{inner}" if unit.path else inner
            target = os.path.join(staging, inner)
            if os.path.lexists(target) or os.path.lexists(self.run_path(run, rel)) or \
                    os.path.lexists(os.path.join(self.spool.run_dir(*run, REMOVED), rel)):
                continue
            if _claimed_elsewhere(self._units_of(*run), unit, rel):
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if entry["type"] == "symlink":
                os.symlink(entry["target"], target)
                continue
            self._restore_file(entry, target)
            os.chmod(target, entry["mode"])
            os.utime(target, ns=(entry["mtime_ns"], entry["mtime_ns"]))

    def _release_sealed(self, key, state: UnitState, root: str, staged: dict, version: str):
        p, r, unit_path, batch = key
        run, unit = (p, r), state.unit
        if batch is not None:
            self.spool.drop_batch(p, r, batch)
        else:
            self.spool.release_sealed(root, unit, staged)
            self.spool.drop_removed_members(p, r, unit)
        if batch is not None or state.removed_while_sealing:
            self._hide(run, version, "")
        try:
            os.unlink(self.spool.area(ANNOTATIONS, p, r, unit_key(unit_path) + ".json"))
        except FileNotFoundError:
            pass

    def _sealed_ok(self, key, state: UnitState, version: str, report):
        p, r, unit_path, batch = key
        run = (p, r)
        started = self._unit_started(run, state.unit)
        if started and started[1] and state.unit.kind == CHECKPOINT:
            self.unit_starts.setdefault((*run, started[1][0][0]), []).append(started[0])
        if started and state.unit.kind == CHECKPOINT:
            self.sealed_history.setdefault(run, []).append((started[0], version))
        self.sealed_units[(p, r, unit_path)] = version
        for path in [m for m in self.created.get(run, {}) if _covers(state.unit, m)]:
            if not os.path.lexists(self.run_path(run, path)):
                self.created[run].pop(path, None)
                self.changed.get(run, {}).pop(path, None)
        self.units.pop(key, None)
        self._bump_structure(run)
        self._views.pop(run, None)
        self._forget_provenance(run, provenance_key(state.unit))
        self.counters["versions_sealed"] += 1
        self.last_sealed = f"{p}/{r}/{version}"
        self.counters["files_reused_at_seal"] += report.stats.prepared_files
        self.counters["bytes_stored"] += report.stats.new_stored_bytes
        self.counters["bytes_sealed"] += report.stats.logical_bytes
        log.info("sealed %s/%s/%s (written at inbox/%s/%s/%s): %d files (%d prepared ahead), "
                 "%d bytes, %d new stored", p, r, version, p, r, unit_path, report.files,
                 report.stats.prepared_files, report.stats.logical_bytes,
                 report.stats.new_stored_bytes)
        self._requeue_deferred()
        if self.on_sealed:
            self.on_sealed(p, r, version, unit_path)

    def _seal_failed(self, key, state: UnitState, error: Exception):
        p, r, unit_path, batch = key
        state.sealing = False
        state.requested = False
        state.error = str(error)
        state.troubled = True
        self.counters["seal_failures"] += 1
        where = f"{p}/{r}/{unit_path}" if unit_path else f"{p}/{r} (its loose files)"
        log.error("sealing %s failed: %s", where, error)
        self._requeue_deferred()
        if state.removed_while_sealing and batch is None:
            state.removed_while_sealing = False  # removed meanwhile: retry it as removed
            self._remove_whole_unit((p, r), state.unit, REMOVED)
        if batch is not None and getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
            # The job removed it, and the store has no room to keep it: let it go rather
            # than hold the space the job meant to free.
            log.warning("inbox/%s/%s/%s, removed before its seal, could not be sealed on a "
                        "full disk: dropped", p, r, unit_path)
            self.spool.drop_batch(p, r, batch)
            self.units.pop(key, None)
            self._discard_staged((p, r, unit_path, batch))
            return
        try:
            self.spool.write_error(self._error_rel((p, r), state.unit),
                                   f"sealing {where} failed: {error}\n"
                                   "It stays in the inbox: fix it, and it is sealed again once "
                                   "it is quiet (or write a .seal file into it, or call "
                                   "ckptfs.seal on it).")
        except OSError as e:  # e.g. the same full disk: the log and status still say why
            log.error("could not write the error file of inbox/%s/%s/%s: %s", p, r, unit_path, e)

    # -- status ---------------------------------------------------------------------------------
    @staticmethod
    def _state_name(state: UnitState) -> str:
        return ("sealing" if state.sealing else "failed" if state.error else "held" if state.held
                else "removed" if state.batch else "pending")

    def _public_state(self, run: tuple, state: UnitState, batch: str | None = None) -> str:
        """What `ckptfs status` and `user.ckptfs.state` say: a pending unit is `writing`
        while a file of it is open, else `quiet`."""
        name = self._state_name(state)
        if name == "pending":
            root, members = self._members(run, state.unit, batch)
            name = "writing" if self._open_members(root, members) else "quiet"
        return name

    def status(self) -> list[dict]:
        now = time.time()
        out = []
        for (p, r, path, batch), state in sorted(self.units.items(), key=lambda kv: kv[1].first_seen):
            root, members = self._members((p, r), state.unit, batch)
            if not members and batch is None:
                continue
            name = self._public_state((p, r), state, batch)
            out.append({"version": f"{p}/{r}/{path}".rstrip("/") if path else f"{p}/{r}",
                        "path": path, "kind": state.unit.kind,
                        "age_seconds": round(now - state.first_seen, 1),
                        "state": name, "error": state.error})
        for rel in self._refusals():
            out.append({"version": rel[:-len(ERROR_SUFFIX)], "path": None, "kind": None,
                        "age_seconds": None, "state": "refused",
                        "error": _first_line(self.spool.area("errors", rel))})
        return out

    def _refusals(self) -> list[str]:
        """Error files of refused paths at the inbox and project levels."""
        found = [name for name in self.spool.error_names("")]
        base = self.spool.area("errors")
        for entry in os.scandir(base) if os.path.isdir(base) else []:
            if entry.is_dir():
                found += [f"{entry.name}/{n}" for n in self.spool.error_names(entry.name)]
        return found


def _first_line(path: str) -> str | None:
    try:
        with open(path, errors="replace") as f:
            return f.readline().strip()
    except OSError:
        return None


def _covers(unit: Unit, path: str) -> bool:
    """Is `path` (in the run directory) part of `unit`?"""
    if unit.shape == FILE:
        return path == unit.path
    if unit.path == "":
        return "/" not in path and (path in unit.members or not unit.members)
    return path == unit.path or path.startswith(unit.path + "/")


def _unit_below(units: list[Unit], rel: str) -> Unit | None:
    """The unit whose root is `rel`'s directory itself (a `.seal` asked of a directory)."""
    return next((u for u in units if u.path == rel), None)


def _claimed_elsewhere(units: list[Unit], group: Unit, rel: str) -> bool:
    return any(u is not group and u.path != group.path and _covers(u, rel) for u in units)


def _listing_of(root: str) -> dict[str, str]:
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir
        for name in dirnames:
            full = os.path.join(dirpath, name)
            found[f"{rel_dir}/{name}" if rel_dir else name] = "symlink" if os.path.islink(full) else "dir"
        for name in filenames:
            full = os.path.join(dirpath, name)
            found[f"{rel_dir}/{name}" if rel_dir else name] = "symlink" if os.path.islink(full) else "file"
    return found


def _classify_removed(listing: dict[str, str]) -> list[Unit]:
    from ckptfs.meta.layout import classify
    return classify(listing)
