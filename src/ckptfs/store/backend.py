"""The storage seam: where a store keeps its packs, its journal and its settings.

The engine reaches those (and a garbage collection's intent) only through a `Backend`
(docs/backend.md says what an implementation must guarantee). A backend holds
*objects*: named byte strings, written once and read back whole or by range, with
names like `packs/000001/00000123.pack` or `ckptfs.toml` ("/" separates the parts of a
name; no part starts with "."). Its methods are the ones an object store (S3) has:

    put_if_absent  create an object, refused if one of that name exists (S3's
                   conditional write, `If-None-Match: *`)
    put            create or atomically replace an object (the settings, a gc's intent)
    get / stat     an object's bytes (or a range of them), its size
    list, delete   the objects whose names start with a prefix; remove one
    open_writer    stream a big object (a pack) that becomes visible as a whole when it
                   is committed: an S3 backend uploads it then, with put-if-absent
    open_reader    a reader of ranges that may keep objects open (a local file's
                   descriptor, read with pread, hinted with posix_fadvise)
    journal        the journal's log: append of entry `seq`, refused when `seq` is taken

`LocalBackend` is the first implementation: the store's directory, in exactly the layout
ckptfs has always written (docs/format.md). What a local directory can do and an object
store cannot (fsync of a directory, pread of an open file, O_APPEND, flock) lives inside
its methods, never in the engine.

What is not here: the LMDB index (store/index.py, a cache derived from packs and
journal), the spool and the lock files a running process holds (local by nature).
"""
import fcntl
import json
import mmap
import os
import secrets
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass

from .errors import IntegrityError
from .private import file_mode_in, make_private_dirs, private_open

JOURNAL_DIR = "journal"
JOURNAL_FILE = "journal.jsonl"
JOURNAL_LOCK = "lock"


class ObjectExistsError(FileExistsError):
    """A put-if-absent (or a writer) named an object that exists: the first one stays."""


class ObjectMissingError(FileNotFoundError):
    """No object has that name."""


class BackendUnavailableError(ConnectionError):
    """The storage cannot be reached (an object store's endpoint is down): nothing was
    changed that the caller does not know of; the same call may succeed later."""


class SeqTakenError(ObjectExistsError):
    """The journal already holds an entry with that seq: another writer took it first."""


@dataclass(frozen=True)
class ObjectInfo:
    name: str
    size: int
    mtime: float | None = None  # when it was written (epoch seconds), where known


class ObjectWriter(ABC):
    """A new object written in pieces. Nothing of it is an object before `commit`
    (a local backend may show the unfinished file; the engine recognises one)."""

    size: int  # bytes written so far

    @abstractmethod
    def write(self, data) -> None: ...

    @abstractmethod
    def commit(self) -> None:
        """Make the object durable and visible as a whole. Raises ObjectExistsError if an
        object of that name appeared meanwhile (the first one stays)."""

    @abstractmethod
    def abort(self) -> None:
        """Drop what was written; never raises for an object that is already gone."""


class ObjectReader:
    """Reads ranges of objects, for a reader that reads many (the chunk read path). This
    default asks `backend.get` each time; a backend may keep objects open instead."""

    def __init__(self, backend: "Backend"):
        self._backend = backend

    def read(self, name: str, offset: int, length: int) -> bytes:
        return self._backend.get(name, offset, length)

    def will_need(self, name: str, offset: int, length: int) -> None:
        """A hint that a range is read soon (a backend may start fetching it)."""

    def drop(self, name: str, offset: int, length: int) -> bool:
        """Forget any copy of the range this reader keeps (a check found the bytes it read
        damaged); True if there was one, so that a read again may get other bytes."""
        return False

    def forget_deleted(self) -> None:
        """Let go of objects that were deleted (e.g. descriptors that keep disk space)."""

    def close(self) -> None:
        """Release what the reader holds."""


