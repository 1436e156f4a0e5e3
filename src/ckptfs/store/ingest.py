"""Ingest: a directory becomes a prepared version, which the catalog then commits.

    walk source -> per file: cut into chunks -> keyed BLAKE3 id -> dedup against the
    index and this ingest -> encode (zstd / byte-group / XOR-delta) -> encrypt (an
    encrypted store) -> append to this ingest's own pack files -> PreparedVersion
    -> `Catalog.commit`: manifest record, close packs (fsync), journal append, index
    update, under the store's commit lock.

The write path goes one way: an ingest is given what it reads (the chunk id function, a
chunk lookup, the delta bases of the version's parent, a sink for its packs that holds
the cipher) and never calls back into the store; what it hands over is a
`PreparedVersion`.

Work overlaps on every core: the calling thread reads, cuts, names and dedups chunks,
the process's encoder threads (`EncoderPool`: one per core, CKPTFS_INGEST_WORKERS)
encode, and one more thread per file feeds its SHA-256 in order (hashlib, BLAKE3 and
zstd all release the GIL on large buffers); `FilePipeline` is that for one file, and
records are appended in file order. Several files may go through one ingest at once
(the mount streams them as they are written: stream.py), so its packs and figures
change under its lock. Nothing is visible until the commit; on any error this ingest's
packs are deleted and no version appears.

While an ingest is under way (from its start to its commit or abort) it holds a shared
flock on `STORE/ingest.lock`: its packs are not referenced by the index yet, and garbage
collection removes unreferenced packs only when it can take that lock exclusively.

The mount starts an ingest before the seal: as each file of an inbox version is written
it streams it (`stream_file`), or once closed it calls `prepare_file`; either stores the
file's chunks under a token the caller chooses (the daemon uses the spool inode and a
write generation). At the seal,
`execute` reuses a prepared file whose token still matches and reads the rest, so a
version is mostly ingested by the time its quiet period ends. Chunks of a prepared file
that was changed or removed afterwards stay in the packs unreferenced (space, not harm).
"""
import errno
import fcntl
import hashlib
import os
import stat
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Hashable

from .chunking import Chunker, FileReader
from .encoders import EncoderPool
from .codec import ZSTD, Encoder, delta_base_id, is_delta
from .errors import SourceError, StoreFullError
from .index import Location
from .pack import KIND_CHUNK, KIND_MANIFEST
from .packsink import PackSink
from .parentage import FILES_KIND
from .private import private_open
from .stream import FileStream

INGEST_LOCK = "ingest.lock"
MAX_HASH_BACKLOG = 16    # chunks queued for a file's SHA-256


@dataclass
class SourceEntry:
    path: str          # relative, '/'-separated
    abs_path: str
    st: os.stat_result
    kind: str          # "file", "dir" or "symlink"


@dataclass
class IngestStats:
    logical_bytes: int = 0   # bytes of the files
    new_raw_bytes: int = 0   # raw bytes of chunks this ingest stored (not deduped)
    new_stored_bytes: int = 0
    new_chunks: int = 0
    total_chunks: int = 0
    delta_chunks: int = 0
    prepared_files: int = 0  # files the seal took as prepared ahead (the mount)


@dataclass
class IngestReport:
    project: str
    run: str
    version: str
    files: int
    entries: int
    digest: str
    seconds: float
    stats: IngestStats
    delta_parent: str | None
    retried: bool = False  # a concurrent garbage collection made it start over once

    @property
    def dedup_ratio(self) -> float:
        """Logical bytes per byte that had to be stored before compression."""
        return self.stats.logical_bytes / self.stats.new_raw_bytes if self.stats.new_raw_bytes else float("inf")

    @property
    def compression_ratio(self) -> float:
        s = self.stats
        return s.new_raw_bytes / s.new_stored_bytes if s.new_stored_bytes else 1.0


