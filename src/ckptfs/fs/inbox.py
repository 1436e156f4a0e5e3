"""The writable inbox: `inbox/<project>/<run>/<version>/…`, spooled to disk in the store.

Everything written here goes straight to real files under `STORE/spool/inbox/`, so a
copy never sits in the daemon's memory and survives the daemon dying. A version is
sealed (archived through `Store.import_directory`, the same path as `ckptfs import`) once
no file in it is open and nothing has changed for the quiet period, at once when a
`.seal` marker is written into it, or on `ckptfs seal`. Sealing runs on a worker thread;
while it runs the version refuses changes (EBUSY). Afterwards the version leaves the
inbox and appears under `projects/`; a failure leaves it in the inbox with a
`<version>.error` file beside it that says why.

Ingest starts before the seal: each file is prepared (chunked, deduplicated, compressed,
packed) on a worker thread once its last writer closes it, so by the end of the quiet
period most of the version is already in the store and the seal only reads what changed
since. A prepared result is keyed by the spool file's inode and its write generation (a
counter bumped by every write, truncate and create through the mount): a file changed
after it was prepared is read again at the seal. Prepare and seal take turns on one lane,
so ingest never uses more than the cores one seal would.

Depth rules: only directories at the project, run and version levels (EPERM for files
there), names that follow the naming rules (EINVAL), no version name that is already
sealed (EEXIST).
"""
import errno
import functools
import json
import logging
import os
import shutil
import stat
import time
from dataclasses import dataclass, field

import pyfuse3
import trio

from ckptfs.meta.provenance import describe_process
from ckptfs.meta.errors import SealRefused
from ckptfs.meta.seal import archive_directory, env_allow_list
from ckptfs.store import StoreError
from ckptfs.store.names import InvalidNameError, validate_name, validate_version_name

from .tree import Node

log = logging.getLogger("ckptfs.inbox")

SEAL_MARKER = ".seal"
RUNNING_MARKER = "daemon.running"
STAGED_PACKS = "staged-packs"   # ids of packs opened ahead of a seal, one per line (hex)
PROVENANCE_DIR = "provenance"   # spool/provenance/<p>/<r>/<v>.json: who wrote the version
MAX_OTHER_WRITERS = 8


def provenance_path(spool: str, version: tuple) -> str:
    p, r, v = version
    return os.path.join(spool, PROVENANCE_DIR, p, r, v + ".json")


def load_provenance_record(spool: str, version: tuple) -> dict:
    """Who wrote an inbox version, as kept in the spool (empty if nobody was seen)."""
    try:
        with open(provenance_path(spool, version), "rb") as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return {"writer": None, "others": [], "seen": []}


def provenance_of_record(record: dict) -> dict:
    """The `provenance` a version's sidecar gets from its spooled record."""
    provenance = dict(record["writer"] or {"via": "mount", "unknown": True})
    if record["others"]:
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


@dataclass
class PendingVersion:
    """What the sealer knows of a version being written."""
    last_change: float = field(default_factory=time.monotonic)
    first_seen: float = field(default_factory=time.time)
    open_files: int = 0
    sealing: bool = False
    held: bool = False        # recovered after a crash, or failed: wait for a change or seal
    error: str | None = None

    def touch(self):
        self.last_change = time.monotonic()
        self.held = False


@dataclass
class InboxFile:
    fd: int
    key: tuple
    version: tuple
    ino: int
    writable: bool


@dataclass
class PrepareJob:
    version: tuple
    ino: int


