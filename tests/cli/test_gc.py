"""Garbage collection on real stores: what `ckptfs gc` deletes and reclaims, that every
kept version still restores byte for byte and `verify` passes, a gc killed at each step
(and at a random moment of a bigger rewrite) that the next gc finishes, imports and
readers racing a gc, leftover packs, and a gc while the store is mounted."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from ckptfs.store import Store
from ckptfs.store.backend import LocalBackend
from ckptfs.store.gc import CRASH_ENV, CRASH_EXIT, load_intent
from ckptfs.store.pack import list_pack_ids, pack_name, scan_pack
from tests.helpers import gc as helpers
from tests.helpers.cli import run_cli_checked, run_cli_many
from tests.helpers.gc import KEPT, assert_restores, build_store
from tests.helpers.samples import tree_snapshot
from tests.helpers.stores import copy_store

pristine = helpers.pristine  # a fixture (tests/helpers/gc.py)
small = helpers.small  # a fixture (tests/helpers/gc.py)


DELETED = ["p/r/v0", "p/r/v3"]


def pack_bytes(store: str) -> int:
    backend = LocalBackend(store)
    return sum(os.path.getsize(backend.path_of(pack_name(p))) for p in list_pack_ids(backend))


def pack_record_ids(store: str) -> list[bytes]:
    backend = LocalBackend(store)
    return [r.record_id for p in list_pack_ids(backend) for r in scan_pack(backend, p).records]


def referenced_packs(store: str) -> set[int]:
    with Store.open(store) as s, s.index.read() as txn:
        return s.index.referenced_pack_ids(txn)


def stats(store: str) -> dict:
    with Store.open(store) as s:
        return s.stats()


@pytest.fixture(scope="module")
def reference(pristine, tmp_path_factory):
    """An uninterrupted `ckptfs gc` (after a dry run) on a copy of the pristine store."""
    path = copy_store(pristine.path, tmp_path_factory.mktemp("ref") / "store")
    before = stats(path)
    dry = json.loads(run_cli_checked("gc", path, "--dry-run", "--json").stdout)
    done = run_cli_checked("gc", path).stdout.decode()
    return SimpleNamespace(path=path, dry=dry, text=done, before=before, after=stats(path),
                           pack_bytes=pack_bytes(path), records=sorted(pack_record_ids(path)))


# -- gc applied ----------------------------------------------------------------------------
def test_gc_deletes_by_policy_and_reclaims_what_it_planned(reference, pristine, tmp_path):
    dry, before, after = reference.dry, reference.before, reference.after
    assert [d["ref"] for d in dry["deletions"]] == DELETED
    assert len(dry["packs_rewritten"]) == 2 and dry["packs_dropped"] == []   # v0's, v3's
    lines = reference.text.splitlines()
    assert lines[0] == ("deleted p/r/v0: not among the newest 1  "
                        "[keep_last=1, from project p]")
    assert lines[1].startswith("deleted p/r/v3: not among the newest 1")
    assert "2 version(s) deleted by retention policy" in reference.text
    # what the dry run planned is what happened
    assert before["stored_bytes"] - after["stored_bytes"] == dry["freed_bytes"] > 0
    assert before["chunks"] - after["chunks"] == dry["freed_chunks"]
    assert after["pack_bytes"] == dry["pack_bytes_after"] < before["pack_bytes"]
    assert (after["versions"], after["deleted_versions"]) == (4, 2)
    # the stats agree with the disk, and nothing is stored twice
    assert after["pack_bytes"] == reference.pack_bytes
    assert len(reference.records) == len(set(reference.records))
    ls, find, verify = run_cli_many(("ls", reference.path, "p/r"),
                                    ("find", reference.path, "--format", "paths"),
                                    ("verify", reference.path))
    assert ls.stdout.decode().split() == ["v1", "v2", "v4"]
    assert sorted(find.stdout.decode().split()) == sorted(f"projects/{r}" for r in KEPT)
    assert b"ok: " in verify.stdout and b"(2 deleted: file lists checked)" in verify.stdout
    got = run_cli_many(*[("get", reference.path, ref, tmp_path / ref.replace("/", "_"))
                         for ref in KEPT])
    for ref, proc in zip(KEPT, got):
        assert b"SHA-256 verified" in proc.stdout
        assert tree_snapshot(tmp_path / ref.replace("/", "_")) == \
            tree_snapshot(pristine.sources[ref]), f"{ref} differs after gc"
    with Store.open(reference.path) as s:
        assert [t["record"]["version"] for t in s.tombstones("p", "r")] == ["v0", "v3"]
        assert s.tombstone("p", "r", "v0")["deletion"]["policy"] == {
            "rules": {"keep_last": 1}, "scope": "p"}


def test_rebuild_index_after_gc_gives_the_same_index(reference, tmp_path):
    path = copy_store(reference.path, tmp_path / "store")
    with Store.open(path) as s:
        before = s.index.dump()
        summary = s.rebuild_index()
        after = s.index.dump()
    assert summary["versions"] == 6 and not summary["damaged_packs"]   # sealed, then 2 deleted
    for db in before:
        if db != "meta":
            assert after[db] == before[db], f"{db} differs after rebuild-index"
    for key in (b"chunk_count", b"chunk_raw_bytes", b"chunk_stored_bytes", b"journal_seq"):
        assert after["meta"][key] == before["meta"][key]


def test_a_second_gc_has_nothing_left_to_do(reference, tmp_path):
    path = copy_store(reference.path, tmp_path / "store")
    with Store.open(path) as s:
        report = s.collect_garbage()
    assert report.deletions == [] and report.freed_chunks == 0
    assert report.packs_rewritten == report.packs_dropped == []
    assert pack_bytes(path) == reference.pack_bytes


# -- killed mid-way ----------------------------------------------------------------------------
def gc_process(store: str, crash_at: str | None = None) -> subprocess.Popen:
    env = dict(os.environ)
    if crash_at:
        env[CRASH_ENV] = crash_at
    return subprocess.Popen([sys.executable, "-m", "ckptfs", "gc", store], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def assert_finished_like_the_reference(path: str, reference, pristine, tmp_path):
    """verify passes now; every kept version restores; a second gc finishes the job and
    leaves exactly what an uninterrupted gc left."""
    verified = run_cli_checked("verify", path).stdout.decode()
    assert verified.splitlines()[-1].startswith("ok: "), verified
    assert ("note: a garbage collection was interrupted" in verified) == \
        (load_intent(LocalBackend(path)) is not None)
    assert_restores(path, KEPT, pristine.sources, tmp_path / "before")
    with Store.open(path) as s:
        s.collect_garbage()
        assert s.verify().ok
        assert [d["version"] for d in s.catalog_documents("p", "r")] == ["v1", "v2", "v4"]
    assert load_intent(LocalBackend(path)) is None
    assert sorted(pack_record_ids(path)) == reference.records   # no old/new duplicates
    assert pack_bytes(path) == reference.pack_bytes
    assert_restores(path, KEPT, pristine.sources, tmp_path / "after")


@pytest.mark.parametrize("point", ["after-deletions", "after-new-packs", "after-index-switch",
                                   "mid-old-pack-removal"])
def test_gc_killed_at_each_step_is_finished_by_the_next(point, reference, pristine, tmp_path):
    path = copy_store(pristine.path, tmp_path / "store")
    packs_before = set(list_pack_ids(LocalBackend(path)))
    old = set(reference.dry["packs_rewritten"] + reference.dry["packs_dropped"])
    proc = gc_process(path, point)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == CRASH_EXIT, err.decode()
    packs_now = set(list_pack_ids(LocalBackend(path)))
    intent = load_intent(LocalBackend(path))
    if point == "after-deletions":
        assert intent is None and packs_now == packs_before
        with Store.open(path) as s:
            assert [t["record"]["version"] for t in s.tombstones()] == ["v0", "v3"]
    else:
        assert intent is not None and set(intent["old"]) == old and intent["new"]
        new = set(intent["new"])
        assert new <= packs_now
        switched = bool(referenced_packs(path) & new)
        assert switched == (point != "after-new-packs")
        gone = old - packs_now
        assert len(gone) == {"after-new-packs": 0, "after-index-switch": 0,
                             "mid-old-pack-removal": 1}[point]
    assert_rebuilt_index_is_sound(copy_store(path, tmp_path / "rebuilt"), reference, pristine,
                                  tmp_path / "rebuilt-out")
    assert_finished_like_the_reference(path, reference, pristine, tmp_path)


def catalog(store) -> dict:
    """What the catalog says (the time of each deletion aside: it depends on the gc run)."""
    return {"documents": store.catalog_documents(), "aliases": store.aliases("p", "r"),
            "tombstones": [(t["record"], t["document"], t["deletion"]) for t in store.tombstones()]}


def assert_rebuilt_index_is_sound(path: str, reference, pristine, dest):
    """rebuild-index over what a killed gc left (old and new packs side by side: the
    first occurrence of a record, in pack id order, wins): the same catalog, a sound
    store, and a gc after it still finishes."""
    with Store.open(reference.path) as ref:
        expected = catalog(ref)
    with Store.open(path) as s:
        s.rebuild_index()
        assert catalog(s) == expected and s.verify().ok
        s.collect_garbage()
        assert catalog(s) == expected and s.verify().ok
    assert_restores(path, KEPT, pristine.sources, dest)


def test_gc_sigkilled_at_a_random_moment_of_a_bigger_rewrite(tmp_path_factory, tmp_path):
    """v0 holds 16 MiB that later versions share (live: copied) and 24 MiB of its own (dead):
    gc is killed when its new pack reaches a random size."""
    root = tmp_path_factory.mktemp("big")
    path, sources = build_store(root, own_kb=24 << 10, shared_kb=16 << 10)
    reference_path = copy_store(path, root / "reference")
    with Store.open(reference_path) as s:
        done = s.collect_garbage()
    assert done.bytes_copied > 16 << 20
    reference = SimpleNamespace(pack_bytes=pack_bytes(reference_path),
                                records=sorted(pack_record_ids(reference_path)))
    seed = random.randrange(1 << 30)
    kill_at = random.Random(seed).randrange(1, done.bytes_copied)
    proc = gc_process(path)
    deadline = time.monotonic() + 120
    while proc.poll() is None:
        assert time.monotonic() < deadline
        intent = load_intent(LocalBackend(path))
        sizes = [os.path.getsize(LocalBackend(path).path_of(pack_name(p)))
                 for p in (intent or {}).get("new", [])
                 if os.path.exists(LocalBackend(path).path_of(pack_name(p)))]
        if sum(sizes) >= kill_at:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.0005)
    proc.wait()
    if proc.returncode != -signal.SIGKILL:
        pytest.fail(f"gc finished before it could be killed (seed {seed}, at {kill_at} bytes)")
    assert_finished_like_the_reference(path, reference, SimpleNamespace(sources=sources), tmp_path)


def test_a_reader_whose_pack_was_just_rewritten_looks_again(small):
    """The reader looks a chunk up; before it reads it, `ckptfs gc` in another process
    copies it to a new pack and deletes the old one."""
    with Store.open(small.path) as reader:
        reader.apply_retention()        # a goes; b shares a's optimizer.pt (same bytes)
        old = set(reader.collector.plan_packs(reader.collector.liveness()).rewrite)
        chunk_id = next(bytes.fromhex(c) for e in reader.walk("p", "r", "b")
                        if e["type"] == "file" for c, _ in e["chunks"]
                        if reader.index_location(bytes.fromhex(c)).pack_id in old)
        reader.packs.close()            # no descriptor of the old pack kept open
        read, seen = reader.packs.read, []

        def read_after_a_gc(pack_id, offset, length):
            seen.append(pack_id)
            if len(seen) == 1:                        # looked up, not read yet: gc runs
                run_cli_checked("gc", small.path)
            return read(pack_id, offset, length)
        reader.packs.read = read_after_a_gc
        data = reader.read_chunk(chunk_id, cache=False)
        assert reader.chunk_id(data) == chunk_id
    assert len(seen) == 2 and seen[0] in old and seen[1] not in old   # looked up again
