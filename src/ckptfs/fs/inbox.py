"""The writable inbox: each `inbox/<project>/<run>/` is a training job's working directory.

A job points its output directory at `inbox/<p>/<r>/` and writes what it always writes
(docs/mount.md, "Training straight into the mount"). What it writes goes to real files
under `STORE/spool/inbox/` (never to memory, and it survives the daemon dying). The
rules of meta/layout.py cut the run directory into units (checkpoint directories,
checkpoint files, the run's loose files, the files of its folders); the sealer
(sealer.py) seals each as a version of the run when it is due.

After the seal, the job still finds what it wrote where it wrote it: the working view
lays the spool over the run's sealed versions (workview.py), each where it was written.
A sealed checkpoint directory is read-only there (EROFS); a checkpoint file or a loose
file can be written again (copied up into the spool: the next version of it). Removing
sealed content only hides it from the working view; removing a unit that is not sealed
yet seals it first. This module answers the file-system calls below `inbox/`, over the
inbox's state (inbox_state.py: the units, working views and provenance records of each
run, the record of what happens to the spooled files that the sealer decides by); who
creates each part of a run is noted here for its provenance, what each process reads
for its lineage (reads.py). The files on disk are the spool's (ckptfs.spool).
"""
import errno
import json
import logging
import os
import shutil
import stat
import time
from dataclasses import dataclass

import pyfuse3
import trio

from ckptfs.meta.layout import (CHECKPOINT, DIR, FILE, SEAL_MARKER, Unit, classify,
                                looks_like_job_output, unit_of, unit_rooted_at)
from ckptfs.meta.provenance import describe_process
from ckptfs.meta.seal import deep_merge, env_allow_list
from ckptfs.meta.user import clean_document
from ckptfs.spool import daemon as spool_daemon
from ckptfs.spool import records
from ckptfs.spool.layout import ERROR_SUFFIX, INBOX, REMOVED
from ckptfs.store.names import InvalidNameError, validate_name

from .inbox_state import InboxState
from .owners import change_owner, give_to_caller, refuse_foreign_chown
from .sealer import UNSEALED, Sealer, UnitState
from .tree import Node

log = logging.getLogger("ckptfs.inbox")

NAME_MAX = 255
# The spool keeps a path at most this long: room left below PATH_MAX (4096 with its NUL)
# for where the same path goes on its way to a seal (spool/removed/ is 2 bytes longer
# than spool/inbox/, spool/staging/<id>/ up to 20) and for temporary names beside it.
SPOOL_PATH_MAX = 4095 - 40
# What a job may make with mknod: kept in the spool where it was made, never sealed.
SPECIAL_KINDS = {stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket", stat.S_IFBLK: "blockdev",
                 stat.S_IFCHR: "chardev"}
MAX_OTHER_WRITERS = 8
XATTR_SEAL = b"user.ckptfs.seal"
XATTR_ANNOTATE = b"user.ckptfs.annotate"
XATTR_STATE = b"user.ckptfs.state"
XATTR_VERSION = b"user.ckptfs.version"