class Inbox:
    def __init__(self, store, seal_after: float = 5.0):
        self.store = store
        self.seal_after = seal_after
        self.spool = os.path.join(store.path, "spool")
        self.root = os.path.join(self.spool, "inbox")
        os.makedirs(self.root, exist_ok=True)
        self.pending: dict[tuple, PendingVersion] = {}
        self.counters = {"versions_sealed": 0, "seal_failures": 0, "bytes_in": 0,
                         "bytes_stored": 0, "bytes_sealed": 0, "ingest_seconds": 0.0,
                         "files_prepared": 0, "files_reused_at_seal": 0}
        self.on_sealed = None  # callback(p, r, v) for cache invalidation
        # Ingest ahead of the seal (see the module docstring).
        self.staged: dict[tuple, object] = {}      # version -> store Ingest begun early
        self.generation = 0                        # bumped by every content change
        self.generations: dict[int, int] = {}      # spool inode -> generation of its content
        self.paths: dict[int, tuple] = {}          # spool inode -> key, for prepare jobs
        self.open_writers: dict[int, int] = {}     # spool inode -> handles open for writing
        self.unprepared: set[int] = set()          # spool inodes changed since queued to prepare
        self.retried: dict[int, int] = {}          # spool inode -> generation retried once
        self.deferred: list[PrepareJob] = []       # waiting for an earlier version's seal
        self.lane = trio.Lock()                    # one prepare or seal at a time
        self.writers: dict[tuple, dict] = {}       # version -> its provenance record
        self.mountpoint: str | None = None         # set by the daemon: never read inside it
        self._jobs_in, self._jobs_out = trio.open_memory_channel(float("inf"))
        self._nursery = None
        self._recover_after_restart()

    # -- startup / shutdown ---------------------------------------------------------------
    def _recover_after_restart(self):
        """Versions left in the spool: after a clean stop they seal as usual; after a crash
        they wait for more writes or an explicit seal (a copy may have been cut short)."""
        marker = os.path.join(self.spool, RUNNING_MARKER)
        crashed = os.path.exists(marker)
        if crashed:
            self._discard_packs_of_dead_daemon()
        for version in self.spool_versions():
            self.pending[version] = PendingVersion(held=crashed)
            if crashed:
                log.warning("inbox version %s was left by a daemon that died: it waits for "
                            "more writes or `ckptfs seal`", "/".join(version))
        with open(marker, "w") as f:
            f.write(str(os.getpid()))

    def _discard_packs_of_dead_daemon(self):
        """Packs the previous daemon was filling ahead of seals it never made: unfinished
        ones hold nothing committed, so they go (finished ones may now be referenced)."""
        listing = os.path.join(self.spool, STAGED_PACKS)
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
        with open(os.path.join(self.spool, STAGED_PACKS), "a") as f:
            f.write(f"{pack_id:08x}\n")

    def close(self):
        for ingest in self.staged.values():   # unsealed versions seal on the next mount
            ingest.abort()
        self.staged.clear()
        try:
            os.unlink(os.path.join(self.spool, STAGED_PACKS))
        except FileNotFoundError:
            pass
        try:
            os.unlink(os.path.join(self.spool, RUNNING_MARKER))
        except FileNotFoundError:
            pass

    async def run(self):
        """The inbox's background work until cancelled: sealing and preparing."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self.run_sealer)
            nursery.start_soon(self.run_preparer)

    def spool_versions(self) -> list[tuple]:
        found = []
        for p in sorted(os.listdir(self.root)):
            for r in sorted(self._subdirs(p)):
                for v in sorted(self._subdirs(f"{p}/{r}")):
                    found.append((p, r, v))
        return found

    def _subdirs(self, rel: str) -> list[str]:
        base = os.path.join(self.root, rel)
        try:
            return [e.name for e in os.scandir(base) if e.is_dir(follow_symlinks=False)]
        except (FileNotFoundError, NotADirectoryError):
            return []

    # -- keys and paths ---------------------------------------------------------------------
    def abs_path(self, key: tuple) -> str:
        return os.path.join(self.root, key[1]) if key[1] else self.root

    @staticmethod
    def parts(key: tuple) -> list[str]:
        return key[1].split("/") if key[1] else []

    def version_of(self, key: tuple) -> tuple | None:
        parts = self.parts(key)
        return tuple(parts[:3]) if len(parts) >= 3 else None

    @staticmethod
    def child(parent: tuple, name: str) -> tuple:
        return ("inbox", f"{parent[1]}/{name}" if parent[1] else name)

    def node(self, key: tuple) -> Node | None:
        try:
            st = os.lstat(self.abs_path(key))
        except FileNotFoundError:
            return None
        kind = "dir" if stat.S_ISDIR(st.st_mode) else "symlink" if stat.S_ISLNK(st.st_mode) else "file"
        node = Node(key, kind, stat.S_IMODE(st.st_mode), st.st_size if kind != "dir" else 0,
                    st.st_mtime_ns, uid=st.st_uid, gid=st.st_gid)
        if kind == "symlink":
            node.target = os.readlink(self.abs_path(key))
        return node

    def child_key(self, parent: tuple, name: str) -> tuple | None:
        key = self.child(parent, name)
        return key if os.path.lexists(self.abs_path(key)) else None

    def children(self, key: tuple) -> list[tuple[str, tuple]]:
        names = sorted(os.listdir(self.abs_path(key)), key=os.fsencode)
        return [(n, self.child(key, n)) for n in names]

    # -- rules ------------------------------------------------------------------------------
    def _check_new_name(self, parent: tuple, name: str, is_dir: bool):
        depth = len(self.parts(parent))
        if depth >= 3:
            self._check_writable(parent)
            return
        what = ("project", "run", "version")[depth]
        where = "inbox/" + parent[1] if parent[1] else "inbox"
        if not is_dir:
            log.warning("refused %s/%s: only %s directories belong here (copy a checkpoint "
                        "directory to inbox/<project>/<run>/<version>/)", where, printable(name), what)
            raise pyfuse3.FUSEError(errno.EPERM)
        try:
            validate_version_name(name) if depth == 2 else validate_name(name, what)
        except InvalidNameError as e:
            log.warning("refused %s/%s: %s", where, printable(name), e)
            raise pyfuse3.FUSEError(errno.EINVAL) from None
        if depth == 2:
            p, r = self.parts(parent)
            if self.store.version_record(p, r, name) is not None:
                log.warning("refused inbox/%s/%s/%s: that version is already sealed; versions "
                            "are immutable, use a new version name", p, r, name)
                raise pyfuse3.FUSEError(errno.EEXIST)
            if self.store.tombstone(p, r, name) is not None:
                log.warning("refused inbox/%s/%s/%s: a version of that name was deleted; "
                            "version names are never reused, use a new one", p, r, name)
                raise pyfuse3.FUSEError(errno.EEXIST)

    def _check_writable(self, key: tuple):
        version = self.version_of(key)
        if version is None:
            return
        state = self.pending.get(version)
        if state is not None and state.sealing:
            log.warning("refused a change to inbox/%s: the version is being sealed",
                        "/".join(version))
            raise pyfuse3.FUSEError(errno.EBUSY)

    def _bump(self, ino: int):
        """The content of spool inode `ino` changed: any prepared result of it is stale."""
        self.generation += 1
        self.generations[ino] = self.generation
        self.unprepared.add(ino)

    def _queue_prepare(self, version: tuple | None, ino: int):
        """Prepare the file once nothing has it open for writing any more."""
        if version is not None and ino in self.unprepared and ino not in self.open_writers:
            self.unprepared.discard(ino)
            self._jobs_in.send_nowait(PrepareJob(version, ino))

    def _changed(self, key: tuple):
        version = self.version_of(key)
        if version is not None:
            self.pending.setdefault(version, PendingVersion()).touch()
            self._clear_error(version)

    def _clear_error(self, version: tuple):
        state = self.pending.get(version)
        if state and state.error:
            state.error = None
            try:
                os.unlink(self._error_path(version))
            except FileNotFoundError:
                pass

    def _error_path(self, version: tuple) -> str:
        p, r, v = version
        return os.path.join(self.root, p, r, v + ".error")

    # -- provenance: who writes each version ---------------------------------------------------
    def _provenance_path(self, version: tuple) -> str:
        return provenance_path(self.spool, version)

    def _provenance_record(self, version: tuple) -> dict:
        record = self.writers.get(version)
        if record is None:  # e.g. written before a restart
            record = self.writers[version] = load_provenance_record(self.spool, version)
        return record

    async def _note_writer(self, version: tuple | None, ctx):
        """Record the process creating a file in `version` while it waits for our reply
        (so it cannot be gone yet): the first becomes the version's provenance, a few
        more are listed. Kept in the spool, so a restart does not lose it."""
        if version is None or ctx is None:
            return
        record = self._provenance_record(version)
        if ctx.pid in record["seen"] or len(record["seen"]) > 4 * MAX_OTHER_WRITERS:
            return
        env_allow = env_allow_list(self.store, version[0])
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
        path = self._provenance_path(version)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(record, f)

    def _provenance_of(self, version: tuple) -> dict:
        return provenance_of_record(self._provenance_record(version))

    def _forget_provenance(self, version: tuple):
        self.writers.pop(version, None)
        try:
            os.unlink(self._provenance_path(version))
        except FileNotFoundError:
            pass

    # -- operations -------------------------------------------------------------------------
    async def create(self, parent, name, mode, flags, ctx):
        self._check_new_name(parent, name, is_dir=False)
        key = self.child(parent, name)
        await self._note_writer(self.version_of(key), ctx)
        fd = os.open(self.abs_path(key), (flags & ~os.O_APPEND) | os.O_CREAT, stat.S_IMODE(mode))
        os.fchmod(fd, stat.S_IMODE(mode))  # the writer's umask is applied; not ours again
        give_to_caller(self.abs_path(key), ctx)
        self._changed(key)
        handle = self._opened(fd, key, writable=True)
        self._bump(handle.ino)
        return key, handle

    async def open(self, key, flags, ctx):
        writable = bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC))
        if writable:
            self._check_writable(key)
        fd = os.open(self.abs_path(key), flags & ~(os.O_APPEND | os.O_CREAT | os.O_EXCL))
        handle = self._opened(fd, key, writable)
        if flags & os.O_TRUNC:
            self._changed(key)
            self._bump(handle.ino)
        return handle

    def _opened(self, fd, key, writable: bool) -> InboxFile:
        version = self.version_of(key)
        if version is not None:
            self.pending.setdefault(version, PendingVersion()).open_files += 1
        ino = os.fstat(fd).st_ino
        if writable:
            self.open_writers[ino] = self.open_writers.get(ino, 0) + 1
            self.paths[ino] = key
        return InboxFile(fd, key, version, ino, writable)

    async def read(self, handle: InboxFile, off, size):
        return os.pread(handle.fd, size, off)

    async def write(self, handle: InboxFile, off, buf):
        self._check_writable(handle.key)
        written = os.pwrite(handle.fd, buf, off)
        self.counters["bytes_in"] += written
        self._changed(handle.key)
        self._bump(handle.ino)
        return written

    async def fsync(self, handle: InboxFile, datasync):
        await trio.to_thread.run_sync(os.fdatasync if datasync else os.fsync, handle.fd)

    async def release(self, handle: InboxFile):
        os.close(handle.fd)
        if handle.version is not None:
            state = self.pending.get(handle.version)
            if state:
                state.open_files = max(0, state.open_files - 1)
        if handle.writable:
            left = self.open_writers.get(handle.ino, 1) - 1
            if left > 0:
                self.open_writers[handle.ino] = left
            else:
                self.open_writers.pop(handle.ino, None)
        self._queue_prepare(handle.version, handle.ino)

    async def setattr(self, key, attr, fields, fh, ctx):
        self._check_writable(key)
        path = self.abs_path(key)
        if fields.update_size:
            os.truncate(path, attr.st_size)
            ino = os.lstat(path).st_ino
            self._bump(ino)
            self._queue_prepare(self.version_of(key), ino)  # `truncate FILE`: no write follows
        if fields.update_mode and not os.path.islink(path):  # a symlink's mode means nothing
            os.chmod(path, stat.S_IMODE(attr.st_mode))
        if fields.update_mtime or fields.update_atime:
            st = os.lstat(path)
            atime = attr.st_atime_ns if fields.update_atime else st.st_atime_ns
            mtime = attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns
            os.utime(path, ns=(atime, mtime), follow_symlinks=False)
        if fields.update_uid or fields.update_gid:
            pass  # ownership is not archived; accepted so `cp -a` and `tar -x` do not fail
        self._changed(key)

    async def mkdir(self, parent, name, mode, ctx):
        self._check_new_name(parent, name, is_dir=True)
        key = self.child(parent, name)
        os.mkdir(self.abs_path(key))
        os.chmod(self.abs_path(key), stat.S_IMODE(mode))  # the writer's mode, not our umask
        give_to_caller(self.abs_path(key), ctx)
        version = self.version_of(key)
        if version is not None:
            self._changed(key)
        return key

    async def symlink(self, parent, name, target, ctx):
        self._check_new_name(parent, name, is_dir=False)
        key = self.child(parent, name)
        await self._note_writer(self.version_of(key), ctx)
        os.symlink(target, self.abs_path(key))
        give_to_caller(self.abs_path(key), ctx)
        self._changed(key)
        return key

    async def unlink(self, parent, name, ctx):
        key = self.child(parent, name)
        self._check_writable(key)
        os.unlink(self.abs_path(key))
        self._changed(key)

    async def rmdir(self, parent, name, ctx):
        key = self.child(parent, name)
        self._check_writable(key)
        os.rmdir(self.abs_path(key))
        version = self.version_of(key)
        if version is not None and len(self.parts(key)) == 3:
            self.pending.pop(version, None)  # an emptied version dir removed: nothing to seal
            self._discard_staged(version)
            self._forget_provenance(version)
        elif version is not None:
            self._changed(key)

    async def rename(self, old_parent, old_name, new_parent, new_name, flags, ctx):
        old, new = self.child(old_parent, old_name), self.child(new_parent, new_name)
        if self.version_of(old) is None or self.version_of(old) != self.version_of(new) \
                or len(self.parts(old)) < 4 or len(self.parts(new)) < 4:
            raise pyfuse3.FUSEError(errno.EXDEV)  # mv falls back to copy and delete
        self._check_writable(old)
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise pyfuse3.FUSEError(errno.EINVAL)  # not supported: never half-done
        if flags & pyfuse3.RENAME_NOREPLACE and os.path.lexists(self.abs_path(new)):
            raise pyfuse3.FUSEError(errno.EEXIST)
        moved = os.lstat(self.abs_path(old))
        os.rename(self.abs_path(old), self.abs_path(new))
        if stat.S_ISREG(moved.st_mode):
            self.paths[moved.st_ino] = new   # `rsync -a`: temp file, then its real name
        self._changed(new)

    # -- preparing ahead of the seal ----------------------------------------------------------
    async def run_preparer(self):
        """Prepare files as their last writer closes them, until cancelled."""
        async for job in self._jobs_out:
            try:
                await self._prepare(job)
            except Exception:  # whatever happens, the daemon keeps serving; the seal reads it
                log.exception("preparing a file of %s failed unexpectedly", "/".join(job.version))
                self._discard_staged(job.version)

    def _earlier_pending(self, version: tuple) -> bool:
        """Is a version that arrived earlier still unsealed? Wait for its seal: until
        then its chunks are not in the index, so this one would store them again, and
        in the same run it decides what this one's tensors are delta-coded against."""
        state = self.pending.get(version)
        return any(other != version and other_state.first_seen < state.first_seen
                   and not other_state.held and not other_state.error
                   for other, other_state in self.pending.items())

    async def _prepare(self, job: PrepareJob):
        state = self.pending.get(job.version)
        if state is None or state.sealing or job.ino in self.open_writers:
            return  # sealed, being sealed, removed, or written again (its close re-queues)
        if self._earlier_pending(job.version):
            self.deferred.append(job)
            return
        async with self.lane:
            key, generation = self.paths.get(job.ino), self.generations.get(job.ino)
            if (key is None or generation is None or self.version_of(key) != job.version
                    or state.sealing or job.version not in self.pending
                    or self.parts(key)[3:] == [SEAL_MARKER]):
                return
            ingest = self.staged.get(job.version)
            if ingest is None:
                try:
                    ingest = self.store.begin_ingest(*job.version)
                except StoreError:
                    return  # e.g. the name is taken: the seal reports it
                ingest.on_new_pack = self._note_staged_pack
                self.staged[job.version] = ingest
            rel_path = "/".join(self.parts(key)[3:])
            started = time.monotonic()
            done = await trio.to_thread.run_sync(ingest.prepare_file, rel_path, self.abs_path(key),
                                                 (job.ino, generation), job.ino)
            self.counters["ingest_seconds"] += time.monotonic() - started
            self.counters["files_prepared"] += done
        if not done and self._worth_retrying(job.ino, key, generation):
            self._jobs_in.send_nowait(job)

    def _worth_retrying(self, ino: int, key: tuple, generation: int) -> bool:
        """A prepare that gave up: try again if the file was renamed meanwhile (`rsync -a`
        renames its temp file), or, once per content generation, if it is still there.
        The ingest gives up on any change to size or mtime while it reads, and `rsync
        -a` and `cp -a` set the mtime right after closing the file: that is not new
        content (the write counter says so), so the second try succeeds."""
        if self.paths.get(ino) != key:
            return True
        if ino in self.paths and self.retried.get(ino) != generation:
            self.retried[ino] = generation
            return True
        return False

    def _discard_staged(self, version: tuple):
        """Drop what was prepared for `version` (removed, or its preparing failed)."""
        ingest = self.staged.pop(version, None)
        if ingest is not None and self._nursery is not None:
            async def abort_when_idle():
                async with self.lane:
                    await trio.to_thread.run_sync(ingest.abort)
            self._nursery.start_soon(abort_when_idle)

    def _token_of(self, entry):
        """The prepared-result token of a spool file about to be sealed."""
        generation = self.generations.get(entry.st.st_ino)
        return (entry.st.st_ino, generation) if generation is not None else None

    def _forget_files_of(self, version: tuple):
        for ino in [ino for ino, key in self.paths.items() if self.version_of(key) == version]:
            self.paths.pop(ino, None)
            self.generations.pop(ino, None)
            self.retried.pop(ino, None)
            self.unprepared.discard(ino)

    def _requeue_deferred(self):
        jobs, self.deferred = self.deferred, []
        for job in jobs:
            self._jobs_in.send_nowait(job)

    # -- sealing ------------------------------------------------------------------------------
    def due_for_seal(self, version: tuple, state: PendingVersion, now: float) -> bool:
        if state.sealing or state.open_files:
            return False
        if os.path.exists(os.path.join(self.root, *version, SEAL_MARKER)):
            return True
        return not state.held and not state.error and now - state.last_change >= self.seal_after

    async def run_sealer(self, poll: float = 0.25):
        """Seal versions as they become due, one at a time, until cancelled."""
        while True:
            await trio.sleep(poll)
            for version in self._in_arrival_order(self.spool_versions()):
                state = self.pending[version]
                if not self.due_for_seal(version, state, time.monotonic()):
                    continue
                try:
                    await self.seal(version)
                except Exception:  # whatever happens, the daemon keeps serving
                    log.exception("sealing %s failed unexpectedly", "/".join(version))
                    state.sealing, state.error = False, "unexpected error: see the log"

    def _in_arrival_order(self, versions: list[tuple]) -> list[tuple]:
        """Versions due together are sealed in the order they arrived (so a run's
        versions are delta-coded in order)."""
        for version in versions:
            self.pending.setdefault(version, PendingVersion())
        return sorted(versions, key=lambda v: self.pending[v].first_seen)

    async def seal(self, version: tuple):
        # Shielded: an unmount or signal lets a seal that has begun finish (it is atomic
        # in the store, but the spool copy must go once the version is sealed).
        with trio.CancelScope(shield=True):
            await self._seal(version)

    async def _seal(self, version: tuple):
        state = self.pending.setdefault(version, PendingVersion())
        state.sealing = True
        p, r, v = version
        src = os.path.join(self.root, p, r, v)
        try:
            marker = os.path.join(src, SEAL_MARKER)
            if os.path.lexists(marker):
                os.unlink(marker)
            async with self.lane:
                ingest = self.staged.pop(version, None)
                started = time.monotonic()
                try:
                    report = await trio.to_thread.run_sync(functools.partial(
                        archive_directory, self.store, src, p, r, v,
                        provenance=self._provenance_of(version), ingest=ingest,
                        token_of=self._token_of))
                except SealRefused:
                    if ingest is not None:  # refused before any use: keep it for the retry
                        self.staged[version] = ingest
                    raise
                self.counters["ingest_seconds"] += time.monotonic() - started
        except (StoreError, OSError) as e:
            state.sealing = False
            self._requeue_deferred()
            state.error = str(e)
            self.counters["seal_failures"] += 1
            log.error("sealing %s/%s/%s failed: %s", p, r, v, e)
            self._write_error_file(version, e)
            return
        self.counters["versions_sealed"] += 1
        self.counters["files_reused_at_seal"] += report.stats.prepared_files
        self.counters["bytes_stored"] += report.stats.new_stored_bytes
        self.counters["bytes_sealed"] += report.stats.logical_bytes
        log.info("sealed %s/%s/%s: %d files (%d prepared ahead), %d bytes, %d new stored",
                 p, r, v, report.files, report.stats.prepared_files, report.stats.logical_bytes,
                 report.stats.new_stored_bytes)
        await trio.to_thread.run_sync(shutil.rmtree, src)
        self.pending.pop(version, None)
        self._forget_files_of(version)
        self._forget_provenance(version)
        self._requeue_deferred()
        if self.on_sealed:
            self.on_sealed(p, r, v)

    def _write_error_file(self, version: tuple, error: Exception):
        p, r, v = version
        try:
            with open(self._error_path(version), "w") as f:
                f.write(f"sealing {p}/{r}/{v} failed: {error}\n"
                        "The version stays in the inbox: fix it, and it is sealed again once "
                        "it is quiet (or write a .seal file into it).\n")
        except OSError as e:  # e.g. the same full disk: the log and status still say why
            log.error("could not write %s: %s", self._error_path(version), e)

    def status(self) -> list[dict]:
        now = time.time()
        out = []
        for version in self.spool_versions():
            state = self.pending.get(version, PendingVersion())
            out.append({"version": "/".join(version), "age_seconds": round(now - state.first_seen, 1),
                        "open_files": state.open_files,
                        "state": "sealing" if state.sealing else "failed" if state.error
                        else "held" if state.held else "writing" if state.open_files else "quiet",
                        "error": state.error})
        return out