def open_without_atime(path: str) -> int:
    """Open a file to read it without changing its access time (O_NOATIME): reading a
    source is not a use of it, and the mount's inbox shows a spooled file's atime, which
    the job may have set (`touch -a`) just before the prepare-ahead reads it. Only the
    file's owner (or root) may ask that; for anyone else, a plain open."""
    try:
        return os.open(path, os.O_RDONLY | os.O_NOATIME)
    except PermissionError as e:
        if e.errno != errno.EPERM:
            raise
        return os.open(path, os.O_RDONLY)


@dataclass
class PreparedVersion:
    """A version an ingest has stored and not committed yet: its entries, and the records
    of its own packs (nothing refers to them until the commit)."""
    project: str
    run: str
    version: str
    root: dict                             # mode and mtime of the source directory
    entries: list[dict]
    stats: IngestStats
    new_chunks: dict[bytes, Location]      # chunks this ingest wrote
    delta_base_of: dict[bytes, bytes]      # its XOR-delta chunks -> their base
    delta_parent: dict | None              # record of the version its deltas are against
    sink: PackSink

    @property
    def pack_ids(self) -> list[int]:
        return self.sink.pack_ids

    def write_manifest(self, manifest_id: bytes, raw_len: int, payload: bytes) -> Location:
        """Append the manifest record and close every pack of this version (fsync)."""
        loc = self.sink.append(KIND_MANIFEST, ZSTD, manifest_id, raw_len, payload)
        self.sink.close()
        return loc


