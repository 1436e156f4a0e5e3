"""The reader's memory: decoded chunks, bounded and counted.

Two caches share one budget, CKPTFS_READ_CACHE_SIZE (default 64M):

* `ChunkCache` (three quarters): an LRU of decoded chunks. The mount's read-ahead decodes
  chunks into it ahead of a sequential reader, and each FUSE read is served as a slice of
  a cached chunk (no copy, no decode on the event loop).
* `KeyframeCache` (a quarter): decoded delta bases (keyframes). Versions of one run
  stored as XOR-deltas share their bases, so a reader going through several of them
  decodes each base once. Reading a file is a scan, and an LRU would evict every base
  before the next version asks for it: bases stay while they serve, and the cache is
  emptied only when it has stopped serving (many misses since its last hit).

Sizes are counted as the bytes of the decoded chunks held (`stats()`), with the highest
count reached: neither cache ever holds more than its cap.
"""
import os
import threading
from collections import OrderedDict

from .errors import SettingError

CACHE_SIZE_ENV = "CKPTFS_READ_CACHE_SIZE"
DEFAULT_CACHE_SIZE = 64 << 20
SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
KEYFRAME_SHARE = 4        # a quarter of the budget holds delta bases
STALE_MISSES_PER_ENTRY = 4  # misses since the last hit, per entry held, that empty it


def read_cache_size() -> int:
    """The reader's memory budget in bytes: CKPTFS_READ_CACHE_SIZE (`64M`, `1G`, bytes)."""
    raw = os.environ.get(CACHE_SIZE_ENV, "")
    text = raw.strip().upper().removesuffix("B")
    if not text:
        return DEFAULT_CACHE_SIZE
    number, unit = (text[:-1], text[-1]) if text[-1] in SIZE_UNITS else (text, "")
    try:
        size = int(float(number) * SIZE_UNITS[unit])
    except ValueError:
        size = -1
    if size < 0:
        raise SettingError(f"{CACHE_SIZE_ENV}={raw!r} is not a size (e.g. 64M, 1G)")
    return size


class ChunkCache:
    """An LRU of decoded chunks, at most `max_bytes` of them (a chunk bigger than a
    quarter of that is not kept)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.size = 0
        self.peak = 0     # the most bytes ever held: never above max_bytes
        self.hits = self.misses = 0
        self._items: OrderedDict[bytes, object] = OrderedDict()
        self._lock = threading.Lock()

    def __contains__(self, key) -> bool:
        return key in self._items

    def get(self, key):
        with self._lock:
            data = self._items.get(key)
            if data is None:
                self.misses += 1
                return None
            self.hits += 1
            self._items.move_to_end(key)
            return data

    def put(self, key, data) -> None:
        with self._lock:
            if key in self._items or not self._admits(len(data)):
                return
            self._items[key] = data
            self.size += len(data)
            self.peak = max(self.peak, self.size)

    def _admits(self, n: int) -> bool:
        """Make room for `n` bytes (LRU first); False if they are not to be kept."""
        if n > self.max_bytes // 4:
            return False
        while self.size + n > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self.size -= len(old)
        return True

    def stats(self) -> dict:
        return {"bytes": self.size, "peak_bytes": self.peak, "capacity": self.max_bytes,
                "chunks": len(self._items), "hits": self.hits, "misses": self.misses}


class KeyframeCache(ChunkCache):
    """Decoded delta bases. A full cache admits no more (a scan would push out what the
    next scan needs); once it has missed `STALE_MISSES_PER_ENTRY` times per entry since
    its last hit, what it holds serves no reader any more, and it is emptied."""

    def __init__(self, max_bytes: int):
        super().__init__(max_bytes)
        self._misses_since_hit = 0

    def get(self, key):
        data = super().get(key)
        with self._lock:
            if data is not None:
                self._misses_since_hit = 0
            else:
                self._misses_since_hit += 1
                if self._misses_since_hit > STALE_MISSES_PER_ENTRY * max(1, len(self._items)):
                    self._items.clear()
                    self.size = 0
                    self._misses_since_hit = 0
        return data

    def _admits(self, n: int) -> bool:
        return n <= self.max_bytes // 4 and self.size + n <= self.max_bytes
