"""The reader's caches: bounded, counted, and a keyframe cache a scan cannot empty."""
import pytest

from ckptfs.store.chunkcache import (CACHE_SIZE_ENV, DEFAULT_CACHE_SIZE, STALE_MISSES_PER_ENTRY,
                                     ChunkCache, KeyframeCache, read_cache_size)
from ckptfs.store.errors import SettingError


def chunk(i: int, n: int = 100) -> tuple[bytes, bytes]:
    return i.to_bytes(4, "big"), bytes([i % 256]) * n


def test_the_lru_never_holds_more_than_its_cap_and_counts_its_peak():
    cache = ChunkCache(1000)
    for i in range(50):
        cache.put(*chunk(i, 90 + i % 7))
        assert cache.size <= 1000 and cache.peak <= 1000
    assert cache.get(chunk(49)[0]) is not None and cache.get(chunk(0)[0]) is None
    cache.put(*chunk(99, 251))  # over a quarter of the cap: not kept
    assert chunk(99)[0] not in cache
    assert cache.stats()["hits"] == 1 and cache.stats()["misses"] == 1


def test_a_scan_through_the_keyframe_cache_leaves_what_the_next_scan_reads_first():
    cache = KeyframeCache(1000)
    for i in range(30):  # the bases of one version, in file order
        if cache.get(chunk(i)[0]) is None:
            cache.put(*chunk(i))
    assert cache.size == 1000 and cache.peak == 1000
    hits = sum(cache.get(chunk(i)[0]) is not None for i in range(30))  # the next version
    assert hits == 10  # an LRU would have kept the last ten, which a scan reaches last


def test_a_keyframe_cache_that_stopped_serving_is_emptied_for_new_bases():
    cache = KeyframeCache(1000)
    for i in range(10):
        cache.put(*chunk(i))
    for i in range(100, 100 + STALE_MISSES_PER_ENTRY * 10 + 1):  # another run's bases
        assert cache.get(chunk(i)[0]) is None
    assert cache.size == 0
    cache.put(*chunk(200))
    assert cache.get(chunk(200)[0]) is not None


def test_the_budget_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(CACHE_SIZE_ENV, raising=False)
    assert read_cache_size() == DEFAULT_CACHE_SIZE
    for text, size in (("16M", 16 << 20), ("1g", 1 << 30), ("512KB", 512 << 10), ("4096", 4096)):
        monkeypatch.setenv(CACHE_SIZE_ENV, text)
        assert read_cache_size() == size
    monkeypatch.setenv(CACHE_SIZE_ENV, "lots")
    with pytest.raises(SettingError, match="CKPTFS_READ_CACHE_SIZE='lots' is not a size"):
        read_cache_size()
