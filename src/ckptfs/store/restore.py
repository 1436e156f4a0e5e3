"""Writing a version's files into a directory (`ckptfs get`, and `ckptfs export` into a
directory), so that nothing lands outside it and no half-written file has a real name.

- Every path below DEST is reached through directory file descriptors opened with
  O_NOFOLLOW: a symlink already in DEST (DEST/sub -> /elsewhere) is never followed. DEST
  itself is the path the user named, and is opened as given.
- Every file is written under a temporary name in its own directory, synced, and renamed
  into place only when complete and its SHA-256 checked. An error removes the temporary.
- Runs of zero bytes of whole aligned blocks are not written but skipped (pwrite past
  them, ftruncate at the end), so a sparse file stays sparse.
- DEST must be new or empty; with `force`, files, symlinks and empty directories of the
  version's paths are replaced (links are replaced, never written through), and a
  non-empty directory in the way stops the restore.
"""
import errno
import fnmatch
import os
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .errors import IntegrityError, NotFoundError, StoreError

SPARSE_BLOCK = 4096
PARTIAL_SUFFIX = ".ckptfs-partial"
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class RestoreReport:
    files: int = 0
    bytes: int = 0
    damaged: list = field(default_factory=list)   # (path, message)


class RestoreError(StoreError):
    """The restore could not write something into DEST; `os_error` is why (if an OSError)."""

    def __init__(self, message: str, os_error: OSError | None = None):
        super().__init__(message)
        self.os_error = os_error
        if os_error is not None and os_error.errno:
            self.errno = os_error.errno


class DestinationNotEmptyError(RestoreError):
    errno = errno.EEXIST


