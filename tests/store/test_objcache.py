"""The chunk cache (store/objcache.py) over a real backend: a LocalBackend whose `get`s
are counted (and, for some tests, held back or failed as a server that is down)."""
import os
import random
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from ckptfs.store.backend import BackendUnavailableError, LocalBackend, ObjectMissingError
from ckptfs.store.config import StoreConfig
from ckptfs.store.objcache import CachingReader
from ckptfs.store.pack import KIND_CHUNK, PackReader, PackWriter, pack_name
from ckptfs.store.s3 import S3Backend
from ckptfs.store.store import Store
from tests.helpers.s3 import free_port
from tests.helpers.samples import tree_snapshot
from tests.helpers.waiting import wait_for

BLOCK = 64 << 10


class CountingBackend(LocalBackend):
    """A LocalBackend that records every `get`; `gate` (when set) holds gets back until
    it is opened, and `down` makes them fail as an unreachable server's would."""

    def __init__(self, root: str):
        super().__init__(root)
        self.gets: list[tuple[str, int, int | None]] = []
        self.gate: threading.Event | None = None
        self.down = False
        self._count_lock = threading.Lock()

    def get(self, name, offset=0, length=None):
        with self._count_lock:
            self.gets.append((name, offset, length))
        if self.gate is not None and not self.gate.wait(60):
            raise AssertionError("a get was held back and never let go")
        if self.down:
            raise BackendUnavailableError("the object store cannot be reached")
        return super().get(name, offset, length)


@pytest.fixture
def backend(tmp_path):
    return CountingBackend(str(tmp_path / "objects"))


@pytest.fixture
def cache_dir(tmp_path):
    return str(tmp_path / "cache")


def put_objects(backend, sizes: dict[str, int], seed: int = 1) -> dict[str, bytes]:
    rng = random.Random(seed)
    objects = {}
    for name, size in sizes.items():
        objects[name] = rng.randbytes(size)
        backend.put(name, objects[name])
    return objects


def cached_bytes(cache_dir: str) -> int:
    total = 0
    for path in block_files(cache_dir):
        try:
            total += os.path.getsize(path)
        except FileNotFoundError:
            pass  # evicted meanwhile
    return total


def block_files(cache_dir: str) -> list[str]:
    return sorted(os.path.join(d, f) for d, _dirs, files in os.walk(cache_dir)
                  for f in files if not f.startswith(".") and f != "usage")


@pytest.fixture
def reader(backend, cache_dir):
    r = CachingReader(backend, cache_dir, 100 * BLOCK, block_size=BLOCK)
    yield r
    r.close()


def test_bytes_are_the_backends_for_any_range_and_at_object_ends(backend, reader):
    objects = put_objects(backend, {"packs/a": 5 * BLOCK + 123, "packs/b": 3 * BLOCK,
                                    "packs/c": 100})
    rng = random.Random(7)
    for _ in range(500):
        name = rng.choice(sorted(objects))
        size = len(objects[name])
        offset = rng.choice([0, rng.randrange(size + 10), size - 1, size, size + 5,
                             BLOCK - 1, BLOCK])
        length = rng.choice([1, rng.randrange(1, 3 * BLOCK), BLOCK, size + 5])
        assert reader.read(name, offset, length) == backend.get(name, offset, length)


def test_a_second_read_makes_no_backend_call(backend, reader):
    objects = put_objects(backend, {"packs/a": 3 * BLOCK + 5})
    assert reader.read("packs/a", 10, 3 * BLOCK) == objects["packs/a"][10:10 + 3 * BLOCK]
    before = len(backend.gets)
    assert before > 0
    assert reader.read("packs/a", 0, 3 * BLOCK + 5) == objects["packs/a"]
    assert reader.read("packs/a", 17, 99) == objects["packs/a"][17:116]
    assert reader.read("packs/a", 3 * BLOCK + 2, 10) == objects["packs/a"][-3:]
    assert reader.read("packs/a", 3 * BLOCK + 9, 10) == b""  # past the end
    assert len(backend.gets) == before


