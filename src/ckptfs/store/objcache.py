"""The chunk cache: a machine's local copy of the pack bytes it read from an object store.

`CachingReader` is an `ObjectReader` (backend.py) over any backend. It cuts every object
into fixed blocks (4 MiB by default) and keeps the blocks it fetched as files under a
cache directory, up to a byte capacity, the least recently used going first. The objects
it reads are packs, which never change once written, so a cached byte never goes stale;
a pack that gc deleted is simply never asked for again and its blocks age out.

    read(name, offset, length)   the blocks of the range: from the cache directory, else
                                 fetched, one ranged `get` per contiguous run of missing
                                 blocks (neighbouring records come in one request), the
                                 runs in parallel; a writer thread keeps them
    will_need(...)               the same fetches, started in the background; a `read` of
                                 a block on its way waits for that fetch (one per block);
                                 hints (and reads) that move on through an object fetch
                                 further ahead, so that several requests are in flight
    drop(name, offset, length)   forget the cached blocks of a range that failed its
                                 check (the pack reader then reads once more)
    handle()                     a reader of this cache whose `close` leaves it open

Layout of the cache directory (docs/backend.md, "The chunk cache"):

    blocks-<block size>/usage               the bytes of cached blocks (8 bytes, little-
                                            endian), and the flock that guards them
    blocks-<block size>/<xx>/<name>.<n>     block n of object <name> (quoted: no "/"),
                                            exactly a block long; <xx> spreads the
                                            objects over 256 directories
    blocks-<block size>/<xx>/<name>.<n>.last  the object's last block, shorter, then its
                                            length (8 bytes, little-endian); length 0:
                                            the object ended before this block

Several processes of one machine (the mount, a CLI command) may share a directory: a
block appears whole under its name or not at all (written aside, then linked: never
replaced), the byte count is changed only under the flock, and an eviction tolerates a
block another process already removed. Recency is each block's mtime (when it was
fetched, and read since), so the order survives a restart. Nothing here is durable
on purpose: a block a crash damaged is dropped by its size, or by the pack's own record
checksums through `drop`.
"""
import fcntl
import heapq
import os
import secrets
import shutil
import struct
import threading
import time
import zlib
from collections import OrderedDict
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import quote

from .backend import Backend, ObjectReader
from .private import make_private_dirs

BLOCK_SIZE = 4 << 20
MAX_RUN_BLOCKS = 4     # one ranged get covers at most this many blocks; longer runs go in
                       # parallel requests (an object store serves several faster than one)
WORKERS = 8
READ_AHEAD = 32 << 20  # at most this far past the hints of a sequential reader
STREAMS = 64           # objects whose sequential reading is followed
WRITE_BACKLOG = 256 << 20  # fetched bytes waiting to be written, at most
LAST_SUFFIX = ".last"
USAGE_FILE = "usage"
USAGE = struct.Struct("<q")
LENGTH = struct.Struct("<Q")  # after an object's last block: its length
HINTED_BLOCKS = 1024  # cached blocks remembered as already read ahead
STALE_TEMP_SECONDS = 3600  # a temporary file this old was left by a process that died


@dataclass
class CacheStats:
    """What the cache did since it was opened (for `stats`)."""
    hits: int = 0           # blocks read from the cache directory
    fetched: int = 0        # blocks fetched from the backend
    requests: int = 0       # ranged gets those took
    joined: int = 0         # blocks a read waited for while another fetch brought them
    dropped: int = 0        # blocks found damaged and removed

    def __post_init__(self):
        self._lock = threading.Lock()

    def add(self, what: str, n: int = 1) -> None:
        with self._lock:  # counted from many threads
            setattr(self, what, getattr(self, what) + n)