# -- writing one file sparsely -------------------------------------------------------------
class SparseWriter:
    """Writes a file's bytes in order to `fd`, leaving every all-zero block (aligned to
    SPARSE_BLOCK in the file) as a hole; `finish()` sets the final size."""

    def __init__(self, fd: int):
        self.fd = fd
        self.offset = 0          # the file offset of the next byte given to write()
        self.head = bytearray()  # bytes of a block not yet complete

    def write(self, data):
        view = memoryview(data).cast("B")
        if self.head:  # complete the block begun by earlier data first
            block_start = self.offset - len(self.head)
            take = min(len(view), SPARSE_BLOCK - len(self.head))
            self.head += view[:take]
            view = view[take:]
            self.offset += take
            if len(self.head) < SPARSE_BLOCK:
                return
            self._write_blocks(memoryview(bytes(self.head)), block_start)
            self.head = bytearray()
        whole = len(view) - len(view) % SPARSE_BLOCK
        if whole:
            self._write_blocks(view[:whole], self.offset)
        self.head += view[whole:]
        self.offset += len(view)

    def finish(self):
        start = self.offset - len(self.head)
        if any(self.head):
            _pwrite_all(self.fd, self.head, start)
        # The size, including a hole at the end that no write reached.
        os.ftruncate(self.fd, self.offset)

    def _write_blocks(self, view: memoryview, at: int):
        """Write the non-zero blocks of `view` (whole blocks, placed at file offset `at`),
        one pwrite per run of non-zero blocks."""
        if len(view) == 0:
            return
        import numpy as np  # here, not at start-up: most CLI commands never restore
        blocks = np.frombuffer(view, dtype=np.uint64).reshape(-1, SPARSE_BLOCK // 8)
        nonzero = blocks.any(axis=1)
        if nonzero.all():
            _pwrite_all(self.fd, view, at)
            return
        edges = np.flatnonzero(np.diff(np.concatenate(([False], nonzero, [False])).astype(np.int8)))
        for first, end in zip(edges[::2], edges[1::2]):
            begin, stop = int(first) * SPARSE_BLOCK, int(end) * SPARSE_BLOCK
            _pwrite_all(self.fd, view[begin:stop], at + begin)


def _pwrite_all(fd: int, data, offset: int):
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


# -- the restore --------------------------------------------------------------------------
class Restorer:
    """One restore of `entries` (parents before children) into `dest`, their bytes read
    (and checked) by `reader` (reader.py)."""

    def __init__(self, reader, dest: str, force: bool, progress=None):
        self.reader, self.dest, self.force, self.progress = reader, dest, force, progress
        self.report = RestoreReport()
        self.dirs: dict[str, int] = {}   # relative path ("" for DEST) -> open dir fd

    def run(self, entries: list[dict]) -> RestoreReport:
        try:
            self.dirs[""] = self._open_dest()
            self._check_empty(entries)
            with ThreadPoolExecutor(2, thread_name_prefix="ckptfs-read") as pool, \
                 ThreadPoolExecutor(1, thread_name_prefix="ckptfs-sha256") as hasher:
                for entry in entries:
                    self._restore_entry(entry, pool, hasher)
            self._finish_directories(entries)
        finally:
            for fd in self.dirs.values():
                os.close(fd)
        return self.report

    def _open_dest(self) -> int:
        try:
            os.makedirs(self.dest, exist_ok=True)
            return os.open(self.dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except (FileExistsError, NotADirectoryError):
            raise RestoreError(f"{self.dest} exists and is not a directory: restore into a "
                               "new or empty directory") from None
        except OSError as e:
            raise self._error(self.dest, e, "") from None

    def _check_empty(self, entries: list[dict]):
        present = os.listdir(self.dirs[""])
        if not present or self.force:
            return
        clashes = [e["path"] for e in entries if e["path"].split("/", 1)[0] in present]
        what = (f"{os.path.join(self.dest, clashes[0])} already exists" if clashes
                else f"{self.dest} is not empty")
        raise DestinationNotEmptyError(f"{what}; restore into a new or empty directory, or "
                                       "use --force to replace the version's files in it")

    def _restore_entry(self, entry: dict, pool, hasher):
        parent_path, _, name = entry["path"].rpartition("/")
        parent = self.dirs[parent_path]
        try:
            if entry["type"] == "dir":
                self.dirs[entry["path"]] = self._make_dir(parent, name)
            elif entry["type"] == "symlink":
                self._make_symlink(parent, name, entry["target"])
            else:
                self._restore_file(parent, name, entry, pool, hasher)
        except OSError as e:
            raise self._error(os.path.join(self.dest, entry["path"]), e,
                              entry["path"]) from None

    def _make_dir(self, parent: int, name: str) -> int:
        try:
            os.mkdir(name, 0o700, dir_fd=parent)
        except FileExistsError:
            pass
        try:
            return os.open(name, DIR_FLAGS, dir_fd=parent)
        except OSError as e:
            # ELOOP: a symlink; ENOTDIR: a file. Replaced with --force, never followed.
            if e.errno not in (errno.ELOOP, errno.ENOTDIR) or not self.force:
                raise
        os.unlink(name, dir_fd=parent)
        os.mkdir(name, 0o700, dir_fd=parent)
        return os.open(name, DIR_FLAGS, dir_fd=parent)

    def _make_symlink(self, parent: int, name: str, target: str):
        if not self.force:
            os.symlink(target, name, dir_fd=parent)
            return
        temp = self._temp_name(name)
        os.symlink(target, temp, dir_fd=parent)
        self._rename_into_place(parent, temp, name)

    def _restore_file(self, parent: int, name: str, entry: dict, pool, hasher):
        temp = self._temp_name(name)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=parent)
        try:
            try:
                self._write_data(fd, entry, pool, hasher)
                os.fchmod(fd, entry["mode"])
                os.utime(fd, ns=(entry["mtime_ns"], entry["mtime_ns"]))
                os.fsync(fd)
            finally:
                os.close(fd)
            self._rename_into_place(parent, temp, name)
        except IntegrityError as e:
            os.unlink(temp, dir_fd=parent)
            self.report.damaged.append((entry["path"], str(e)))
            return
        except BaseException:
            _unlink_quietly(temp, parent)
            raise
        self.report.files += 1
        self.report.bytes += entry["size"]

    def _write_data(self, fd: int, entry: dict, pool, hasher):
        writer = SparseWriter(fd)
        for data in self.reader.iter_file_checked(entry, pool, hasher):
            writer.write(data)
            if self.progress:
                self.progress(len(data))
        writer.finish()

    def _rename_into_place(self, parent: int, temp: str, name: str):
        """With --force, rename (replacing a file or a link, never following it);
        without, a hard link that fails if the name appeared meanwhile."""
        if self.force:
            os.rename(temp, name, src_dir_fd=parent, dst_dir_fd=parent)
            return
        try:
            os.link(temp, name, src_dir_fd=parent, dst_dir_fd=parent, follow_symlinks=False)
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            os.rename(temp, name, src_dir_fd=parent, dst_dir_fd=parent)  # no hard links here
            return
        os.unlink(temp, dir_fd=parent)

    @staticmethod
    def _temp_name(name: str) -> str:
        return f".{name[:200]}.{secrets.token_hex(4)}{PARTIAL_SUFFIX}"

    def _finish_directories(self, entries: list[dict]):
        """Modes and mtimes of directories last, children before parents (writing into a
        directory changes its mtime, and a read-only one could not be filled); then each
        directory is synced, so the renames into it are on disk."""
        for entry in reversed(entries):
            if entry["type"] == "dir":
                fd = self.dirs[entry["path"]]
                os.fchmod(fd, entry["mode"])
                os.utime(fd, ns=(entry["mtime_ns"], entry["mtime_ns"]))
        for fd in self.dirs.values():
            os.fsync(fd)

    def _error(self, where: str, error: OSError, path: str) -> RestoreError:
        reason = os.strerror(error.errno).lower() if error.errno else str(error)
        if error.errno == errno.ELOOP or (error.errno == errno.ENOTDIR and path):
            reason = "a symlink or file is in the way (never followed); use --force to replace it"
        elif error.errno in (errno.EISDIR, errno.ENOTEMPTY):
            reason = "a directory is in the way (get never removes one)"
        done = self.report.files
        return RestoreError(f"cannot write {where}: {reason}; {done} complete file(s) were "
                            "restored before it, no partial file was left", error)


def _unlink_quietly(name: str, dir_fd: int):
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass


def restore_entries(reader, entries: list[dict], dest: str, force: bool = False,
                    progress=None) -> RestoreReport:
    """Write `entries` (parents before children) into `dest` (see the module's doc)."""
    return Restorer(reader, dest, force, progress).run(entries)


def select_entries(entries: list[dict], patterns, name: str) -> list[dict]:
    """The entries of version `name` (parents before children) whose path or file name
    matches any glob of `patterns`, and their directories; all of them without patterns."""
    if not patterns:
        return entries
    chosen = set()
    for pattern in patterns:
        hits = [e["path"] for e in entries if e["type"] != "dir"
                and (fnmatch.fnmatchcase(e["path"], pattern)
                     or fnmatch.fnmatchcase(e["path"].rsplit("/", 1)[-1], pattern))]
        if not hits:
            raise NotFoundError(f"no file of {name} matches {pattern!r}")
        chosen.update(hits)
    parents = {p.rsplit("/", 1)[0] for p in chosen if "/" in p}
    for p in list(parents):
        while "/" in p:
            p = p.rsplit("/", 1)[0]
            parents.add(p)
    return [e for e in entries if e["path"] in chosen or e["path"] in parents]