def test_what_lies_past_an_object_end_is_asked_for_once(backend, reader):
    objects = put_objects(backend, {"packs/a": 2 * BLOCK})
    assert reader.read("packs/a", 2 * BLOCK - 10, 3 * BLOCK) == objects["packs/a"][-10:]
    assert backend.gets == [("packs/a", BLOCK, 4 * BLOCK)]
    reader.will_need("packs/a", BLOCK, 4 * BLOCK)
    assert reader.read("packs/a", 2 * BLOCK - 10, 3 * BLOCK) == objects["packs/a"][-10:]
    reader.close()  # waits for the read-ahead's fetches, if any
    assert backend.gets == [("packs/a", BLOCK, 4 * BLOCK)]


def test_missing_neighbouring_blocks_come_in_one_request_per_run(backend, reader):
    objects = put_objects(backend, {"packs/a": 8 * BLOCK})
    reader.read("packs/a", 3 * BLOCK, 1)   # block 3 cached
    backend.gets.clear()
    data = reader.read("packs/a", BLOCK + 7, 5 * BLOCK)  # blocks 1-6: 1-2 and 4-6 missing
    assert data == objects["packs/a"][BLOCK + 7:6 * BLOCK + 7]
    assert sorted(backend.gets) == [("packs/a", BLOCK, 2 * BLOCK), ("packs/a", 4 * BLOCK, 3 * BLOCK)]


def test_a_read_waits_for_the_read_ahead_of_its_blocks(backend, reader):
    objects = put_objects(backend, {"packs/a": 4 * BLOCK})
    backend.gate = threading.Event()
    reader.will_need("packs/a", 0, 4 * BLOCK)  # returns at once: the get is held back
    wait_for(lambda: len(backend.gets) == 1, "the read-ahead's request")
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(reader.read, "packs/a", BLOCK, 2 * BLOCK)
        wait_for(lambda: reader.stats.joined >= 2, "the read to join the read-ahead")
        backend.gate.set()
        assert pending.result() == objects["packs/a"][BLOCK:3 * BLOCK]
    assert backend.gets == [("packs/a", 0, 4 * BLOCK)]


def test_a_sequential_reader_is_read_further_ahead(backend, cache_dir):
    put_objects(backend, {"packs/a": 20 * BLOCK, "packs/b": 20 * BLOCK})
    reader = CachingReader(backend, cache_dir, 100 * BLOCK, block_size=BLOCK,
                           read_ahead=8 * BLOCK)
    reader.will_need("packs/a", 0, BLOCK)          # a first hint: just that
    reader.will_need("packs/a", BLOCK, BLOCK)      # the next: 4 blocks more
    reader.will_need("packs/a", 2 * BLOCK, BLOCK)  # and the next: 8 (the most) more
    reader.will_need("packs/b", 10 * BLOCK, BLOCK)
    reader.will_need("packs/b", 3 * BLOCK, BLOCK)  # not after the last hint: just that
    assert blocks_read_ahead(reader, backend) == {"packs/a": list(range(0, 11)),
                                                  "packs/b": [3, 10]}