def kind_of(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return SPECIAL_KINDS.get(stat.S_IFMT(mode), "file")


def spool_flags(flags: int) -> int:
    """How the daemon opens a spool file for a job's open(): O_APPEND dropped (the kernel
    gives every write its offset), and write-only opened read-write, because with the
    writeback cache the kernel reads through the handle the pages a partial write touches
    (the daemon runs as root: the file's mode does not stop it)."""
    flags &= ~os.O_APPEND
    if flags & os.O_ACCMODE == os.O_WRONLY:
        flags = flags & ~os.O_ACCMODE | os.O_RDWR
    return flags


def printable(name: str) -> str:
    """A name as it can stand in one log line: quoted only if it holds control characters."""
    return name if name.isprintable() else repr(name)


@dataclass
class InboxFile:
    fd: int
    key: tuple
    ino: int
    writable: bool
    inode: int | None = None  # the mount's inode number of it (ops.py)


class Inbox(InboxState):
    """The file-system calls below `inbox/`, over the inbox's state (inbox_state.py) and
    its sealer. `daemon` False: no running marker is kept (nothing serves the store)."""

    def __init__(self, store, seal_after: float = 5.0, daemon: bool = True):
        super().__init__(store)
        self.daemon = daemon
        self.mountpoint: str | None = None
        self.sealer = Sealer(self, seal_after)
        self.sealer.recover(crashed=daemon and spool_daemon.last_daemon_died(store.path))
        if daemon:
            spool_daemon.mark_running(store.path)

    # What the mount's stats and `ckptfs status` show.
    @property
    def counters(self) -> dict:
        return self.sealer.counters

    def status(self) -> list[dict]:
        return self.sealer.status()

    def close(self):
        self.sealer.close(self.daemon)
        if self.daemon:
            spool_daemon.mark_stopped(self.store.path)

    async def run(self):
        """The inbox's background work until cancelled: sealing, preparing, forgetting
        what exited processes read."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.sealer.run)
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

    # -- the working view of sealed versions -------------------------------------------------
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
        kind = kind_of(st.st_mode)
        node = Node(key, kind, stat.S_IMODE(st.st_mode), st.st_size if kind != "dir" else 0,
                    st.st_mtime_ns, uid=st.st_uid, gid=st.st_gid, atime_ns=st.st_atime_ns,
                    ctime_ns=st.st_ctime_ns, rdev=st.st_rdev)
        if kind == "symlink":
            node.target = os.readlink(self.spool_path(key))
        elif kind == "dir":
            node.subdirs = self._subdir_count(key)
        return node

    def _subdir_count(self, key: tuple) -> int:
        """Directories the view shows in directory `key`: the spool's and the sealed
        versions' (for its st_nlink, 2 + this, as `find` and pjdfstest expect)."""
        path = self.spool_path(key)
        names = {e.name for e in os.scandir(path) if e.is_dir(follow_symlinks=False)}
        run, rel = self.split(key)
        depth = len(self.parts(key))
        if run is not None:
            names.update(n for n, e in self.view(run).children(rel).items() if e.kind == "dir"
                         and not os.path.lexists(os.path.join(path, n)))
        elif depth == 0:
            names.update(self.store.projects())
        elif depth == 1:
            names.update(self.store.runs(key[1]))
        return len(names)

    def open_file_node(self, key: tuple, fd: int) -> Node:
        """An inbox file whose name was removed (or replaced) while it was open: it lives
        on through its open descriptors until the last close (st_nlink 0)."""
        st = os.fstat(fd)
        return Node(key, "file", stat.S_IMODE(st.st_mode), st.st_size, st.st_mtime_ns,
                    uid=st.st_uid, gid=st.st_gid, atime_ns=st.st_atime_ns,
                    ctime_ns=st.st_ctime_ns, nlink=0)

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
        path = self.spool.error_path(key[1][:-len(ERROR_SUFFIX)])
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

    def refuse_too_long(self, key: tuple):
        """ENAMETOOLONG for a name over NAME_MAX, or a path whose spool copy would not
        fit in PATH_MAX: every path the inbox accepts can be spooled, staged and sealed
        (the spool path is longer than the path in the mount, see SPOOL_PATH_MAX)."""
        if len(os.fsencode(key[1].rpartition("/")[2])) > NAME_MAX:
            raise pyfuse3.FUSEError(errno.ENAMETOOLONG)  # (logged by ops.name_of)
        if len(os.fsencode(self.spool_path(key))) > SPOOL_PATH_MAX:
            log.warning("refused inbox/%s…: the path is too long for the spool (at most %d "
                        "bytes below inbox/ here)", printable(key[1][:80]),
                        SPOOL_PATH_MAX - len(os.fsencode(self.root)) - 1)
            raise pyfuse3.FUSEError(errno.ENAMETOOLONG)

    def _check_new(self, parent: tuple, name: str, is_dir: bool) -> tuple[tuple, str]:
        """Checks for creating `name` in `parent`; returns (run, path in it)."""
        self.refuse_too_long(self.child(parent, name))
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
        state = self.sealer.state_of(run, rel)
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

    def _changed(self, run: tuple, rel: str):
        """Something changed at `rel`: its quiet period starts again, and a unit that
        failed or was held after a crash is released (the job fixed it, or goes on)."""
        self.activity.touched(run, rel)
        self.sealer.unit_changed(run, rel)

    # -- provenance: who writes each part of a run -------------------------------------------
    async def _note_writer(self, run: tuple, rel: str, ctx):
        """Record the process creating a file while it waits for our reply (so it cannot
        be gone yet): the first becomes the provenance of what it writes under this
        top-level entry of the run, a few more are listed. Kept in the spool."""
        if ctx is None:
            return
        top = records.top_of(rel)
        record = self.provenance_record(run, top)
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
        self.save_provenance(run, top)

    # -- operations -----------------------------------------------------------------------------
    async def create(self, parent, name, mode, flags, ctx):
        run, rel = self._check_new(parent, name, is_dir=False)
        key = self.child(parent, name)
        await self._note_writer(run, rel, ctx)
        self._materialize_dirs(run, rel.rpartition("/")[0])
        self._replace_staged(self.spool_path(key), keep_content=False)
        fd = os.open(self.spool_path(key), spool_flags(flags) | os.O_CREAT, stat.S_IMODE(mode))
        give_to_caller(self.spool_path(key), ctx)  # first: a chown clears set-user-ID
        os.fchmod(fd, stat.S_IMODE(mode))  # the writer's umask is applied; not ours again
        self.activity.created_by(run, rel, ctx)
        self._changed(run, rel)
        self.bump_structure(run)
        handle = self._opened(fd, key, writable=True)
        self.activity.bump(handle.ino)
        if name == SEAL_MARKER:
            self.sealer.wake()
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
            if flags & os.O_TRUNC:
                self._seal_before_overwrite(run, rel, ctx)
            self._replace_staged(path, keep_content=not flags & os.O_TRUNC)
        try:
            fd = os.open(path, spool_flags(flags) & ~(os.O_CREAT | os.O_EXCL))
        except PermissionError:  # a daemon not run as root, and a file it may not read
            fd = os.open(path, flags & ~(os.O_APPEND | os.O_CREAT | os.O_EXCL))
        handle = self._opened(fd, key, writable)
        if flags & os.O_TRUNC:
            self._changed(run, rel)
            self.activity.bump(handle.ino)
            self.activity.incomplete.discard(handle.ino)
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
        tmp = self._temporary_beside(target, "copy-up")
        if truncate:
            with open(tmp, "wb"):
                pass
        else:
            await trio.to_thread.run_sync(self.restore_file, found.entry, tmp)
        give_to_caller(tmp, ctx)
        os.chmod(tmp, found.mode)
        os.utime(tmp, ns=(found.mtime_ns, found.mtime_ns))
        os.rename(tmp, target)
        self.activity.created_by(run, rel, ctx)
        self._changed(run, rel)
        self.bump_structure(run)

    def _seal_before_overwrite(self, run: tuple, rel: str, ctx):
        """Another process is about to write a checkpoint file anew (a resumed job
        rewriting `last.ckpt` it has just loaded) before the first content was quiet
        long enough to be sealed: seal that content first, so the checkpoint a job
        resumed from is in the archive. The same process rewriting its own file within
        the quiet period is not (only the last of those is a checkpoint to keep)."""
        unit = unit_of(self.units_of(*run), rel)
        if unit is None or unit.shape != FILE or unit.path != rel or ctx is None:
            return
        path = self.run_path(run, rel)
        st = os.lstat(path)
        state = self.sealer.units.get((*run, rel, None))
        if st.st_size == 0 or st.st_ino in self.activity.open_writers or \
                (state is not None and (state.sealing or state.troubled)):
            return
        creator = self.activity.created.get(run, {}).get(rel)
        if creator is None or not creator[1] or creator[1][0][0] == ctx.pid:
            return
        self.sealer.remove_whole_unit(run, unit, INBOX, hide=False)
        if not os.path.lexists(path):  # the old file went to be sealed: a new, empty one
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, stat.S_IMODE(st.st_mode))
            os.close(fd)
            if os.geteuid() == 0:
                os.chown(path, st.st_uid, st.st_gid)
            self.activity.created_by(run, rel, ctx)
            self.bump_structure(run)

    def _replace_staged(self, path: str, keep_content: bool):
        """Before a spool file that a seal is reading changes, give the path a new inode
        (a copy, or an empty file when it is truncated anyway): the seal reads the
        content as it was when the unit was staged."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if st.st_ino not in self.activity.staged_inodes or not stat.S_ISREG(st.st_mode):
            return
        tmp = self._temporary_beside(path, "cow")
        if keep_content:
            shutil.copy2(path, tmp)
        else:
            with open(tmp, "wb"):
                pass
            os.chmod(tmp, stat.S_IMODE(st.st_mode))
        if os.geteuid() == 0:
            os.chown(tmp, st.st_uid, st.st_gid)
        os.rename(tmp, path)

    def _temporary_beside(self, path: str, what: str) -> str:
        """A short temporary name in the same directory (a name of NAME_MAX bytes has
        no room for a suffix)."""
        return os.path.join(os.path.dirname(path), f".ckptfs-{what}-{self.spool.new_id()}")

    def _opened(self, fd, key, writable: bool) -> InboxFile:
        ino = os.fstat(fd).st_ino
        run, rel = self.split(key)
        self.activity.opened(ino, (*run, rel) if run is not None else None, writable)
        return InboxFile(fd, key, ino, writable)

    async def read(self, handle: InboxFile, off, size):
        return os.pread(handle.fd, size, off)

    async def write(self, handle: InboxFile, off, buf):
        try:
            written = os.pwrite(handle.fd, buf, off)
        except OSError:
            self.activity.incomplete.add(handle.ino)  # e.g. a full disk: the file was cut short
            raise
        self.sealer.counters["bytes_in"] += written
        where = self.activity.paths.get(handle.ino)
        if where is not None:
            self.activity.touched(where[:2], where[2])
        self.sealer.streams.wrote(handle, off, written)  # ingest behind the writer
        self.activity.bump(handle.ino)
        return written

    async def fsync(self, handle: InboxFile, datasync):
        await trio.to_thread.run_sync(os.fdatasync if datasync else os.fsync, handle.fd)

    async def release(self, handle: InboxFile):
        os.close(handle.fd)
        closed = self.activity.released(handle.ino, handle.writable)
        where = self.activity.paths.get(handle.ino)
        self.sealer.queue_prepare(where[:2] if where else None, handle.ino)
        if closed:
            self.sealer.wake()  # its unit may be due now

    async def setattr(self, key, attr, fields, fh, ctx):
        path = self.spool_path(key)
        run, rel = self.split(key)
        if run is None:
            raise pyfuse3.FUSEError(errno.EPERM)
        if self._cached_times_only(key, attr, fields):
            return
        if not os.path.lexists(path):
            node = self.node(key)
            if node is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            if node.kind != "file":
                raise pyfuse3.FUSEError(errno.EROFS)
            await self._copy_up(key, node, truncate=fields.update_size and attr.st_size == 0, ctx=ctx)
        self._refuse_while_sealing(run, rel)
        if fields.update_size and attr.st_size == 0:
            self._seal_before_overwrite(run, rel, ctx)
        self._replace_staged(path, keep_content=not (fields.update_size and attr.st_size == 0))
        if fields.update_size:
            os.truncate(path, attr.st_size)
            ino = os.lstat(path).st_ino
            if attr.st_size == 0:
                self.activity.incomplete.discard(ino)
            self.activity.bump(ino)
            self.activity.paths[ino] = (*run, rel)
            self.sealer.queue_prepare(run, ino)  # `truncate FILE`: no write follows
        if fields.update_uid or fields.update_gid:
            refuse_foreign_chown(os.lstat(path), attr, fields, ctx)
            change_owner(path, attr, fields)
        # After chown, which clears the set-ID bits: a mode given with it wins.
        if fields.update_mode and not os.path.islink(path):  # a symlink's mode means nothing
            os.chmod(path, stat.S_IMODE(attr.st_mode))
        if fields.update_mtime or fields.update_atime:
            st = os.lstat(path)
            atime = attr.st_atime_ns if fields.update_atime else st.st_atime_ns
            mtime = attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns
            os.utime(path, ns=(atime, mtime), follow_symlinks=False)
        self._changed(run, rel)

    def _cached_times_only(self, key: tuple, attr, fields) -> bool:
        """A SETATTR that changes nothing: the writeback cache's kernel sends the times it
        keeps back to the file system (after the pages of a write, or after a setxattr or
        a link count change touched its ctime), and the mtime is the one we have. It must
        not copy a sealed file up, nor count as a change of its unit."""
        if fields.update_size or fields.update_mode or fields.update_uid or \
                fields.update_gid or fields.update_atime:
            return False
        if not fields.update_mtime:
            return True  # ctime alone: the spool file's own follows our changes
        node = self.node(key)
        return node is not None and node.mtime_ns == attr.st_mtime_ns

    def setattr_open(self, fd: int, attr, fields, ctx):
        """ftruncate, fchmod, fchown, futimens of a file open after its name went: only
        the open file changes (it is part of no unit any more)."""
        if fields.update_size:
            os.ftruncate(fd, attr.st_size)
        if fields.update_uid or fields.update_gid:
            refuse_foreign_chown(os.fstat(fd), attr, fields, ctx)
            change_owner(fd, attr, fields)
        if fields.update_mode:
            os.fchmod(fd, stat.S_IMODE(attr.st_mode))
        if fields.update_mtime or fields.update_atime:
            st = os.fstat(fd)
            os.utime(fd, ns=(attr.st_atime_ns if fields.update_atime else st.st_atime_ns,
                             attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns))

    async def mkdir(self, parent, name, mode, ctx):
        key = self.child(parent, name)
        if self.node(key) is not None:
            raise pyfuse3.FUSEError(errno.EEXIST)  # makedirs(exist_ok=True) is content
        run, rel = self._check_new(parent, name, is_dir=True)
        if run is not None:
            self._materialize_dirs(run, rel.rpartition("/")[0])
        else:  # a run of a project the store has but the spool does not (yet)
            os.makedirs(self.spool_path(parent), exist_ok=True)
        path = self.spool_path(key)
        os.mkdir(path)
        give_to_caller(path, ctx)
        # The writer's mode, not our umask; set-group-ID comes from the parent, as on ext4.
        inherited = os.lstat(os.path.dirname(path)).st_mode & stat.S_ISGID
        os.chmod(path, stat.S_IMODE(mode) | inherited)
        if run is not None and rel:
            self.activity.created_by(run, rel, ctx)
            self._changed(run, rel)
            self.bump_structure(run)
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
        self.activity.created_by(run, rel, ctx)
        self._changed(run, rel)
        self.bump_structure(run)
        return key

    async def mknod(self, parent, name, mode, rdev, ctx):
        """A FIFO, a socket (`mkfifo`, a server's bind) or a device file: kept in the
        spool where the job made it, never sealed (a version holds files, directories
        and symlinks only; spool.listing_of leaves the rest out). Only a caller with
        CAP_MKNOD gets as far as a device file (the kernel checks), and the mount is
        nodev: through it, one cannot be opened. A regular file made with mknod is a
        create and a close."""
        if stat.S_ISREG(mode):
            key, handle = await self.create(parent, name, mode, os.O_WRONLY | os.O_EXCL, ctx)
            await self.release(handle)
            return key
        if stat.S_IFMT(mode) not in SPECIAL_KINDS:
            raise pyfuse3.FUSEError(errno.EINVAL)
        key = self.child(parent, name)
        if self.node(key) is not None:
            raise pyfuse3.FUSEError(errno.EEXIST)
        run, rel = self._check_new(parent, name, is_dir=False)
        self._materialize_dirs(run, rel.rpartition("/")[0])
        path = self.spool_path(key)
        os.mknod(path, stat.S_IFMT(mode) | 0o600, rdev)
        give_to_caller(path, ctx)
        os.chmod(path, stat.S_IMODE(mode))  # the caller's umask is applied already
        self._changed(run, rel)
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
        st = os.lstat(path) if os.path.lexists(path) else None
        if st is not None and stat.S_IFMT(st.st_mode) in SPECIAL_KINDS:
            os.unlink(path)  # a FIFO or socket: never part of a unit
            return
        if st is not None:
            if stat.S_ISDIR(st.st_mode):
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
        self.bump_structure(run)

    def _remove_spooled(self, run: tuple, rel: str):
        """`rm` of an unsealed file or symlink: it leaves the working view. If it is a
        whole checkpoint file, it is sealed first (a job that rotates its checkpoints
        faster than the quiet period loses none); a file of a larger unit is kept aside
        until that unit is sealed (if the job goes on to remove the whole unit, it is
        sealed with it)."""
        units = self.units_of(*run)
        unit = unit_of(units, rel)
        if self._sealed(run, rel) is not None:
            self._hide_sealed(run, rel)  # it shadowed a sealed file: that one goes too
        if self.activity.open_for_writing(self.run_path(run, rel)):
            # Removed while still open for writing: a temporary file (tempfile.
            # TemporaryFile), or a write given up. It is no finished checkpoint to keep:
            # it lives on for its open descriptors only, as on a local disk.
            log.info("inbox/%s/%s/%s was removed while open for writing: not archived", *run,
                     printable(rel))
            os.unlink(self.run_path(run, rel))
            return
        if unit is not None and self.activity.incomplete_members(*self.sealer.members_of(run, unit, None)):
            self.sealer.units.setdefault((*run, unit.path, None), UnitState(unit)).troubled = True
        if unit is not None and unit.shape == FILE and unit.path == rel:
            self.sealer.remove_whole_unit(run, unit, INBOX)
            return
        state = self.sealer.units.get((*run, unit.path, None)) if unit else None
        if state is not None and state.troubled:
            os.unlink(self.run_path(run, rel))  # a unit that could not be sealed as it was
            return
        target = os.path.join(self.spool.run_dir(*run, REMOVED), rel)
        try:
            self._clear_kept_ancestors(run, rel)
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

    def _clear_kept_ancestors(self, run: tuple, rel: str):
        """A file kept aside in removed/ where `rel` now needs a directory (the job
        removed file `x`, then made a directory `x` and removes `x/y`): the older
        removal is superseded, as on a local disk where `x` is long gone."""
        base = self.spool.run_dir(*run, REMOVED)
        parts = rel.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            path = os.path.join(base, *parts[:i])
            if os.path.islink(path) or (os.path.lexists(path) and not os.path.isdir(path)):
                os.unlink(path)
                return

    def _hide_sealed(self, run: tuple, rel: str):
        found = self._sealed(run, rel)
        if found is None or found.unit is None:
            return
        self.hide(run, found.unit.version, found.inner if found.unit.shape != FILE else "")

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
        before = self.units_of(*run)
        if os.path.isdir(path):
            os.rmdir(path)
        found = self._sealed(run, rel)
        if found is not None and found.unit is not None:
            self.hide(run, found.unit.version,
                       found.inner if found.unit.path != rel else "")
        self._changed(run, rel)
        self.bump_structure(run)
        self._seal_if_unit_removed(run, rel, before)

    def _seal_if_unit_removed(self, run: tuple, rel: str, units_before: list[Unit]):
        """After `rmdir` of `rel`: if it was the root of an unsealed unit whose files the
        job removed one by one (`shutil.rmtree`), that unit is sealed from what was kept
        aside, then hidden."""
        state = self.sealer.units.get((*run, rel, None))
        removed_root = os.path.join(self.spool.run_dir(*run, REMOVED), rel)
        if state is not None and not state.sealing and (
                state.troubled or not os.path.isdir(removed_root)):
            # Nothing kept to seal (it could not be sealed, or the disk was full): what
            # was prepared of it goes now, freeing its space.
            self.sealer.discard_files(run, state.unit, REMOVED)
            return
        if not os.path.isdir(removed_root):
            return
        removed = self.spool.listing(*run, REMOVED, below=rel)
        removed[rel] = "dir"
        candidates = [u for u in units_before if u.path == rel and u.shape != FILE] or \
            [u for u in classify(removed) if u.path == rel]
        for unit in candidates:
            self.sealer.remove_whole_unit(run, unit, REMOVED)
            return

    async def rename(self, old_parent, old_name, new_parent, new_name, flags, ctx):
        old, new = self.child(old_parent, old_name), self.child(new_parent, new_name)
        old_run, old_rel = self.split(old)
        new_run, new_rel = self.split(new)
        if old_run is None or new_run is None or old_run != new_run or not old_rel or not new_rel:
            raise pyfuse3.FUSEError(errno.EXDEV)  # mv falls back to copy and delete
        self.refuse_too_long(new)
        self._refuse_moving_too_deep(old, new)
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
        if os.path.isfile(self.spool_path(new)) and not os.path.islink(self.spool_path(new)):
            self._seal_before_overwrite(run, new_rel, ctx)  # os.replace(tmp, "last.ckpt")
        moved = os.lstat(self.spool_path(old))
        os.rename(self.spool_path(old), self.spool_path(new))
        if stat.S_ISREG(moved.st_mode):
            self.activity.paths[moved.st_ino] = (*run, new_rel)   # `rsync -a`: temp file, then its name
        for rel in (old_rel, new_rel):
            self._changed(run, rel)
        self.bump_structure(run)

    def _refuse_moving_too_deep(self, old: tuple, new: tuple):
        """A directory moved to a longer path must not take what is below it past the
        spool's path limit (ENAMETOOLONG, as for a path created there)."""
        growth = len(os.fsencode(new[1])) - len(os.fsencode(old[1]))
        top = self.spool_path(old)
        if growth <= 0 or not os.path.isdir(top) or os.path.islink(top):
            return
        deepest = max((len(os.fsencode(os.path.join(d, n)))
                       for d, dirs, files in os.walk(top) for n in dirs + files), default=0)
        if deepest + growth > SPOOL_PATH_MAX:
            log.warning("refused moving inbox/%s: what is below it would be too deep for the "
                        "spool", printable(old[1]))
            raise pyfuse3.FUSEError(errno.ENAMETOOLONG)

    # -- extended attributes: the Python API's channel --------------------------------------
    def setxattr(self, key: tuple, name: bytes, value: bytes):
        """`user.ckptfs.seal`: seal the unit at/under this path now; `user.ckptfs.annotate`
        (a JSON object shaped like ckptfs.json): metadata for its version."""
        run, rel = self.split(key)
        if run is None or name not in (XATTR_SEAL, XATTR_ANNOTATE):
            raise pyfuse3.FUSEError(errno.ENOTSUP)
        units = self.units_of(*run)
        if not rel and name == XATTR_SEAL:  # the run directory: everything waiting in it
            for unit in units:
                state = self.sealer.units.setdefault((*run, unit.path, None), UnitState(unit))
                state.requested, state.held = True, False
            self.sealer.wake()
            return
        if not rel:
            raise pyfuse3.FUSEError(errno.EINVAL)  # annotate a checkpoint, not a run
        unit = unit_of(units, rel) or unit_rooted_at(units, rel)
        if unit is None:
            if self._sealed(run, rel) is not None:
                if name == XATTR_ANNOTATE:
                    raise pyfuse3.FUSEError(errno.EROFS)  # sealed: its metadata is final
                return
            raise pyfuse3.FUSEError(errno.ENOENT if self.node(key) is None else errno.EINVAL)
        state = self.sealer.units.setdefault((*run, unit.path, None), UnitState(unit))
        if name == XATTR_SEAL:
            state.requested, state.held = True, False
            self.sealer.wake()
            return
        if state.sealing:
            # Its seal has read the annotations already (and may be committed, its
            # spool copy not yet cleaned up): a late one would be silently lost.
            raise pyfuse3.FUSEError(errno.EROFS)
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
        earlier = records.load_annotations(self.spool, *run, unit.path) or {}
        records.save_annotations(self.spool, *run, unit.path, deep_merge(earlier, clean))
        self._changed(run, rel)

    def getxattr(self, key: tuple, name: bytes) -> bytes:
        run, rel = self.split(key)
        if run is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        if not rel and name == XATTR_STATE:
            return json.dumps(self.sealer.run_state(run)).encode()
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

    def state_of(self, run: tuple, rel: str, key: tuple) -> dict:
        if os.path.lexists(self.spool_path(key)):
            units = self.units_of(*run)
            unit = unit_of(units, rel) or unit_rooted_at(units, rel)
            state = self.sealer.units.get((*run, unit.path, None)) if unit else None
            if state is None:
                return {"state": "writing" if unit else "empty", "unit": unit.path if unit else None}
            return {"state": self.sealer.public_state(run, state), "unit": unit.path,
                    "error": state.error}
        found = self._sealed(run, rel)
        if found is not None and found.unit is not None:
            return {"state": "sealed", "version": f"{run[0]}/{run[1]}/{found.unit.version}"}
        for (p, r, path, batch), state in self.sealer.units.items():
            if (p, r) == run and batch and (rel == path or rel.startswith(path + "/")):
                return {"state": self.sealer.public_state(run, state, batch), "unit": path,
                        "error": state.error}
        raise pyfuse3.FUSEError(errno.ENOENT)

    def note_spool_read(self, key: tuple, ctx):
        """A process opened an unsealed file to read it: if it is a checkpoint's, what the
        process writes next may come from it."""
        run, rel = self.split(key)
        if run is None or ctx is None:
            return
        unit = unit_of(self.units_of(*run), rel)
        if unit is not None and unit.kind == CHECKPOINT:
            self.reads.note(ctx.pid, (*run, UNSEALED + unit.path), rel)