class JournalLog(ABC):
    """Where the journal's entries are kept: one line of bytes (a JSON object with an
    integer `seq`, no newline) per entry, seq 1, 2, … without gaps. journal.py builds
    and checks the entries (hash chain); this only keeps them.

    On an object store each entry can be an object named by its seq, created with
    put-if-absent: two writers can never both take one seq, and the loser catches up
    and tries the next. A local log keeps one file and serialises writers with flock."""

    location: str  # where the journal is, for messages
    # Whether entries carry a random `nonce`: on an object store a writer whose PUT's
    # reply was lost reads the entry back and knows by it whether it was its own.
    wants_nonce: bool = False

    @contextmanager
    def locked(self):
        """Held by a writer for a whole commit (check, append, index update)."""
        yield

    @abstractmethod
    def last(self) -> bytes | None:
        """The last entry's line, or None for an empty journal."""

    @abstractmethod
    def append(self, seq: int, line: bytes) -> None:
        """Store entry `seq` (one more than the last), durably. Raises SeqTakenError if
        an entry `seq` exists."""

    @abstractmethod
    def remove_last(self, seq: int) -> None:
        """Take back entry `seq`, the last one, which this process appended (a commit
        that could not finish); the caller still holds `locked()`."""

    @abstractmethod
    def lines(self, after_seq: int = 0):
        """The lines of the entries with seq > `after_seq`, oldest first."""

    @abstractmethod
    def raw(self) -> bytes:
        """The journal as JSON lines, each ending in a newline (what `audit` shows)."""

    def torn_tail(self) -> tuple[bytes, int] | None:
        """(the bytes of an append cut short by a crash, where they start), if the log
        can hold any (a file can; objects written whole cannot)."""
        return None

    def mend_tail(self) -> None:
        """Turn a torn tail that is a whole entry into the last entry."""
        raise NotImplementedError


class Backend(ABC):
    """The objects of one store (module docstring; docs/backend.md has the contract)."""

    location: str  # the store's place (a directory, a bucket), for messages
    # Shared: many machines write it at once, each with its own index (an object
    # store). Then pack ids are random, not counted; each pack has an index object;
    # garbage collection journals its changes and deletes only after a grace period.
    shared: bool = False

    @abstractmethod
    def put_if_absent(self, name: str, data: bytes) -> None:
        """Create object `name` holding `data`, atomically (all or nothing visible) and
        durably. Raises ObjectExistsError, leaving the existing object as it was, if one
        of that name exists."""

    @abstractmethod
    def put(self, name: str, data: bytes, secret: bool = False) -> None:
        """Create or replace object `name` atomically and durably. `secret`: only the
        store's owner may read it (it holds a key)."""

    @abstractmethod
    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        """The object's bytes from `offset`, `length` of them (all with None): fewer only
        where the object ends. Raises ObjectMissingError."""

    @abstractmethod
    def stat(self, name: str) -> int:
        """The object's size. Raises ObjectMissingError."""

    @abstractmethod
    def list(self, prefix: str) -> list[ObjectInfo]:
        """The objects whose names start with `prefix`, sorted by name."""

    @abstractmethod
    def delete(self, name: str) -> bool:
        """Remove object `name`, durably. Deleting an absent object is not an error (an
        object store's delete is idempotent): returns whether it was there."""

    @abstractmethod
    def open_writer(self, name: str) -> ObjectWriter:
        """A writer of a new object `name` (module docstring). May raise ObjectExistsError
        now if the name is taken; `commit` raises it in any case."""

    def open_reader(self, cached: bool = True) -> ObjectReader:
        """`cached=False`: the storage's own bytes, never a local cache's (verify,
        rebuild and repair scan packs to judge what the store holds)."""
        return ObjectReader(self)

    @abstractmethod
    def journal(self) -> JournalLog: ...

    def describe(self, name: str) -> str:
        """Where object `name` is, for messages."""
        return f"{self.location}/{name}"

    def probe_conditional_writes(self) -> str | None:
        """Why this storage cannot be a store many writers share (it does not refuse a
        second create of one name), or None. A directory always refuses (link())."""
        return None

    def abort_stale_uploads(self, older_than: float) -> int:
        """Abort uploads begun more than `older_than` seconds ago and never finished (an
        object store's multipart uploads of a killed writer); returns how many."""
        return 0

    def close(self) -> None:
        """Release connections and threads."""

    def root_problem(self) -> str | None:
        """Why there is no store at `location` at all (" is not a directory"), or None.
        Raises BackendUnavailableError when the storage cannot be reached to tell."""
        return None


def check_object_name(name: str) -> None:
    """ValueError unless `name` is an object name: parts separated by "/", none empty,
    "." or "..", none starting with "." (those are free for a backend's own files)."""
    parts = name.split("/")
    if not name or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
        raise ValueError(f"not an object name: {name!r}")