def blocks_read_ahead(reader, backend) -> dict:
    """Once the 13 fetches the two read-ahead tests cause are done: the blocks of
    packs/a and packs/b that were asked of the backend."""
    wait_for(lambda: reader.stats.fetched >= 13, "the read-ahead's fetches")
    reader.close()
    return {name: sorted({i for _n, offset, length in backend.gets if _n == name
                          for i in range(offset // BLOCK, (offset + length) // BLOCK)})
            for name in ("packs/a", "packs/b")}


def test_sequential_reads_without_hints_are_read_ahead_too(backend, cache_dir):
    objects = put_objects(backend, {"packs/a": 20 * BLOCK, "packs/b": 20 * BLOCK})
    reader = CachingReader(backend, cache_dir, 100 * BLOCK, block_size=BLOCK,
                           read_ahead=8 * BLOCK)
    for index in range(3):  # a restore reads record after record, with no hint
        assert reader.read("packs/a", index * BLOCK, BLOCK) == \
            objects["packs/a"][index * BLOCK:(index + 1) * BLOCK]
    for index in (10, 3):
        reader.read("packs/b", index * BLOCK, BLOCK)
    assert blocks_read_ahead(reader, backend) == {"packs/a": list(range(0, 11)),
                                                  "packs/b": [3, 10]}


def test_read_ahead_of_cached_blocks_asks_nothing(backend, reader):
    put_objects(backend, {"packs/a": 2 * BLOCK})
    reader.read("packs/a", 0, 2 * BLOCK)
    backend.gets.clear()
    reader.will_need("packs/a", 0, 2 * BLOCK)
    reader.read("packs/a", 0, 2 * BLOCK)
    assert backend.gets == []


def test_capacity_keeps_the_least_recently_used_out(backend, cache_dir):
    put_objects(backend, {f"packs/{n}": BLOCK for n in "abcd"})
    reader = CachingReader(backend, cache_dir, 3 * BLOCK, block_size=BLOCK)
    try:
        for name in ("packs/a", "packs/b", "packs/c", "packs/a", "packs/d"):
            reader.read(name, 0, BLOCK)
            assert cached_bytes(cache_dir) <= 3 * BLOCK
        reader.flush()  # blocks are written, and others evicted, after the read
        backend.gets.clear()
        for name in ("packs/a", "packs/c", "packs/d"):
            reader.read(name, 0, BLOCK)
        assert backend.gets == []  # b, the least recently used, went
        reader.read("packs/b", 0, BLOCK)
        assert backend.gets == [("packs/b", 0, BLOCK)]
        assert cached_bytes(cache_dir) <= 3 * BLOCK
    finally:
        reader.close()


def test_a_restart_keeps_the_cache_and_its_order(backend, cache_dir):
    objects = put_objects(backend, {f"packs/{n}": BLOCK for n in "abcd"})
    first = CachingReader(backend, cache_dir, 3 * BLOCK, block_size=BLOCK)
    for name in ("packs/a", "packs/b", "packs/c", "packs/a"):
        first.read(name, 0, BLOCK)
    first.close()
    backend.gets.clear()
    again = CachingReader(backend, cache_dir, 3 * BLOCK, block_size=BLOCK)
    try:
        assert again.read("packs/b", 0, BLOCK) == objects["packs/b"]
        assert backend.gets == []
        again.read("packs/d", 0, BLOCK)  # c is now the least recently used
        again.flush()
        backend.gets.clear()
        for name in ("packs/a", "packs/b", "packs/d"):
            again.read(name, 0, BLOCK)
        assert backend.gets == []
        again.read("packs/c", 0, BLOCK)
        assert backend.gets == [("packs/c", 0, BLOCK)]
    finally:
        again.close()


def test_a_smaller_capacity_at_open_evicts_at_once(backend, cache_dir):
    put_objects(backend, {f"packs/{n}": BLOCK for n in "abcd"})
    with_room = CachingReader(backend, cache_dir, 10 * BLOCK, block_size=BLOCK)
    for name in ("packs/a", "packs/b", "packs/c", "packs/d"):
        with_room.read(name, 0, BLOCK)
    with_room.close()
    assert cached_bytes(cache_dir) == 4 * BLOCK
    CachingReader(backend, cache_dir, 2 * BLOCK, block_size=BLOCK).close()
    assert cached_bytes(cache_dir) == 2 * BLOCK


@pytest.mark.parametrize("damage", ["truncate", "grow", "empty"])
def test_a_block_of_the_wrong_size_is_fetched_again(backend, reader, cache_dir, damage):
    objects = put_objects(backend, {"packs/a": 2 * BLOCK + 10})
    reader.read("packs/a", 0, 2 * BLOCK + 10)
    reader.flush()
    assert len(block_files(cache_dir)) == 3
    for path in block_files(cache_dir):
        with open(path, "r+b") as f:
            if damage == "truncate":
                f.truncate(5)
            elif damage == "grow":
                f.seek(0, os.SEEK_END)
                f.write(b"x" * 3)
            else:
                f.truncate(0)
    backend.gets.clear()
    assert reader.read("packs/a", 0, 2 * BLOCK + 10) == objects["packs/a"]
    assert backend.gets  # fetched again
    reader.flush()
    backend.gets.clear()
    assert reader.read("packs/a", 0, 2 * BLOCK + 10) == objects["packs/a"]
    assert backend.gets == []  # and kept again, whole


class CachedLocalBackend(CountingBackend):
    """A local store whose packs are read through a chunk cache, as an object store's."""

    cache_dir = ""

    def open_reader(self):
        self.reader = CachingReader(self, self.cache_dir, 100 * BLOCK, block_size=BLOCK)
        return self.reader


def test_a_record_altered_in_the_cache_is_read_again_from_the_backend(tmp_path):
    backend = CachedLocalBackend(str(tmp_path / "objects"))
    backend.cache_dir = str(tmp_path / "cache")
    writer = PackWriter(backend, 1)
    payload = random.Random(3).randbytes(3 * BLOCK)
    offset, length = writer.append(KIND_CHUNK, 0, b"\1" * 32, len(payload), payload)
    writer.close()
    packs = PackReader(backend)
    try:
        assert bytes(packs.read(1, offset, length).payload) == payload
        backend.reader.flush()
        assert block_files(backend.cache_dir)
        for path in block_files(backend.cache_dir):  # same sizes, other bytes
            with open(path, "r+b") as f:
                f.seek(100)
                byte = f.read(1)
                f.seek(100)
                f.write(bytes([byte[0] ^ 0xFF]))
        backend.gets.clear()
        assert bytes(packs.read(1, offset, length).payload) == payload
        assert len(backend.gets) == 1  # once, from the backend
        backend.reader.flush()
        backend.gets.clear()
        assert bytes(packs.read_raw(1, offset, length)[-len(payload):]) == payload
        assert backend.gets == []  # the cache holds the right bytes again
    finally:
        packs.close()


def test_damage_in_the_pack_itself_is_still_reported(tmp_path):
    backend = CachedLocalBackend(str(tmp_path / "objects"))
    backend.cache_dir = str(tmp_path / "cache")
    writer = PackWriter(backend, 1)
    offset, length = writer.append(KIND_CHUNK, 0, b"\1" * 32, 5, b"hello")
    writer.close()
    with open(backend.path_of(pack_name(1)), "r+b") as f:
        f.seek(offset + length - 1)
        f.write(b"!")
    packs = PackReader(backend)
    try:
        with pytest.raises(Exception, match="checksum mismatch"):
            packs.read(1, offset, length)
    finally:
        packs.close()


def test_cached_data_is_read_with_the_backend_gone(backend, reader, tmp_path):
    objects = put_objects(backend, {"packs/a": 3 * BLOCK, "packs/b": BLOCK})
    reader.read("packs/a", 0, 3 * BLOCK)
    shutil.move(backend.root, str(tmp_path / "moved-away"))
    assert reader.read("packs/a", BLOCK - 5, BLOCK) == objects["packs/a"][BLOCK - 5:2 * BLOCK - 5]
    with pytest.raises(ObjectMissingError):
        reader.read("packs/b", 0, 10)


def test_backend_errors_pass_through_unchanged(backend, reader):
    objects = put_objects(backend, {"packs/a": 2 * BLOCK})
    reader.read("packs/a", 0, BLOCK)
    backend.down = True
    assert reader.read("packs/a", 0, BLOCK) == objects["packs/a"][:BLOCK]
    with pytest.raises(BackendUnavailableError):
        reader.read("packs/a", 0, 2 * BLOCK)
    reader.will_need("packs/a", BLOCK, BLOCK)  # a hint: never raises
    with pytest.raises(ObjectMissingError):
        backend.down = False
        reader.read("packs/none", 0, 1)
    assert reader.read("packs/a", 0, 2 * BLOCK) == objects["packs/a"]  # up again


def test_two_readers_share_one_cache_dir(tmp_path, cache_dir):
    backend_one = CountingBackend(str(tmp_path / "objects"))
    backend_two = CountingBackend(str(tmp_path / "objects"))
    objects = put_objects(backend_one, {f"packs/{n}": 2 * BLOCK for n in range(12)})
    one = CachingReader(backend_one, cache_dir, 8 * BLOCK, block_size=BLOCK)
    two = CachingReader(backend_two, cache_dir, 8 * BLOCK, block_size=BLOCK)
    try:
        one.read("packs/0", 0, 2 * BLOCK)
        one.flush()
        assert two.read("packs/0", 0, 2 * BLOCK) == objects["packs/0"]
        assert backend_two.gets == []  # what one fetched, two reads from the cache

        def read_all(reader, order):
            for n in order:
                assert reader.read(f"packs/{n}", 0, 2 * BLOCK) == objects[f"packs/{n}"]
        with ThreadPoolExecutor(2) as pool:
            runs = [pool.submit(read_all, one, list(range(12)) * 2),
                    pool.submit(read_all, two, list(reversed(range(12))) * 2)]
            for run in runs:
                run.result()
        assert cached_bytes(cache_dir) <= 8 * BLOCK
    finally:
        one.close()
        two.close()
    # The count both kept is the truth a new reader finds.
    with open(os.path.join(cache_dir, f"blocks-{BLOCK}", "usage"), "rb") as f:
        assert int.from_bytes(f.read(), "little") == cached_bytes(cache_dir)


READER_PROCESS = """
import hashlib, sys
from ckptfs.store.backend import LocalBackend
from ckptfs.store.objcache import CachingReader
root, cache, block, order = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
reader = CachingReader(LocalBackend(root), cache, 8 * block, block_size=block)
for name in order * 3:
    data = reader.read(name, 0, 2 * block)
    print(name, hashlib.sha256(data).hexdigest())
reader.close()
"""


def test_two_processes_share_one_cache_dir(backend, cache_dir):
    import hashlib
    import subprocess
    import sys
    objects = put_objects(backend, {f"packs/{n}": 2 * BLOCK for n in range(10)})
    names = sorted(objects)
    children = [subprocess.Popen([sys.executable, "-c", READER_PROCESS, backend.root, cache_dir,
                                  str(BLOCK), *order], stdout=subprocess.PIPE, text=True,
                                 env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
                for order in (names, names[::-1])]
    for child in children:
        out, _ = child.communicate(timeout=120)
        assert child.returncode == 0
        for line in out.splitlines():
            name, digest = line.split()
            assert digest == hashlib.sha256(objects[name]).hexdigest()
    assert cached_bytes(cache_dir) <= 8 * BLOCK
    with open(os.path.join(cache_dir, f"blocks-{BLOCK}", "usage"), "rb") as f:
        assert int.from_bytes(f.read(), "little") == cached_bytes(cache_dir)


def test_handles_share_one_cache_and_closing_one_keeps_it(backend, reader):
    objects = put_objects(backend, {"packs/a": 2 * BLOCK})
    first, second = reader.handle(), reader.handle()
    assert first.read("packs/a", 0, 2 * BLOCK) == objects["packs/a"]
    first.close()
    reader.flush()
    backend.gets.clear()
    second.will_need("packs/a", 0, 2 * BLOCK)
    assert second.read("packs/a", 5, BLOCK) == objects["packs/a"][5:BLOCK + 5]
    assert backend.gets == []  # what the first fetched, through the one cache
    assert second.drop("packs/a", 0, BLOCK)
    assert second.read("packs/a", 0, 2 * BLOCK) == objects["packs/a"]
    assert backend.gets == [("packs/a", 0, BLOCK)]


def test_many_threads_read_at_once(backend, cache_dir):
    objects = put_objects(backend, {f"packs/{n}": 3 * BLOCK + n * 1000 for n in range(6)})
    reader = CachingReader(backend, cache_dir, 10 * BLOCK, block_size=BLOCK)

    def reads(seed):
        rng = random.Random(seed)
        for _ in range(150):
            name = f"packs/{rng.randrange(6)}"
            offset = rng.randrange(len(objects[name]))
            length = rng.randrange(1, 2 * BLOCK)
            if rng.random() < 0.3:
                reader.will_need(name, offset, length)
            assert reader.read(name, offset, length) == objects[name][offset:offset + length]
    try:
        with ThreadPoolExecutor(16) as pool:
            for done in [pool.submit(reads, seed) for seed in range(16)]:
                done.result()
        assert cached_bytes(cache_dir) <= 10 * BLOCK
    finally:
        reader.close()


def test_blocks_are_private(backend, reader, cache_dir):
    put_objects(backend, {"packs/a": BLOCK + 1})
    reader.read("packs/a", 0, BLOCK + 1)
    reader.flush()
    assert len(block_files(cache_dir)) == 2
    for path in block_files(cache_dir):
        assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(cache_dir).st_mode & 0o077 == 0


def test_a_store_reads_its_versions_through_the_cache(tmp_path, checkpoint):
    path = str(tmp_path / "store")
    Store.init(path).close()
    backend = CachedLocalBackend(path)
    backend.cache_dir = str(tmp_path / "cache")
    store = Store(path, StoreConfig.load(backend), backend=backend)
    try:
        store.import_directory(checkpoint, "p", "r", "v")
        store.restore("p", "r", "v", str(tmp_path / "cold"))
        assert [g for g in backend.gets if g[0].startswith("packs/")]
        backend.gets.clear()
        store.reader.clear_cache()
        store.restore("p", "r", "v", str(tmp_path / "warm"))
        assert [g for g in backend.gets if g[0].startswith("packs/")] == []
    finally:
        store.close()
    assert tree_snapshot(tmp_path / "cold") == tree_snapshot(checkpoint)
    assert tree_snapshot(tmp_path / "warm") == tree_snapshot(checkpoint)


def test_recency_sorts_blocks_noted_out_of_order():
    # A block is noted when the writer has written it, with the time it was fetched.
    from ckptfs.store.objcache import _Recency
    recency = _Recency({"x": 5})
    for path, stamp in (("a", 40), ("b", 20), ("c", 30), ("x", 50), ("b", 60)):
        recency.used(path, stamp)
    recency.used("d", 1)
    recency.forget("d")
    assert [recency.pop_oldest() for _ in range(5)] == [("c", 30), ("a", 40), ("x", 50),
                                                        ("b", 60), None]


# -- over the S3 backend (moto_server) ------------------------------------------------------
class CountingS3Backend(S3Backend):
    def __init__(self, url, local_dir):
        super().__init__(url, local_dir)
        self.gets = []

    def get(self, name, offset=0, length=None):
        self.gets.append((name, offset, length))
        return super().get(name, offset, length)


def test_over_s3_reads_are_the_objects_and_cached_ones_survive_the_server_down(
        s3_store_url, tmp_path, monkeypatch):
    s3 = CountingS3Backend(s3_store_url, str(tmp_path / "local"))
    objects = {"packs/000000/00000001.pack": random.Random(5).randbytes(5 * BLOCK + 77),
               "packs/000000/00000002.pack": random.Random(6).randbytes(BLOCK)}
    for name, data in objects.items():
        s3.put_if_absent(name, data)
    cache = str(tmp_path / "local" / "cache")
    reader = CachingReader(s3, cache, 100 * BLOCK, block_size=BLOCK)
    try:
        one, two = sorted(objects)
        reader.will_need(one, 0, 8 * BLOCK)  # past the end: S3 answers 416 there
        assert reader.read(one, 0, 8 * BLOCK) == objects[one]
        assert reader.read(one, BLOCK + 3, 2 * BLOCK) == objects[one][BLOCK + 3:3 * BLOCK + 3]
        reader.flush()
        s3.gets.clear()
        assert reader.read(one, 0, 8 * BLOCK) == objects[one]
        assert s3.gets == []
    finally:
        reader.close()
    # The same store seen while its server cannot be reached: nothing listens there.
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("CKPTFS_S3_MAX_ATTEMPTS", "1")
    down = S3Backend(s3_store_url, str(tmp_path / "local"))
    reader = CachingReader(down, cache, 100 * BLOCK, block_size=BLOCK)
    try:
        assert reader.read(one, 2 * BLOCK - 1, 4 * BLOCK) == objects[one][2 * BLOCK - 1:]
        with pytest.raises(BackendUnavailableError):
            reader.read(two, 0, BLOCK)
        reader.will_need(two, 0, BLOCK)  # a hint: never raises
    finally:
        reader.close()
        down.close()