class CachingReader(ObjectReader):
    """Ranges of immutable objects through a size-capped local block cache (module
    docstring). Safe for many threads; several processes may share `cache_dir`."""

    def __init__(self, backend: Backend, cache_dir: str, capacity_bytes: int,
                 block_size: int = BLOCK_SIZE, workers: int = WORKERS,
                 read_ahead: int = READ_AHEAD):
        super().__init__(backend)
        self.block_size = block_size
        self.capacity = capacity_bytes
        self.read_ahead = read_ahead
        self.root = os.path.join(cache_dir, f"blocks-{block_size}")
        self.stats = CacheStats()
        self._inflight: dict[tuple[str, int], Future] = {}  # blocks being fetched
        self._inflight_lock = threading.Lock()
        # Recency of the blocks this process knows; the files' mtimes are the truth
        # other processes share.
        self._recency = _Recency()
        self._lock = threading.Lock()  # the flock does not exclude this process's threads
        self._last_stamp = 0
        self._hinted: OrderedDict[tuple[str, int], bool] = OrderedDict()  # read ahead lately
        # Objects read sequentially: name -> (first, last block of the last hint, or
        # read, blocks fetched ahead of it). Hints (the mount's read-ahead) and reads (a
        # restore's, which gives no hints) are followed apart.
        self._hint_streams: OrderedDict[str, tuple[int, int, int]] = OrderedDict()
        self._read_streams: OrderedDict[str, tuple[int, int, int]] = OrderedDict()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="ckptfs-objcache")
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="ckptfs-objcache-write")
        self._backlog = 0  # bytes fetched and not yet written
        self._backlog_changed = threading.Condition()
        self._closed = False
        make_private_dirs(self.root)
        self._usage_fd = os.open(os.path.join(self.root, USAGE_FILE),
                                 os.O_RDWR | os.O_CREAT, 0o600)
        with self._locked():
            _remove_other_block_sizes(cache_dir, os.path.basename(self.root))
            self._write_usage(self._scan())
            self._make_room(0)  # the capacity may be smaller than last time

    # -- ObjectReader ---------------------------------------------------------------------
    def read(self, name: str, offset: int, length: int) -> bytes:
        spans = self._spans(offset, length)
        if spans:
            self._prefetch(name, [index for index, _lo, _hi in spans], self._read_streams,
                           with_wanted=False)
        parts = {}
        for at, (index, lo, hi) in enumerate(spans):
            part = self._from_cache(name, index, lo, hi)
            if part is not None:
                parts[index] = part
                if len(part) < hi - lo:
                    spans = spans[:at + 1]  # its object ends here: nothing after to fetch
                    break
        missing = [index for index, _lo, _hi in spans if index not in parts]
        if missing:
            blocks = self._fetch(name, missing)
            for index, lo, hi in spans:
                if index in blocks:
                    parts[index] = blocks[index][lo:hi]
        out = []
        for index, lo, hi in spans:
            part = parts.get(index, b"")  # none: past the object's end, found cached
            out.append(part)
            if len(part) < hi - lo:
                break  # the object ends here
        return out[0] if len(out) == 1 and isinstance(out[0], bytes) else b"".join(out)

    def will_need(self, name: str, offset: int, length: int) -> None:
        wanted = [index for index, _lo, _hi in self._spans(offset, length)]
        if wanted:
            self._prefetch(name, wanted, self._hint_streams, with_wanted=True)

    def _prefetch(self, name: str, wanted: list[int], streams: OrderedDict,
                  with_wanted: bool) -> None:
        """Start fetching the blocks `wanted` (if `with_wanted`) and, for a sequential
        reader, the blocks after them, in the background."""
        if self._closed:
            return
        ahead = self._ahead_of(name, wanted, streams)
        blocks = (wanted if with_wanted else []) + list(
            range(wanted[-1] + 1, wanted[-1] + 1 + ahead))
        if not blocks:
            return
        claimed, _waiting, cached = self._claim(name, blocks)
        self._fetch_in_background(name, _runs(sorted(claimed)), claimed)
        for index in cached:
            self._hint_cached(name, index)

    def _ahead_of(self, name: str, wanted: list[int], streams: OrderedDict) -> int:
        """How many blocks past `wanted` to fetch too: none for a first hint (or read) of
        an object; for ones that follow each other (a sequential reader), a window that
        doubles up to `read_ahead`, so that several requests are in flight (a request to
        an object store takes a while to start; a few in parallel hide that)."""
        with self._lock:
            previous = streams.pop(name, None)
            ahead = 0
            if previous is not None and wanted[0] == previous[0]:
                ahead = previous[2]  # the same place again: neither on nor away
            elif previous is not None and previous[0] < wanted[0] <= previous[1] + 1:
                ahead = min(self.read_ahead // self.block_size,
                            max(MAX_RUN_BLOCKS, 2 * previous[2]))
            streams[name] = (wanted[0], wanted[-1], ahead)
            if len(streams) > STREAMS:
                streams.popitem(last=False)
            return ahead

    def drop(self, name: str, offset: int, length: int) -> bool:
        dropped = False
        for index, _lo, _hi in self._spans(offset, length):
            for last in (False, True):
                dropped |= self._discard(self._block_path(name, index, last))
        return dropped

    def forget_deleted(self) -> None:
        """Nothing is held open: a deleted pack is not asked for again and ages out."""

    def handle(self) -> ObjectReader:
        """A reader through this cache whose `close` leaves the cache open: what a
        backend's `open_reader` hands out when one cache serves all its readers (the
        chunk reader's, every pack scan's); the backend closes the cache itself."""
        return _Handle(self)

    def close(self) -> None:
        # Fetches under way finish and their blocks are written; those not started are
        # dropped.
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._writer.shutdown(wait=True)
        self._closed = True
        with self._inflight_lock:
            stranded = list(self._inflight.values())  # their fetch was cancelled
            self._inflight.clear()
        _fail(stranded, RuntimeError("the chunk cache was closed"))
        if self._usage_fd >= 0:
            os.close(self._usage_fd)
            self._usage_fd = -1

    # -- blocks ---------------------------------------------------------------------------
    def _spans(self, offset: int, length: int) -> list[tuple[int, int, int]]:
        """(block, start, end within the block) of each block the range touches."""
        size = self.block_size
        end = offset + length
        return [(index, max(offset, index * size) - index * size,
                 min(end, (index + 1) * size) - index * size)
                for index in range(offset // size, (end - 1) // size + 1)] if length > 0 else []

    def _block_path(self, name: str, index: int, last: bool) -> str:
        # The fan-out directory depends on the object only: its blocks sit together.
        fan = f"{zlib.crc32(name.encode()) & 0xff:02x}"
        return os.path.join(self.root, fan,
                            f"{quote(name, safe='')}.{index}{LAST_SUFFIX if last else ''}")

    def _cached_as(self, name: str, index: int) -> str | None:
        """"block" or "last" (the object's last) if the cache has block `index`, else None."""
        if os.path.exists(self._block_path(name, index, False)):
            return "block"
        return "last" if os.path.exists(self._block_path(name, index, True)) else None

    def _from_cache(self, name: str, index: int, lo: int, hi: int) -> bytes | None:
        """Bytes [lo, hi) of a cached block (fewer where its object ends), or None if it
        is not cached; a damaged one (wrong size, unreadable) is removed."""
        for last in (False, True):
            path = self._block_path(name, index, last)
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                size = self._block_length(fd, last)
                data = os.pread(fd, max(0, min(hi, size) - lo), lo) if size is not None else None
            except OSError:
                data = None
            finally:
                os.close(fd)
            if data is None:
                self._discard(path)
                return None
            self._touch(path)
            self.stats.add("hits")
            return data
        return None

    def _block_length(self, fd: int, last: bool) -> int | None:
        """The length of the block in a cache file, None if the file is not a whole block:
        a full block is exactly one long; an object's last, shorter block is followed by
        its length, so that a truncated one is seen too (0: the object ended before this
        block, a marker that saves asking for what is not there)."""
        size = os.fstat(fd).st_size
        if not last:
            return size if size == self.block_size else None
        trailer = os.pread(fd, LENGTH.size, size - LENGTH.size) if size >= LENGTH.size else b""
        if len(trailer) != LENGTH.size:
            return None
        length = LENGTH.unpack(trailer)[0]
        return length if length == size - LENGTH.size and length < self.block_size else None

    def _hint_cached(self, name: str, index: int) -> None:
        """Start reading a cached block from the disk (each read opens its block anew,
        which leaves the kernel no sequence to read ahead on); a block is hinted once."""
        key = (name, index)
        with self._lock:
            if key in self._hinted:
                self._hinted.move_to_end(key)
                return
            self._hinted[key] = True
            if len(self._hinted) > HINTED_BLOCKS:
                self._hinted.popitem(last=False)
        for last in (False, True):
            try:
                fd = os.open(self._block_path(name, index, last), os.O_RDONLY)
            except OSError:
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            except OSError:
                pass  # a hint
            finally:
                os.close(fd)
            return

    def _fetch(self, name: str, indexes: list[int]) -> dict:
        """The whole bytes of blocks that were not cached: fetched here (the first run in
        this thread, the others on the pool), awaited from a fetch under way, or read
        from the cache if a fetch put them there since the caller looked."""
        claimed, waiting, cached = self._claim(name, indexes)
        runs = _runs(sorted(claimed))
        self._fetch_in_background(name, runs[1:], claimed)
        if runs:
            self._fetch_run(name, runs[0], [claimed[i] for i in runs[0]])
        self.stats.add("joined", len(waiting))
        blocks = {index: future.result() for index, future in {**claimed, **waiting}.items()}
        for index in waiting:  # used now, and written (stamped) perhaps only later
            self._touch_after_write(name, index)
        for index in cached:
            block = self._from_cache(name, index, 0, self.block_size)
            blocks[index] = block if block is not None else self._fetch(name, [index])[index]
        return blocks

    def _fetch_in_background(self, name: str, runs: list[list[int]], claimed: dict) -> None:
        for run in runs:
            futures = [claimed[i] for i in run]
            try:
                self._pool.submit(self._fetch_run, name, run, futures)
            except RuntimeError as e:  # closed meanwhile
                _fail(futures, e)
                self._settle(name, run)

    def _claim(self, name: str, indexes: list[int]) -> tuple[dict, dict, list]:
        """({block: a new future this caller fetches}, {block: a fetch under way},
        [blocks cached since the caller looked]); none past a cached end of the object."""
        claimed, waiting, cached = {}, {}, []
        with self._inflight_lock:
            for index in sorted(indexes):
                future = self._inflight.get((name, index))
                cached_as = None if future is not None else self._cached_as(name, index)
                if future is not None:
                    waiting[index] = future
                elif cached_as is not None:
                    cached.append(index)
                    if cached_as == "last":
                        break
                else:
                    future = self._inflight[(name, index)] = Future()
                    claimed[index] = future
        return claimed, waiting, cached

    def _fetch_run(self, name: str, run: list[int], futures: list[Future]) -> None:
        """Fetch contiguous blocks with one ranged get, hand each to its future, and have
        them written to the cache. Never raises: a backend's error goes to whoever waits
        for the blocks."""
        size = self.block_size
        try:
            data = memoryview(self._backend.get(name, run[0] * size, len(run) * size))
        except BaseException as e:
            _fail(futures, e)
            self._settle(name, run)
            if not isinstance(e, Exception):
                raise
            return
        self.stats.add("requests")
        blocks = [data[k * size:(k + 1) * size] for k in range(len(run))]
        for future, block in zip(futures, blocks):
            try:
                future.set_result(block)
            except InvalidStateError:
                pass  # failed by `close` meanwhile
        kept = []
        used = self._stamp()  # its recency: now, not when the writer gets to it
        for index, block in zip(run, blocks):
            kept.append((index, block, used))
            if len(block) < size:
                break  # the object ends in this block: the next ones are not there
        self.stats.add("fetched", len(kept))
        self._write_later(name, run, kept)

    def _write_later(self, name: str, run: list[int], blocks: list) -> None:
        """Hand fetched blocks to the writer thread; until they are written, their futures
        stay in flight (a read finds their bytes there), so reads never wait for the
        disk. A fetch waits only when the writer is behind by WRITE_BACKLOG bytes (the
        memory they hold)."""
        size = sum(len(block) for _index, block, _used in blocks)
        with self._backlog_changed:
            self._backlog_changed.wait_for(lambda: self._backlog + size <= WRITE_BACKLOG
                                           or self._backlog == 0)
            self._backlog += size
        try:
            self._writer.submit(self._write_blocks, name, run, blocks, size)
        except RuntimeError:  # closed
            self._written(name, run, size)

    def _write_blocks(self, name: str, run: list[int], blocks: list, size: int) -> None:
        try:
            for index, block, used in blocks:
                self._keep(name, index, block, used)
        finally:
            self._written(name, run, size)

    def _written(self, name: str, run: list[int], size: int) -> None:
        with self._backlog_changed:
            self._backlog -= size
            self._backlog_changed.notify_all()
        self._settle(name, run)

    def _touch_after_write(self, name: str, index: int) -> None:
        """Mark a block used once the writer has written it (its queue is in order)."""
        def touch():
            for last in (False, True):
                self._touch(self._block_path(name, index, last))
        try:
            self._writer.submit(touch)
        except RuntimeError:
            pass  # closed

    def flush(self) -> None:
        """Wait until the blocks fetched so far are written to the cache (or given up)."""
        try:
            self._writer.submit(lambda: None).result()
        except RuntimeError:
            pass  # closed: nothing is being written

    def _settle(self, name: str, run: list[int]) -> None:
        with self._inflight_lock:
            for index in run:
                self._inflight.pop((name, index), None)

    def _keep(self, name: str, index: int, block: memoryview, used: int) -> None:
        """Put a fetched block in the cache if it fits (a cache that cannot write, a full
        disk say, only caches less)."""
        last = len(block) < self.block_size
        trailer = LENGTH.pack(len(block)) if last else b""
        size = len(block) + len(trailer)  # what the file takes of the capacity
        if size > self.capacity or self._closed:
            return
        path = self._block_path(name, index, last)
        temp = os.path.join(os.path.dirname(path),
                            f".{os.path.basename(path)}.{secrets.token_hex(4)}.tmp")
        try:
            make_private_dirs(os.path.dirname(path))
            self._write_temp(temp, block, trailer, used)
            with self._locked():
                if not self._make_room(size):
                    return
                try:
                    os.link(temp, path)  # never replaces: another process may have it
                except FileExistsError:
                    return
                self._recency.used(path, used)
                self._write_usage(self._read_usage() + size)
        except OSError:
            pass
        finally:
            try:
                os.unlink(temp)
            except FileNotFoundError:
                pass

    @staticmethod
    def _write_temp(temp: str, block, trailer: bytes, used: int) -> None:
        """Write `block` to a new private file; its mtime is when it was last used."""
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb", closefd=False) as f:
                f.write(block)
                f.write(trailer)
            os.utime(fd, ns=(used, used))
        finally:
            os.close(fd)

    def _touch(self, path: str) -> None:
        """Mark a block just used (its mtime, so other processes and restarts see it)."""
        stamp = self._stamp()
        try:
            os.utime(path, ns=(stamp, stamp))
        except OSError:
            return  # evicted meanwhile (the bytes read are still right), or not ours
        with self._lock:
            self._recency.used(path, stamp)

    def _stamp(self) -> int:
        """Now in ns, strictly increasing in this process (blocks used in one clock tick
        keep their order)."""
        with self._inflight_lock:
            self._last_stamp = max(time.time_ns(), self._last_stamp + 1)
            return self._last_stamp

    def _discard(self, path: str) -> bool:
        """Remove a cached block (damaged, or dropped by a failed check). One that cannot
        be removed stays: it is found damaged, and fetched, at every read."""
        try:
            with self._locked():
                self._recency.forget(path)
                removed = self._unlink_counted(path)
        except OSError:
            return False
        if removed:
            self.stats.add("dropped")
        return removed

    # -- capacity (callers hold _locked) ------------------------------------------------
    def _locked(self):
        return _FlockAndLock(self._lock, self._usage_fd)

    def _read_usage(self) -> int:
        data = os.pread(self._usage_fd, USAGE.size, 0)
        return USAGE.unpack(data)[0] if len(data) == USAGE.size else 0

    def _write_usage(self, usage: int) -> None:
        os.pwrite(self._usage_fd, USAGE.pack(max(0, usage)), 0)

    def _unlink_counted(self, path: str) -> bool:
        """Remove a block and take its size off the count; False if another process
        removed it first (and counted it)."""
        try:
            size = os.stat(path).st_size
            os.unlink(path)
        except FileNotFoundError:
            return False
        self._write_usage(self._read_usage() - size)
        return True

    def _make_room(self, needed: int) -> bool:
        """Evict least recently used blocks until `needed` more bytes fit; False if they
        cannot (other processes filled the cache with blocks in use)."""
        rescanned = False
        while self._read_usage() + needed > self.capacity:
            oldest = self._recency.pop_oldest()
            if oldest is None:
                if rescanned:
                    return False
                # Blocks other processes added are not in our list: count them all again.
                self._write_usage(self._scan())
                rescanned = True
                continue
            path, stamp = oldest
            try:
                mtime = os.stat(path).st_mtime_ns
            except FileNotFoundError:
                continue
            if mtime != stamp:  # another process used it since: it is newer than we knew
                self._recency.used(path, mtime)
                continue
            self._unlink_counted(path)
        return True

    def _scan(self) -> int:
        """Rebuild the recency list from the files (oldest first); the bytes they hold.
        Temporary files of processes that died go."""
        found = []
        old = time.time() - STALE_TEMP_SECONDS
        for fan in _scandir(self.root):
            if not fan.is_dir(follow_symlinks=False):
                continue
            for entry in _scandir(fan.path):
                try:
                    st = entry.stat(follow_symlinks=False)
                    if entry.name.startswith("."):
                        if st.st_mtime < old:
                            os.unlink(entry.path)
                        continue
                except FileNotFoundError:
                    continue
                found.append((st.st_mtime_ns, entry.path, st.st_size))
        self._recency = _Recency({path: mtime for mtime, path, _size in found})
        return sum(size for _mtime, _path, size in found)


class _Handle(ObjectReader):
    """`CachingReader.handle`: its reads go through the cache; closing it does not."""

    def __init__(self, cache: CachingReader):
        super().__init__(cache._backend)
        self._cache = cache

    def read(self, name: str, offset: int, length: int) -> bytes:
        return self._cache.read(name, offset, length)

    def will_need(self, name: str, offset: int, length: int) -> None:
        self._cache.will_need(name, offset, length)

    def drop(self, name: str, offset: int, length: int) -> bool:
        return self._cache.drop(name, offset, length)


class _Recency:
    """When each block was last used (ns), and which was used least recently: a heap
    whose entries a later use makes stale (skipped when they come up). Blocks can be
    noted out of order (a block is noted when written, stamped when it was fetched)."""

    def __init__(self, stamps: dict[str, int] | None = None):
        self._stamps = dict(stamps or {})
        self._heap = [(stamp, path) for path, stamp in self._stamps.items()]
        heapq.heapify(self._heap)

    def used(self, path: str, stamp: int) -> None:
        self._stamps[path] = stamp
        heapq.heappush(self._heap, (stamp, path))
        if len(self._heap) > 2 * len(self._stamps) + 64:  # mostly stale: start again
            self.__init__(self._stamps)

    def forget(self, path: str) -> None:
        self._stamps.pop(path, None)

    def pop_oldest(self) -> tuple[str, int] | None:
        while self._heap:
            stamp, path = heapq.heappop(self._heap)
            if self._stamps.get(path) == stamp:
                del self._stamps[path]
                return path, stamp
        return None


class _FlockAndLock:
    """This process's threads and the other processes on the cache, excluded at once."""

    def __init__(self, lock: threading.Lock, fd: int):
        self._thread_lock, self._fd = lock, fd

    def __enter__(self):
        self._thread_lock.acquire()
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._thread_lock.release()
            raise

    def __exit__(self, *exc):
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()


def _fail(futures: list[Future], error: BaseException) -> None:
    for future in futures:
        try:
            future.set_exception(error)
        except InvalidStateError:
            pass  # settled already


def _runs(indexes: list[int]) -> list[list[int]]:
    """Sorted block numbers cut into contiguous runs of at most MAX_RUN_BLOCKS."""
    runs: list[list[int]] = []
    for index in indexes:
        if runs and runs[-1][-1] == index - 1 and len(runs[-1]) < MAX_RUN_BLOCKS:
            runs[-1].append(index)
        else:
            runs.append([index])
    return runs


def _scandir(path: str) -> list:
    try:
        with os.scandir(path) as entries:
            return list(entries)
    except FileNotFoundError:
        return []


def _remove_other_block_sizes(cache_dir: str, keep: str) -> None:
    """A cache made with another block size is of no use to this one: it goes, so that
    its bytes do not sit outside the capacity."""
    for entry in _scandir(cache_dir):
        if entry.name.startswith("blocks-") and entry.name != keep and entry.is_dir():
            shutil.rmtree(entry.path, ignore_errors=True)