# -- the local directory ---------------------------------------------------------------------
class LocalBackend(Backend):
    """Objects as files below a directory (the store's): the name's parts are its path.
    Files are created private (private.py); a file being written is already there under
    its name (an unfinished pack, which has no end record); a finished one is fsync'd,
    and so is its directory."""

    def __init__(self, root: str):
        self.root = self.location = root

    def path_of(self, name: str) -> str:
        """The file holding object `name` (local only: tests and messages use it)."""
        check_object_name(name)
        return os.path.join(self.root, *name.split("/"))

    def describe(self, name: str) -> str:
        return self.path_of(name)

    def root_problem(self) -> str | None:
        if os.path.isdir(self.root):
            return None
        return " is not a directory" if os.path.exists(self.root) else ": no such store"

    def put_if_absent(self, name: str, data: bytes) -> None:
        path = self.path_of(name)
        # A temporary name of its own: the writers racing for `name` must not share one.
        temp = self._write_temp(path, data, file_mode_in(os.path.dirname(path)),
                                f".{os.path.basename(path)}.{secrets.token_hex(4)}.tmp")
        try:
            os.link(temp, path)  # unlike rename, link never replaces: it is put-if-absent
        except FileExistsError:
            raise ObjectExistsError(f"{path} exists") from None
        finally:
            os.unlink(temp)
        fsync_dir(os.path.dirname(path))

    def put(self, name: str, data: bytes, secret: bool = False) -> None:
        path = self.path_of(name)
        mode = 0o600 if secret else file_mode_in(os.path.dirname(path))
        # One temporary name per object: one a crash left behind is reused, not piled up.
        temp = self._write_temp(path, data, mode, f".{os.path.basename(path)}.tmp")
        try:
            os.rename(temp, path)
        except BaseException:
            os.unlink(temp)
            raise
        fsync_dir(os.path.dirname(path))

    @staticmethod
    def _write_temp(path: str, data: bytes, mode: int, temp_name: str) -> str:
        """A durable file beside `path` named `temp_name`, which no object can have (it
        starts with a dot)."""
        make_private_dirs(os.path.dirname(path))
        temp = os.path.join(os.path.dirname(path), temp_name)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            os.unlink(temp)
            raise
        return temp

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        try:
            with open(self.path_of(name), "rb") as f:
                f.seek(offset)
                return f.read() if length is None else f.read(length)
        except FileNotFoundError:
            raise ObjectMissingError(f"{self.path_of(name)} is missing") from None

    def stat(self, name: str) -> int:
        try:
            return os.path.getsize(self.path_of(name))
        except FileNotFoundError:
            raise ObjectMissingError(f"{self.path_of(name)} is missing") from None

    def list(self, prefix: str) -> list[ObjectInfo]:
        # Walk only the directory the prefix names (`packs/`), not the whole store.
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        found = []
        # followlinks: a fan-out directory may be a symlink to another disk.
        for dirpath, dirnames, filenames in os.walk(os.path.join(self.root, base),
                                                    followlinks=True):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = os.path.relpath(dirpath, self.root).replace(os.sep, "/")
            for filename in filenames:
                name = filename if rel == "." else f"{rel}/{filename}"
                if filename.startswith(".") or not name.startswith(prefix):
                    continue
                try:
                    st = os.stat(os.path.join(dirpath, filename))
                    found.append(ObjectInfo(name, st.st_size, st.st_mtime))
                except FileNotFoundError:
                    continue  # deleted while listed
        return sorted(found, key=lambda info: info.name)

    def delete(self, name: str) -> bool:
        path = self.path_of(name)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        fsync_dir(os.path.dirname(path))
        return True

    def open_writer(self, name: str) -> ObjectWriter:
        return _LocalWriter(self.path_of(name))

    def open_reader(self, cached: bool = True) -> ObjectReader:
        return _LocalReader(self)

    def journal(self) -> JournalLog:
        return _LocalJournal(os.path.join(self.root, JOURNAL_DIR))


def fsync_dir(path: str) -> None:
    """Make the entries of a local directory durable (what a rename or unlink changed)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


DIRECT_BLOCK = 4 << 20  # bytes a pack writer gathers before one O_DIRECT write


def _set_direct_io(fd: int, on: bool) -> bool:
    """Turn O_DIRECT on or off for `fd`; False if the file system has no direct I/O
    (tmpfs, some FUSE and network file systems refuse it with EINVAL)."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT if on else flags & ~os.O_DIRECT)
    except OSError:
        return False
    return True


