"""The chunk reader: every read of stored bytes goes through here (the mount, `get`,
export, verify, gc's liveness, repair).

    locate (index) -> read the record (pack) -> check it (xxh3) -> decrypt (an encrypted
    store) -> decode (zstd / byte groups / XOR-delta against its base) -> cache

Decoded chunks are kept in a bounded LRU (chunkcache.py), so reads that walk a chunk in
pieces decode it once; delta bases (keyframes) in a cache of their own. `prefetch`
decodes whole chunks ahead of a sequential reader (the mount) on one thread per core,
each chunk once: a read that needs a chunk being decoded waits for it (`decoding`), and
is then served as a slice of the cached chunk. A read that finds a record damaged
records it in the index (damage.py): no ingest then deduplicates against it.
"""
import bisect
import hashlib
import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from .chunkcache import KEYFRAME_SHARE, ChunkCache, KeyframeCache, read_cache_size
from .codec import decode, delta_base_id, is_delta
from .damage import note_damaged_chunk
from .errors import IntegrityError, PackMissingError
from .index import Index, Location
from .manifest import decode_manifest
from .pack import FLAG_ENCRYPTED, PackReader

READ_AHEAD_CHUNKS = 8
READ_AHEAD_GAP = 1 << 20  # records this close are read ahead together, the gap with them
MAX_READ_AHEAD = 16 << 20  # how far a sequential reader's chunks are decoded ahead
MAX_DECODERS = 8


def merged_ranges(locations, gap: int = READ_AHEAD_GAP) -> list[tuple[int, int, int]]:
    """(pack id, offset, length) covering the records at `locations`, neighbours (at most
    `gap` bytes apart) of one pack merged: one read-ahead request each, not one a record
    (on an object store, a ranged GET each)."""
    merged: list[list[int]] = []
    for loc in sorted(locations, key=lambda loc: (loc.pack_id, loc.offset)):
        last = merged[-1] if merged else None
        if last and last[0] == loc.pack_id and loc.offset <= last[1] + last[2] + gap:
            last[2] = max(last[2], loc.offset + loc.length - last[1])
        else:
            merged.append([loc.pack_id, loc.offset, loc.length])
    return [tuple(m) for m in merged]