def walk_source(src: str) -> tuple[os.stat_result, list[SourceEntry]]:
    """Every entry below `src`, parents before children, in a stable order."""
    try:
        root_st = os.stat(src)
    except FileNotFoundError:
        raise SourceError(f"{src}: no such directory") from None
    except PermissionError:
        raise SourceError(f"{src}: permission denied") from None
    if not stat.S_ISDIR(root_st.st_mode):
        raise SourceError(f"{src} is not a directory: import takes a checkpoint directory")
    found = []

    def visit(abs_dir: str, rel_dir: str):
        try:
            children = sorted(os.scandir(abs_dir), key=lambda e: os.fsencode(e.name))
        except PermissionError:
            raise SourceError(f"{abs_dir}: cannot list directory: permission denied") from None
        except OSError as e:
            raise SourceError(f"{abs_dir}: cannot list directory: {e.strerror}") from None
        for child in children:
            rel = f"{rel_dir}/{child.name}" if rel_dir else child.name
            st = child.stat(follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                found.append(SourceEntry(rel, child.path, st, "symlink"))
            elif stat.S_ISDIR(st.st_mode):
                found.append(SourceEntry(rel, child.path, st, "dir"))
                visit(child.path, rel)
            elif stat.S_ISREG(st.st_mode):
                found.append(SourceEntry(rel, child.path, st, "file"))
            else:
                raise SourceError(
                    f"{child.path}: is a special file (device, FIFO or socket); "
                    "a checkpoint holds only files, directories and symlinks")

    visit(src, "")
    return root_st, found


def take_ingest_lock(store_path: str) -> int:
    """A shared flock on STORE/ingest.lock, held by every ingest under way (a gc that is
    removing leftover packs holds it exclusively for a moment: then we wait)."""
    fd = private_open(os.path.join(store_path, INGEST_LOCK), os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    except BaseException:
        os.close(fd)
        raise
    return fd


class Ingest:
    """One import of a directory as PROJECT/RUN/VERSION. Use `Store.import_directory`.

    Given: the store's `chunking` and `compression` settings, `chunk_id(bytes)` (the
    keyed BLAKE3), `is_stored(chunk id)` (in the index and sound), `deltas` (the delta
    parent, its tensors' chunks and keyframes: deltas.py), `sink` (the new packs it
    writes: packsink.py) and `store_path` (for the ingest lock)."""

    def __init__(self, project: str, run: str, version: str, *, chunking, compression,
                 chunk_id, is_stored, deltas, sink: PackSink, store_path: str):
        self.project, self.run, self.version = project, run, version
        self.progress = None
        self.tensor_block = chunking.tensor_block
        self.chunker = Chunker(chunking.min_size, chunking.avg_size, chunking.max_size)
        self.encoder = Encoder(compression.level, compression.min_saving)
        self.chunk_id = chunk_id
        self.is_stored = is_stored
        self.deltas = deltas
        self.sink = sink
        self.stats = IngestStats()
        self.session_chunks: dict[bytes, Location] = {}  # chunks this ingest wrote
        self.delta_base_of: dict[bytes, bytes] = {}       # its XOR-delta chunks -> their base
        # Held while the packs, the chunks written and the figures change: the streams
        # of several files of one version (the mount) append to its packs at once.
        self.lock = threading.RLock()
        self.delta_parent = None
        self._delta_parent_known = False
        # Set by the mount before preparing: the version's kind, and the version its
        # writer loaded its weights from (the best delta base; metadata can say it too).
        self.kind: str | None = None
        self.preferred_parent: dict | None = None
        self.prepared: dict[Hashable, tuple[int, dict]] = {}  # token -> (size, file fields)
        self.streams: list = []  # FileStreams feeding this ingest while files are written
        # The metadata the version is sealed with: its kind and lineage parent choose the
        # delta parent (the catalog's commit decides the version's parent).
        self.metadata: dict = {}
        self._lock_fd = take_ingest_lock(store_path)

    @property
    def on_new_pack(self) -> Callable[[int], None] | None:
        """Told each pack id this ingest opens (the mount notes them: staged packs)."""
        return self.sink.on_new_pack

    @on_new_pack.setter
    def on_new_pack(self, callback: Callable[[int], None] | None) -> None:
        self.sink.on_new_pack = callback

    def release(self):
        """Let garbage collection know this ingest no longer owns unreferenced packs."""
        fd, self._lock_fd = getattr(self, "_lock_fd", None), None
        if fd is not None:
            os.close(fd)

    def __del__(self):
        self.release()

    @contextmanager
    def _workers(self):
        """(the shared encoders, a thread for the files' SHA-256 in order)."""
        with ThreadPoolExecutor(1, thread_name_prefix="ckptfs-sha256") as hasher:
            yield EncoderPool.shared(), hasher

    def reconsider(self, kind: str | None, preferred_parent: dict | None):
        """The unit this ingest is for turned out to be a checkpoint after all (a
        Trainer writes config.json before the weights): choose the delta parent again,
        which a `files` ingest never did, so no prepared file was delta-coded yet."""
        if self.kind == FILES_KIND and kind != FILES_KIND:
            self.kind, self.preferred_parent = kind, preferred_parent
            self.delta_parent, self._delta_parent_known = None, False

    def _choose_delta_parent(self):
        # Once per ingest: prepared files and the rest of the version share one parent.
        with self.lock:
            if self._delta_parent_known:
                return
            self._delta_parent_known = True
            kind = self.kind or self.metadata.get("kind")
            if kind == FILES_KIND:
                return  # logs and metrics: no tensors to delta-code
            preferred = self.preferred_parent or (self.metadata.get("lineage") or {}).get("parent")
            self.delta_parent = self.deltas.parent_for(
                self.project, self.run, preferred if isinstance(preferred, dict) else None)

    # -- ahead of the seal (the mount) ------------------------------------------------
    def prepare_file(self, rel_path: str, abs_path: str, token: Hashable,
                     expect_ino: int | None = None) -> bool:
        """Store one finished file's chunks now and remember the result under `token`.

        False if the file is gone, not a regular file, not inode `expect_ino`, or changed
        while being read (the seal reads it again). Any other error leaves this ingest
        unusable: call `abort`.
        """
        try:
            st = os.lstat(abs_path)
        except FileNotFoundError:
            return False
        if not stat.S_ISREG(st.st_mode) or expect_ino not in (None, st.st_ino):
            return False
        self._choose_delta_parent()
        try:
            with self._workers() as (pool, hasher):
                fields = self._ingest_file(SourceEntry(rel_path, abs_path, st, "file"), pool, hasher)
        except SourceError:
            return False
        self.add_prepared(token, fields)
        return True

    def add_prepared(self, token: Hashable, fields: dict) -> None:
        with self.lock:
            self.prepared[token] = (fields["size"], fields)

    def stream_file(self, rel_path: str, fd: int) -> FileStream:
        """Begin ingesting a file while it is being written (stream.py): `fd` is read
        behind the writer, as the caller reports what is written; the result is
        prepared under the token given when the writer closes it."""
        self._choose_delta_parent()
        stream = FileStream(self, rel_path, fd)
        with self.lock:
            self.streams.append(stream)
        stream.start()
        return stream

    def settle_streams(self) -> None:
        """Before the version is prepared: wait for the streams of closed files to finish
        (their results are prepared), stop those whose file is still being written."""
        with self.lock:
            streams, self.streams = self.streams, []
        for stream in streams:
            stream.settle()

    def adopt(self, other: "Ingest") -> bool:
        """Take over what `other` (an ingest of the same run begun for a part of this
        version: the mount's units change as a directory fills) has prepared: its packs,
        chunks and prepared files. False, and nothing taken, if its tensors were delta-coded
        against another parent: the caller aborts it."""
        other.settle_streams()
        self._choose_delta_parent()
        with self.lock, other.lock:
            if other.delta_base_of and other.delta_parent != self.delta_parent:
                return False
            other.sink.close()  # complete packs: the commit names them with this version's
            self.sink.writers[:0] = other.sink.writers
            other.sink.writers = []
            for chunk_id, loc in other.session_chunks.items():
                self.session_chunks.setdefault(chunk_id, loc)
            self.delta_base_of.update(other.delta_base_of)
            self.prepared.update(other.prepared)
            for name in ("new_raw_bytes", "new_stored_bytes", "new_chunks", "delta_chunks"):
                setattr(self.stats, name, getattr(self.stats, name) + getattr(other.stats, name))
        other.release()
        return True

    def abort(self):
        """Delete this ingest's packs: nothing refers to them."""
        with self.lock:
            streams, self.streams = self.streams, []
        for stream in streams:
            stream.cancel()
        for stream in streams:
            stream.join()
        self.sink.abort()
        self.session_chunks.clear()
        self.delta_base_of.clear()
        self.prepared.clear()
        self.release()

    # -- main -------------------------------------------------------------------------
    def prepare_version(self, src: str, token_of: Callable[[SourceEntry], Hashable | None]
                        | None = None) -> PreparedVersion:
        """Store every file of `src` not stored yet (call inside `aborted_on_error`).
        `token_of(entry)` names a file's prepared result (None: read the file now)."""
        self.settle_streams()
        root_st, found = walk_source(src)
        self._choose_delta_parent()
        with self._workers() as (pool, hasher):
            entries = [self._entry(e, pool, hasher, token_of) for e in found]
        files = [e for e in entries if e["type"] == "file"]
        self.stats.logical_bytes = sum(e["size"] for e in files)
        self.stats.total_chunks = sum(len(e["chunks"]) for e in files)
        root = {"mode": stat.S_IMODE(root_st.st_mode), "mtime_ns": root_st.st_mtime_ns}
        return PreparedVersion(self.project, self.run, self.version, root, entries, self.stats,
                               self.session_chunks, self.delta_base_of, self.delta_parent,
                               self.sink)

    @contextmanager
    def aborted_on_error(self):
        """Around the preparing and the commit of the version: on any error this ingest
        is aborted (its packs deleted), on success it lets go of its lock."""
        try:
            yield
        except BaseException as e:
            self.abort()
            if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StoreFullError(
                    f"no space left on the store's disk while importing "
                    f"{self.project}/{self.run}/{self.version}; nothing was committed: "
                    "free some space and import again") from None
            raise
        self.release()

    def _entry(self, src: SourceEntry, pool, hasher, token_of=None) -> dict:
        entry = {"path": src.path, "type": src.kind, "mode": stat.S_IMODE(src.st.st_mode),
                 "mtime_ns": src.st.st_mtime_ns}
        if src.kind == "symlink":
            entry["target"] = os.readlink(src.abs_path)
        elif src.kind == "file":
            entry.update(self._prepared_fields(src, token_of) or self._ingest_file(src, pool, hasher))
        return entry

    def _prepared_fields(self, src: SourceEntry, token_of) -> dict | None:
        token = token_of(src) if token_of else None
        hit = self.prepared.get(token) if token is not None else None
        if hit is None or hit[0] != src.st.st_size:
            return None
        self.stats.prepared_files += 1
        if self.progress:
            self.progress(hit[0], self.stats)
        return hit[1]

    def _ingest_file(self, src: SourceEntry, pool, hasher) -> dict:
        try:
            fd = open_without_atime(src.abs_path)
        except PermissionError:
            raise SourceError(f"{src.abs_path}: permission denied") from None
        except OSError as e:
            raise SourceError(f"{src.abs_path}: cannot open: {e.strerror}") from None
        try:
            return self._ingest_open_file(src, fd, pool, hasher)
        finally:
            os.close(fd)

    def _ingest_open_file(self, src: SourceEntry, fd: int, pool, hasher) -> dict:
        st = os.fstat(fd)
        reader = FileReader(fd, src.abs_path, st.st_size, SourceError, "imported")
        layout = reader.tensor_layout()
        chunks = self.pipeline(self.delta_bases(src.path, layout), pool, hasher)
        with chunks.cancelled_on_error():
            for segment, offset, data in reader.chunks(self.chunker, layout, self.tensor_block):
                chunks.add(segment, offset, data)
            fields = chunks.finish(st.st_size)
        after = os.fstat(fd)
        seen = {(s.st_ino, s.st_size, s.st_mtime_ns) for s in (src.st, st, after)}
        if len(seen) > 1:
            raise SourceError(f"{src.abs_path} changed while being imported: is a writer still "
                              "running? Import it again once the checkpoint is complete")
        return fields

    def delta_bases(self, path: str, layout) -> dict[int, bytes]:
        """{offset: base chunk id} of a file's tensor blocks against the delta parent."""
        if layout is None or not self.delta_parent:
            return {}
        return self.deltas.bases(self.delta_parent, path, layout)

    def pipeline(self, delta_bases: dict[int, bytes], pool, hasher) -> "FilePipeline":
        return FilePipeline(self, delta_bases, pool, hasher)

    def _is_stored(self, chunk_id: bytes) -> bool:
        return chunk_id in self.session_chunks or self.is_stored(chunk_id)

    def _encode(self, data, width: int, base_chunk_id, dtype: str | None = None):
        """Runs on a worker: the smallest of a delta against the base and a plain encode.
        `width` and `dtype` are the chunk's element size and type, when known."""
        if base_chunk_id is not None:
            keyframe = self.deltas.keyframe(base_chunk_id)
            if keyframe is not None:
                base_id, base_bytes = keyframe
                delta = self.encoder.encode_delta(data, base_bytes, base_id, width or 4, dtype)
                if delta is not None and len(delta[1]) < 0.6 * len(data):
                    return delta
                plain = self.encoder.encode(data, width, dtype)
                if delta is not None and len(delta[1]) < len(plain[1]):
                    return delta
                return plain
        return self.encoder.encode(data, width, dtype)

    def write_encoded(self, chunk_id: bytes, raw_len: int, codec_id: int, payload) -> int:
        """Append an encoded chunk unless another file of this ingest stored it meanwhile;
        the bytes it added to the packs. Any thread (streams of several files share the
        ingest's packs)."""
        with self.lock:
            if chunk_id in self.session_chunks:
                return 0
            loc = self.sink.append(KIND_CHUNK, codec_id, chunk_id, raw_len, payload)
            self.session_chunks[chunk_id] = loc
            self.stats.new_chunks += 1
            self.stats.new_raw_bytes += raw_len
            self.stats.new_stored_bytes += loc.length
            if is_delta(codec_id):
                self.stats.delta_chunks += 1
                self.delta_base_of[chunk_id] = delta_base_id(codec_id, payload)
            return loc.length


class FilePipeline:
    """One file's chunks through an ingest, in file order: the whole file's SHA-256 on
    the hasher thread, chunk ids and dedup on the caller's thread, encoding on the shared
    encoders, records appended in file order by the caller. At most the pool's budget
    of chunks is held at once (shared with every other file being ingested)."""

    def __init__(self, ingest: Ingest, delta_bases: dict[int, bytes], pool: EncoderPool,
                 hasher: ThreadPoolExecutor):
        self.ingest, self.delta_bases = ingest, delta_bases
        self.pool, self.hasher = pool, hasher
        self.sha = hashlib.sha256()
        self.hash_backlog = deque()
        self.inflight = deque()      # (chunk id, raw length, future), in file order
        self.pending: set[bytes] = set()  # ids of this file being encoded
        self.chunks: list[list] = []
        self.stored = 0
        self.size = 0

    def add(self, segment, offset: int, data: bytes) -> None:
        ingest = self.ingest
        self.hash_backlog.append(self.hasher.submit(self.sha.update, data))
        while len(self.hash_backlog) > MAX_HASH_BACKLOG:
            self.hash_backlog.popleft().result()
        chunk_id = ingest.chunk_id(data)
        self.chunks.append([chunk_id.hex(), len(data)])
        self.size += len(data)
        ingest.stats.total_chunks += 1      # live figures for progress; the
        ingest.stats.logical_bytes += len(data)  # totals are redone at the end
        if chunk_id not in self.pending and not ingest._is_stored(chunk_id):
            self._reserve()
            base = self.delta_bases.get(offset)
            future = self.pool.submit(ingest._encode, data, segment.width, base, segment.dtype)
            self.inflight.append((chunk_id, len(data), future))
            self.pending.add(chunk_id)
        if ingest.progress:
            ingest.progress(len(data), ingest.stats)

    def _reserve(self) -> None:
        """A place in the pool's budget: this file's oldest chunks are written first
        while there is none (so a file never waits for places it holds itself)."""
        while not self.pool.budget.acquire(blocking=False):
            if not self.inflight:
                self.pool.budget.acquire()
                return
            self._write_oldest()

    def _write_oldest(self) -> None:
        chunk_id, raw_len, future = self.inflight[0]
        try:
            codec_id, payload = future.result()
        finally:
            self.inflight.popleft()
            self.pool.budget.release()
        self.stored += self.ingest.write_encoded(chunk_id, raw_len, codec_id, payload)
        self.pending.discard(chunk_id)

    def drain(self) -> None:
        """Write every chunk encoded or being encoded (before waiting for more bytes)."""
        while self.inflight:
            self._write_oldest()

    def finish(self, size: int) -> dict:
        """The file's fields once all its chunks are written."""
        self.drain()
        for f in self.hash_backlog:
            f.result()
        self.hash_backlog.clear()
        if self.size != size:
            raise SourceError(f"{size} bytes expected, {self.size} cut")
        return {"size": size, "sha256": self.sha.hexdigest(), "stored": self.stored,
                "chunks": self.chunks}

    def cancel(self) -> None:
        """Give the file up: chunks still being encoded are never written."""
        while self.inflight:
            _, _, future = self.inflight.popleft()
            future.cancel()
            self.pool.budget.release()
        self.pending.clear()
        for f in self.hash_backlog:
            f.cancel()

    @contextmanager
    def cancelled_on_error(self):
        try:
            yield self
        except BaseException:
            self.cancel()
            raise