class _LocalWriter(ObjectWriter):
    """Appends to a new file, created at once with O_EXCL (two writers can never share
    a name, even with a stale pack id counter); `commit` fsyncs it and its directory.

    Packs are written with direct I/O, in aligned blocks of DIRECT_BLOCK gathered in a
    page-aligned buffer; the last, partial block is written through the page cache at
    `commit`. A pack is read long after it is written (its chunks were just in memory),
    so caching it only pushed out pages a training job wants, and writing a checkpoint
    through the page cache then fsyncing it measured 7 x slower here than writing it
    direct (docs/benchmarks.md, "Packs written around the page cache"). Where the file
    system has no direct I/O the writer falls back to buffered writes."""

    def __init__(self, path: str):
        self.path = path
        make_private_dirs(os.path.dirname(path))
        try:
            self._fd = private_open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            raise ObjectExistsError(f"{path} exists") from None
        self._direct = _set_direct_io(self._fd, True)
        self._block = mmap.mmap(-1, DIRECT_BLOCK)  # page-aligned, as O_DIRECT needs
        self._filled = 0
        self.size = 0

    def write(self, data) -> None:
        view = memoryview(data).cast("B")
        while view:
            taken = min(len(view), DIRECT_BLOCK - self._filled)
            self._block[self._filled:self._filled + taken] = view[:taken]
            self._filled += taken
            view = view[taken:]
            if self._filled == DIRECT_BLOCK:
                self._write_block()
        self.size += len(data)

    def _write_block(self) -> None:
        block = memoryview(self._block)[:self._filled]
        try:
            while block:
                written = os.write(self._fd, block)
                if written < len(block) and self._direct:
                    # A short direct write leaves the file unaligned: go on buffered.
                    self._direct = not _set_direct_io(self._fd, False)
                block = block[written:]
        finally:
            block.release()
        self._filled = 0

    def commit(self) -> None:
        if self._direct:
            # The last block is partial: O_DIRECT takes only whole aligned blocks.
            _set_direct_io(self._fd, False)
            self._direct = False
        self._write_block()
        os.fsync(self._fd)
        self._close()
        fsync_dir(os.path.dirname(self.path))

    def _close(self) -> None:
        """Close the file and drop the buffer; a second call does nothing."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)
            self._block.close()

    def abort(self) -> None:
        try:
            self._close()
        finally:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


class _LocalReader(ObjectReader):
    """Keeps a few files open (LRU) and reads them with pread; hints with posix_fadvise."""

    def __init__(self, backend: LocalBackend, max_open: int = 64):
        super().__init__(backend)
        self._fds: OrderedDict[str, int] = OrderedDict()
        self._max_open = max_open
        self._lock = threading.Lock()
        self._retired: list[int] = []  # fds of deleted files, closed one round later

    def _fd(self, name: str) -> int:
        with self._lock:
            fd = self._fds.get(name)
            if fd is not None:
                self._fds.move_to_end(name)
                return fd
            try:
                fd = os.open(self._backend.path_of(name), os.O_RDONLY)
            except FileNotFoundError:
                raise ObjectMissingError(f"{self._backend.path_of(name)} is missing") from None
            self._fds[name] = fd
            while len(self._fds) > self._max_open:
                _, old = self._fds.popitem(last=False)
                os.close(old)
            return fd

    def read(self, name: str, offset: int, length: int) -> bytes:
        return os.pread(self._fd(name), length, offset)

    def will_need(self, name: str, offset: int, length: int) -> None:
        try:
            os.posix_fadvise(self._fd(name), offset, length, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass  # a hint

    def forget_deleted(self) -> None:
        """A reader may still be using a deleted file's descriptor, so they are closed at
        the next call, not now."""
        with self._lock:
            for fd in self._retired:
                os.close(fd)
            self._retired = []
            for name in list(self._fds):
                if not os.path.exists(self._backend.path_of(name)):
                    self._retired.append(self._fds.pop(name))

    def close(self) -> None:
        with self._lock:
            for fd in list(self._fds.values()) + self._retired:
                os.close(fd)
            self._fds.clear()
            self._retired = []


class _LocalJournal(JournalLog):
    """`journal/journal.jsonl`, one entry per line, appended under an flock on
    `journal/lock`. A last line without its newline is an append cut short by a crash: not
    an entry (the next append cuts it off), unless `mend_tail` gives it its newline."""

    def __init__(self, journal_dir: str):
        self.dir = journal_dir
        self.path = self.location = os.path.join(journal_dir, JOURNAL_FILE)
        self.lock_path = os.path.join(journal_dir, JOURNAL_LOCK)
        self._thread_lock = threading.Lock()  # flock does not exclude threads of one process
        self._appended: tuple[int, int] | None = None  # (seq, where its line starts)

    @contextmanager
    def locked(self):
        with self._thread_lock:
            make_private_dirs(self.dir)  # a store has it; a backend of its own makes it
            fd = private_open(self.lock_path, os.O_RDWR | os.O_CREAT)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # releases the flock

    def _tail(self) -> tuple[bytes | None, int]:
        """(the last whole line, the length of the file up to its newline)."""
        try:
            size = os.path.getsize(self.path)
        except FileNotFoundError:
            return None, 0
        if size == 0:
            return None, 0
        with open(self.path, "rb") as f:
            window = 1 << 16
            while True:
                start = max(0, size - window)
                f.seek(start)
                data = f.read(size - start)
                end = data.rfind(b"\n")
                if end < 0:
                    if start == 0:
                        return None, 0
                    window *= 4
                    continue
                begin = data.rfind(b"\n", 0, end) + 1
                if begin == 0 and start > 0:
                    window *= 4
                    continue
                return data[begin:end], start + end + 1

    def last(self) -> bytes | None:
        return self._tail()[0]

    def append(self, seq: int, line: bytes) -> None:
        last, valid_len = self._tail()
        last_seq = last_entry_seq(last) if last is not None else 0
        if seq <= last_seq:
            raise SeqTakenError(f"journal entry {seq} exists in {self.path}")
        if seq != last_seq + 1:
            raise ValueError(f"journal entry {seq} would leave a gap after entry {last_seq}")
        fd = private_open(self.path, os.O_WRONLY | os.O_CREAT)
        try:
            if os.fstat(fd).st_size != valid_len:
                os.ftruncate(fd, valid_len)  # a torn tail goes
            try:
                os.pwrite(fd, line + b"\n", valid_len)
                os.fsync(fd)
            except OSError:
                os.ftruncate(fd, valid_len)  # never leave half an entry behind
                raise
        finally:
            os.close(fd)
        self._appended = (seq, valid_len)

    def remove_last(self, seq: int) -> None:
        if self._appended is None or self._appended[0] != seq:
            raise RuntimeError("rollback of an entry that was not the last one appended")
        fd = os.open(self.path, os.O_WRONLY)
        try:
            os.ftruncate(fd, self._appended[1])
            os.fsync(fd)
        finally:
            os.close(fd)
        self._appended = None

    def lines(self, after_seq: int = 0):
        # Entry n is line n: the lines before `after_seq` are skipped unparsed.
        try:
            with open(self.path, "rb") as f:
                for number, line in enumerate(f, 1):
                    if not line.endswith(b"\n"):
                        return  # torn tail: never committed
                    if number > after_seq:
                        yield line[:-1]
        except FileNotFoundError:
            return

    def raw(self) -> bytes:
        try:
            with open(self.path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return b""

    def torn_tail(self) -> tuple[bytes, int] | None:
        try:
            with open(self.path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                if size == 0:
                    return None
                f.seek(size - 1)
                if f.read(1) == b"\n":
                    return None
        except FileNotFoundError:
            return None
        _last, valid_len = self._tail()
        with open(self.path, "rb") as f:
            f.seek(valid_len)
            return f.read(), valid_len

    def mend_tail(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)


def last_entry_seq(line: bytes) -> int:
    """The `seq` of the journal's last line; IntegrityError if it is not an entry."""
    try:
        return json.loads(line)["seq"]
    except (ValueError, KeyError, TypeError):
        raise IntegrityError(
            "the journal's last entry is not a valid JSON entry: the journal was "
            "altered or damaged; nothing can be appended to it until it is restored "
            "from a backup (`ckptfs audit verify` names the damage)") from None