class ChunkReader:
    """Reads chunks, manifests and files of the store at `store_path` (named in errors)."""

    def __init__(self, index: Index, packs: PackReader, chunk_id, cipher, store_path: str):
        self.index = index
        self.packs = packs
        self.chunk_id = chunk_id   # the store's keyed BLAKE3 of a chunk's bytes
        self.cipher = cipher       # RecordCipher of an encrypted store, else None
        self.store_path = store_path
        self._budget = read_cache_size()
        self._new_caches()
        # Ahead of a reader, but well inside the cache: what is decoded ahead must still
        # be there when the reader comes to it.
        self.read_ahead_bytes = min(MAX_READ_AHEAD, self._cache.max_bytes // 3)
        self._inflight: dict[bytes, object] = {}   # chunk id -> Future of a prefetch
        self._inflight_lock = threading.Lock()
        self._prefetcher = None
        self.decoders = min(MAX_DECODERS, max(2, os.cpu_count() or 2))
        self.decoded_chunks = self.decoded_bytes = 0   # every decode, counted (stats)
        self._gc_generation = 0  # of the index when we last dropped deleted packs' fds
        # Set on a shared backend: brings the index up to the journal before a chunk
        # whose pack is gone is looked up again (Store; Committer.catch_up_for_reader).
        self.catch_up = None

    def close(self) -> None:
        if self._prefetcher is not None:
            self._prefetcher.shutdown(wait=True, cancel_futures=True)

    def clear_cache(self) -> None:
        """Forget every decoded chunk (verify reads what is on disk, not what is cached)."""
        self._new_caches()

    def _new_caches(self) -> None:
        keyframes = self._budget // KEYFRAME_SHARE
        self._cache = ChunkCache(self._budget - keyframes)
        self._keyframes = KeyframeCache(keyframes)

    def stats(self) -> dict:
        """What the reader holds and has done: the caches' bytes (with their peaks and
        caps) and how many chunks it decoded (the mount's stats.json, `read_cache`)."""
        return {"decoded": self._cache.stats(), "keyframes": self._keyframes.stats(),
                "decoded_chunks": self.decoded_chunks, "decoded_bytes": self.decoded_bytes,
                "decoding": len(self._inflight), "read_ahead_bytes": self.read_ahead_bytes,
                "decoders": self.decoders}

    # -- records --------------------------------------------------------------------------
    def read_record(self, chunk_id: bytes):
        """The record of a chunk, checked (xxh3) and decrypted: every read of a chunk
        record goes through here (manifests: `manifest_at`)."""
        def locate(txn):
            return self.index.get_chunk(txn, chunk_id)
        loc, record = self._read_located(locate, f"chunk {chunk_id.hex()[:16]}", chunk_id)
        if record.record_id != chunk_id:
            raise IntegrityError(f"pack {loc.pack_id:08x} holds another record where chunk "
                                 f"{chunk_id.hex()[:16]} should be", pack_id=loc.pack_id,
                                 chunk_id=chunk_id)
        return self.decrypted(record, loc.pack_id)

    def decrypted(self, record, pack_id: int):
        """`record` with a plaintext payload. In an encrypted store every record must be
        encrypted (a plaintext one was not written by it: it would bypass the
        authentication), and in a plain store none can be."""
        encrypted = record.flags & FLAG_ENCRYPTED
        name = f"pack {pack_id:08x}: record {record.record_id.hex()[:16]}"
        if self.cipher is None:
            if encrypted:
                raise IntegrityError(f"{name} is encrypted, but store {self.store_path} is not: "
                                     "it was not written by this store", pack_id=pack_id,
                                     chunk_id=record.record_id)
            return record
        if not encrypted:
            raise IntegrityError(f"{name} is not encrypted, but store {self.store_path} is: it "
                                 "was not written by this store", pack_id=pack_id,
                                 chunk_id=record.record_id)
        return self.cipher.decrypt(record, pack_id)

    def _read_located(self, locate, what: str, chunk_id: bytes | None = None):
        """(location, record) of what `locate(txn)` finds in the index.

        A garbage collection in another process may move the record to a new pack and
        delete the old one between our lookup and our read: on a missing pack, look
        the location up again (on a shared backend after catching up with the journal,
        where the gc's switch is) and read once more."""
        loc = self._locate(locate, what, chunk_id)
        try:
            return loc, self.packs.read(loc.pack_id, loc.offset, loc.length)
        except PackMissingError:
            if self.catch_up is not None:
                self.catch_up()
            again = self._locate(locate, what, chunk_id)
            if again == loc:
                raise
            return again, self.packs.read(again.pack_id, again.offset, again.length)

    def _locate(self, locate, what: str, chunk_id: bytes | None) -> Location:
        with self.index.read() as txn:
            loc = locate(txn)
            generation = self.index.get_int(txn, b"gc_generation")
        if generation != self._gc_generation:
            self._gc_generation = generation
            self.packs.forget_deleted()  # their open descriptors would keep the space
        if loc is None:
            raise IntegrityError(self._missing_message(what, chunk_id), chunk_id=chunk_id)
        return loc

    def _missing_message(self, what: str, chunk_id: bytes | None) -> str:
        damage = None
        if chunk_id is not None:
            with self.index.read() as txn:
                damage = self.index.chunk_damage(txn, chunk_id)
        if damage is not None:
            return (f"{what} is lost ({damage['problem']}): import the original files again, "
                    "or `ckptfs repair --from DIR`, to heal it")
        return f"{what} is not in the index (lost with a damaged pack?)"

    def decoded(self, record, pack_id: int):
        """The decoded bytes of a record read from pack `pack_id`, not checked against its
        id (to tell whether it matches: with which key, say)."""
        record = self.decrypted(record, pack_id)
        return decode(record.codec, record.payload, record.raw_len)

    def index_location(self, chunk_id: bytes) -> Location | None:
        with self.index.read() as txn:
            return self.index.get_chunk(txn, chunk_id)

    # -- manifests ------------------------------------------------------------------------
    def read_manifest(self, manifest_id: bytes) -> dict:
        """A manifest by id, from the live index (e.g. a deleted version's file list)."""
        def locate(txn):
            return self.index.get_manifest(txn, manifest_id)
        loc, record = self._read_located(locate, f"manifest {manifest_id.hex()[:16]}")
        return self.decode_manifest(manifest_id, loc, record)

    def manifest_at(self, manifest_id: bytes, loc: Location) -> dict:
        """The manifest whose record is at `loc` (from any index: a replay's, a rebuild's)."""
        record = self.packs.read(loc.pack_id, loc.offset, loc.length)
        return self.decode_manifest(manifest_id, loc, record)

    def decode_manifest(self, manifest_id: bytes, loc: Location, record) -> dict:
        record = self.decrypted(record, loc.pack_id)
        raw = decode(record.codec, record.payload, record.raw_len)
        if self.chunk_id(raw) != manifest_id:
            raise IntegrityError(f"manifest {manifest_id.hex()[:16]} in pack "
                                 f"{loc.pack_id:08x} does not match its id", pack_id=loc.pack_id)
        return decode_manifest(raw)

    # -- chunks ---------------------------------------------------------------------------
    def read_chunk(self, chunk_id: bytes, cache: bool = True) -> bytes:
        """The raw bytes of a chunk; checked (xxh3) on the way, never wrong.

        `cache=False` for one-off reads (ingest's delta bases, verify), which would only
        push out chunks a reader is walking through."""
        data = self._decoded_already(chunk_id)
        return data if data is not None else self._load_chunk(chunk_id, cache)

    def _decoded_already(self, chunk_id: bytes):
        """The chunk's bytes if the cache has them or a prefetch is decoding them (waited
        for), else None."""
        data = self._cache.get(chunk_id)
        if data is not None:
            return data
        pending = self._inflight.get(chunk_id)
        if pending is not None:
            try:
                return pending.result()
            except IntegrityError:
                pass  # decode it again, so the error is raised in this reader's context
        return None

    def prefetch(self, entry: dict, offset: int, window: int | None = None):
        """Start decoding the chunks of `entry` in [offset, offset + window) on background
        threads, so a sequential reader finds them decoded (the mount's read-ahead).

        Called at every read: the chunks already sent ahead (`_ahead` on the entry) are
        not looked at again, so a read costs a bisect unless it moves the window on."""
        window = self.read_ahead_bytes if window is None else window
        offsets = self._chunk_offsets(entry)
        first = max(0, bisect.bisect_right(offsets, offset) - 1)
        last = bisect.bisect_left(offsets, offset + window) - 1
        ahead = entry.get("_ahead", -1)
        start = ahead + 1 if first <= ahead <= last else first
        if start > last:
            return
        entry["_ahead"] = last
        wanted = []
        for index in range(start, last + 1):
            chunk_id = bytes.fromhex(entry["chunks"][index][0])
            if chunk_id not in self._inflight and chunk_id not in self._cache:
                wanted.append(chunk_id)
        if wanted:
            self._decode_ahead(wanted)

    def _decode_ahead(self, wanted: list[bytes]) -> None:
        with self._inflight_lock:
            if self._prefetcher is None:
                self._prefetcher = ThreadPoolExecutor(self.decoders,
                                                      thread_name_prefix="ckptfs-prefetch")
            # First in the queue: start the disk reads of the whole window at once,
            # however many decoders there are (and off the caller's thread).
            self._prefetcher.submit(self._will_need, wanted)
            for chunk_id in wanted:
                if chunk_id not in self._inflight:
                    self._inflight[chunk_id] = self._prefetcher.submit(self._prefetch_one, chunk_id)

    def decoding(self, entry: dict, offset: int, size: int) -> list:
        """The Futures of the chunks of [offset, offset + size) being decoded ahead now:
        a reader that waits for them (the mount: without a thread) then finds the range
        in the cache, decoded once."""
        offsets = self._chunk_offsets(entry)
        first = max(0, bisect.bisect_right(offsets, offset) - 1)
        last = bisect.bisect_left(offsets, min(entry["size"], offset + size)) - 1
        pending = (self._inflight.get(bytes.fromhex(entry["chunks"][index][0]))
                   for index in range(first, last + 1))
        return [future for future in pending if future is not None]

    def _will_need(self, chunk_ids: list[bytes]):
        with self.index.read() as txn:
            locations = [self.index.get_chunk(txn, chunk_id) for chunk_id in chunk_ids]
        for pack_id, offset, length in merged_ranges(loc for loc in locations if loc is not None):
            self.packs.will_need(pack_id, offset, length)

    def _prefetch_one(self, chunk_id: bytes) -> bytes:
        try:
            return self._load_chunk(chunk_id, cache=True)
        finally:
            with self._inflight_lock:
                self._inflight.pop(chunk_id, None)

    @staticmethod
    def _chunk_offsets(entry: dict) -> list[int]:
        """File offset of each chunk of a file entry (kept on the entry: entries are
        immutable, and a big file has thousands of chunks)."""
        offsets = entry.get("_offsets")
        if offsets is None:
            offsets, pos = [], 0
            for _chunk, length in entry["chunks"]:
                offsets.append(pos)
                pos += length
            entry["_offsets"] = offsets
        return offsets

    def _load_chunk(self, chunk_id: bytes, cache: bool) -> bytes:
        try:
            return self._decode_record(chunk_id, self.read_record(chunk_id), cache)
        except IntegrityError as e:
            # Known from now on: no ingest deduplicates against it (docs/recovery.md).
            note_damaged_chunk(self.index, e.chunk_id or chunk_id, str(e))
            raise

    def _decode_record(self, chunk_id: bytes, record, cache: bool) -> bytes:
        base = None
        if is_delta(record.codec):
            # Outside the try below: damage in the base is the base's pack's, not ours.
            base = self._read_delta_base(delta_base_id(record.codec, record.payload))
        try:
            data = decode(record.codec, record.payload, record.raw_len,
                                 load_base=lambda _id: base)
        except IntegrityError as e:
            loc = self.index_location(chunk_id)
            raise IntegrityError(f"pack {loc.pack_id:08x}: chunk {chunk_id.hex()[:16]}: {e}",
                                 pack_id=loc.pack_id, chunk_id=chunk_id) from None
        with self._inflight_lock:
            self.decoded_chunks += 1
            self.decoded_bytes += len(data)
        if cache:
            self._cache.put(chunk_id, data)
        return data

    def _read_delta_base(self, base_id: bytes) -> bytes:
        """A delta's base, decoded: from the keyframe cache if a delta read before this
        one decoded it (versions of a run share their bases), kept there if not."""
        data = self._keyframes.get(base_id)
        if data is None:
            data = self._base_decoded_elsewhere(base_id)
        if data is None:
            # Decoded from the record read here (not by read_chunk: it would read and
            # decrypt the record a second time).
            record = self.read_record(base_id)
            if is_delta(record.codec):
                raise IntegrityError(f"delta base {base_id.hex()[:16]} is itself a delta")
            data = self._decode_record(base_id, record, cache=False)
        self._keyframes.put(base_id, data)
        return data

    def _base_decoded_elsewhere(self, base_id: bytes):
        """A base in the decoded-chunk cache, or being decoded on another thread (waited
        for), else None. A prefetch of it still queued is not waited for: this may be a
        prefetch thread, and if every one of them waited on a task behind them in the
        queue (a reader of the base version beside one of the delta), none would run."""
        data = self._cache.get(base_id)
        if data is not None:
            return data
        pending = self._inflight.get(base_id)
        if pending is not None and pending.running():
            try:
                return pending.result()
            except IntegrityError:
                pass  # decoded again by the caller, its error raised in its context
        return None

    # -- files ----------------------------------------------------------------------------
    def read_range(self, entry: dict, offset: int, size: int) -> bytes:
        """Up to `size` bytes of a file entry from `offset`."""
        return bytes(self.read_view(entry, offset, size))

    def read_view(self, entry: dict, offset: int, size: int) -> memoryview:
        """`read_range` as a read-only buffer (the mount's reads): a slice of the cached
        chunk when the range lies in one, else a new buffer copied without the GIL."""
        return self._assemble(entry, offset, size, self.read_chunk)

    def read_view_cached(self, entry: dict, offset: int, size: int) -> memoryview | None:
        """Like `read_view` if every chunk it needs is decoded in the cache already (no
        I/O, no decoding: cheap enough for the mount's event loop), else None."""
        try:
            return self._assemble(entry, offset, size, self._cached_or_raise)
        except KeyError:
            return None

    def _cached_or_raise(self, chunk_id: bytes) -> bytes:
        data = self._cache.get(chunk_id)
        if data is None:
            raise KeyError(chunk_id)
        return data

    def _assemble(self, entry: dict, offset: int, size: int, load) -> bytes:
        out = []
        end = min(entry["size"], offset + size)
        offsets = self._chunk_offsets(entry)
        index = max(0, bisect.bisect_right(offsets, offset) - 1)
        while index < len(offsets) and offsets[index] < end:
            pos = offsets[index]
            data = memoryview(load(bytes.fromhex(entry["chunks"][index][0])))
            out.append(data[max(0, offset - pos):end - pos])
            index += 1
        if len(out) == 1:
            return out[0]
        import numpy as np  # here, not at start-up: most CLI commands never read data
        # numpy copies large buffers with the GIL released; bytes.join of memoryviews
        # would hold it, and the decoders on the other threads need it.
        joined = np.empty(sum(len(part) for part in out), dtype=np.uint8)
        pos = 0
        for part in out:
            joined[pos:pos + len(part)] = np.frombuffer(part, dtype=np.uint8)
            pos += len(part)
        return joined.data

    def iter_file(self, entry: dict, pool: ThreadPoolExecutor | None = None):
        """Yield a file's bytes chunk by chunk, decoding a few chunks ahead on `pool`."""
        ids = [bytes.fromhex(c) for c, _ in entry["chunks"]]
        if pool is None:
            for chunk_id in ids:
                yield self.read_chunk(chunk_id)
            return
        ahead = []
        for chunk_id in ids:
            ahead.append(pool.submit(self.read_chunk, chunk_id))
            if len(ahead) > READ_AHEAD_CHUNKS:
                yield ahead.pop(0).result()
        for future in ahead:
            yield future.result()

    def iter_file_checked(self, entry: dict, pool: ThreadPoolExecutor | None = None,
                          hasher: ThreadPoolExecutor | None = None):
        """`iter_file`, hashing the bytes as they go by: after the last chunk, raises
        IntegrityError if the file's SHA-256 is not the one its entry (and sidecar)
        records. A reader that stops early has checked nothing. With `hasher` (one
        thread), the hashing overlaps the caller's use of the bytes."""
        sha = hashlib.sha256()
        pending = deque()
        for data in self.iter_file(entry, pool):
            if hasher is None:
                sha.update(data)
            else:
                pending.append(hasher.submit(sha.update, data))
                while len(pending) > 16:
                    pending.popleft().result()
            yield data
        for future in pending:
            future.result()
        if sha.hexdigest() != entry["sha256"]:
            raise IntegrityError(f"{entry['path']}: SHA-256 does not match the sidecar")
