"""Garbage collection on real stores: what `ckptfs gc` deletes and reclaims, that every
kept version still restores byte for byte and `verify` passes, a gc killed at each step
(and at a random moment of a bigger rewrite) that the next gc finishes, imports and
readers racing a gc, leftover packs, and a gc while the store is mounted."""
import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import copy_store, run_cli_checked, run_cli_many
from samples import make_checkpoint, tree_snapshot
from test_mount_inbox import sh, wait_for

from ckptfs.meta.seal import archive_directory
from ckptfs.store import Store
from ckptfs.store.backend import LocalBackend
from ckptfs.store.gc import CRASH_ENV, CRASH_EXIT, GcReport, load_intent
from ckptfs.store.pack import list_pack_ids, pack_name, scan_pack

# p/r: v0..v4, each a sample checkpoint (tensor blocks delta-coded against v0's) plus
# own.bin (its own random bytes); p/ft/f0 is a fine-tune of p/r/v1; p/r/v2 has the alias
# production. With keep_last=1 on p, gc deletes v0 and v3 and keeps v1 (explicit parent
# of f0), v2 (alias) and v4 (latest). v0's pack keeps the chunks later versions share
# and the delta bases of their tensors; v3's keeps only its manifest (a tombstone's file
# list): both are rewritten.
RUN = ["v0", "v1", "v2", "v3", "v4"]
KEPT = ["p/r/v1", "p/r/v2", "p/r/v4", "p/ft/f0"]
DELETED = ["p/r/v0", "p/r/v3"]


def make_version(path, step: int, own_kb: int = 384, parent: str | None = None) -> str:
    make_checkpoint(path, step=step)
    os.makedirs(os.path.join(path, "chunks"), exist_ok=True)   # a name the index's JSON
    with open(os.path.join(path, "chunks", "chunks"), "w") as f:  # also uses for a key
        f.write(f'"chunks" of step {step}')
    with open(os.path.join(path, "own.bin"), "wb") as f:
        f.write(np.random.default_rng(step).bytes(own_kb << 10))
    if parent:
        with open(os.path.join(path, "ckptfs.json"), "w") as f:
            json.dump({"lineage": {"parent": dict(zip(("project", "run", "version"),
                                                      parent.split("/")))}}, f)
    return str(path)


def build_store(root, own_kb: int = 384, shared_kb: int = 0) -> tuple[str, dict]:
    """The store above: (its path, {ref: source directory})."""
    path = str(root / "store")
    sources = {}
    with Store.init(path) as store:
        for i, v in enumerate(RUN):
            src = make_version(root / "src" / v, 100 + i, own_kb if v == "v0" else 96)
            if shared_kb:   # bytes v0 shares with every later version: live in v0's pack
                with open(os.path.join(src, "shared.bin"), "wb") as f:
                    f.write(np.random.default_rng(1).bytes(shared_kb << 10))
            archive_directory(store, src, "p", "r", v)
            sources[f"p/r/{v}"] = src
        sources["p/ft/f0"] = make_version(root / "src" / "f0", 200, 96, parent="p/r/v1")
        archive_directory(store, sources["p/ft/f0"], "p", "ft", "f0")
        store.set_alias("p", "r", "production", "v2")
        store.set_retention_policy("p", None, {"keep_last": 1})
    return path, sources


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("gc")
    path, sources = build_store(root)
    return SimpleNamespace(path=path, sources=sources, root=root)


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


def assert_restores(store: str, refs, sources: dict, dest):
    """Every version in `refs` restores to exactly its source tree (bytes, modes, mtimes)."""
    with Store.open(store) as s:
        for ref in refs:
            out = os.path.join(str(dest), ref.replace("/", "_"))
            report = s.restore(*ref.split("/"), out)
            assert not report.damaged, (ref, report.damaged)
            assert tree_snapshot(out) == tree_snapshot(sources[ref]), f"{ref} differs"


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


def test_dead_records_in_packs_above_the_threshold_stay_until_a_rebuild_brings_them_back(
        pristine, tmp_path):
    """With rewrite_below = 0 no pack is rewritten: the dead chunks leave the index but
    their bytes stay. rebuild-index indexes every record it finds, so they come back
    (unreferenced, harmless), and the next gc forgets them again."""
    path = copy_store(pristine.path, tmp_path / "store")
    toml = os.path.join(path, "ckptfs.toml")
    with open(toml) as f:
        settings = f.read()
    assert "\n[gc]\nrewrite_below = 0.5\n" in settings      # what `init` writes
    with open(toml, "w") as f:
        f.write(settings.replace("rewrite_below = 0.5", "rewrite_below = 0.0"))
    with Store.open(path) as s:
        first = s.collect_garbage()
        assert first.packs_rewritten == first.packs_dropped == [] and first.dead_bytes_left > 0
        chunks = s.stats()["chunks"]
        s.rebuild_index()
        assert s.stats()["chunks"] > chunks and s.verify().ok
        again = s.collect_garbage()
        assert again.freed_chunks > 0 and again.deletions == []
        assert s.stats()["chunks"] == chunks and s.verify().ok
    assert_restores(path, KEPT, pristine.sources, tmp_path / "out")


def test_rewrite_below_one_rewrites_only_packs_with_dead_records(pristine, tmp_path):
    """rewrite_below = 1: every pack with a dead record is rewritten once; a pack whose
    records are all live is left alone, so the next gc copies nothing."""
    path = copy_store(pristine.path, tmp_path / "store")
    toml = os.path.join(path, "ckptfs.toml")
    with open(toml) as f:
        settings = f.read()
    with open(toml, "w") as f:
        f.write(settings.replace("rewrite_below = 0.5", "rewrite_below = 1"))
    with Store.open(path) as s:
        first = s.collect_garbage()
        assert first.packs_rewritten and first.dead_bytes_left == 0
        again = s.collect_garbage()
        assert again.packs_rewritten == again.new_packs == [] and again.bytes_copied == 0
        assert s.verify().ok
    assert_restores(path, KEPT, pristine.sources, tmp_path / "out")


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


# -- concurrency ---------------------------------------------------------------------------------
@pytest.fixture
def small(tmp_path):
    """p/r/a and p/r/b (nothing in common but small files), keep_last=1 on p."""
    path = str(tmp_path / "store")
    with Store.init(path) as s:
        for name, seed in (("a", 1), ("b", 2)):
            src = make_checkpoint(tmp_path / "src" / name, step=100, seed=seed)
            s.import_directory(src, "p", "r", name)
        s.set_retention_policy("p", None, {"keep_last": 1})
    return SimpleNamespace(path=path, src=str(tmp_path / "src" / "a"), tmp=tmp_path)


def prepare_all(ingest, src: str) -> dict:
    """Prepare every file of `src` in `ingest` (as the mount does as files close); returns
    the token of each."""
    tokens = {}
    for dirpath, _dirs, files in os.walk(src):
        for name in files:
            full = os.path.join(dirpath, name)
            if os.path.islink(full):
                continue
            rel = os.path.relpath(full, src)
            assert ingest.prepare_file(rel, full, rel)
            tokens[rel] = rel
    return tokens


def test_an_import_that_deduplicated_against_reclaimed_chunks_starts_over(small):
    with Store.open(small.path) as s:
        ingest = s.begin_ingest("p", "r2", "copy-of-a")   # the same bytes as p/r/a
        tokens = prepare_all(ingest, small.src)
        assert ingest.stats.new_chunks == 0               # all deduplicated against a
        report = s.collect_garbage()                      # deletes a, reclaims its chunks
        assert [d.ref for d in report.deletions] == ["p/r/a"] and report.freed_chunks
        sealed = s.import_directory(small.src, "p", "r2", "copy-of-a", ingest=ingest,
                                    token_of=lambda e: tokens.get(e.path))
        assert sealed.retried and sealed.stats.new_chunks > 0
        assert s.verify().ok
    assert_restores(small.path, ["p/r2/copy-of-a"], {"p/r2/copy-of-a": small.src}, small.tmp / "out")


def test_leftover_packs_go_only_when_no_ingest_is_under_way(small):
    with Store.open(small.path) as s:
        dead = s.begin_ingest("p", "r", "c")         # dies after writing a pack
        prepare_all(dead, make_checkpoint(small.tmp / "src" / "c", step=7, seed=9))
        dead.release()                                # (its process is gone: no lock)
        leftovers = {w.pack_id for w in dead.writers}
        alive = s.begin_ingest("p", "r", "d")         # another one, under way
        kept = s.collect_garbage()
        assert set(kept.leftovers_kept) == leftovers and not kept.leftovers_removed
        assert kept.leftovers_reason == "an import or a mount is ingesting now"
        alive.abort()
        removed = s.collect_garbage()
        assert set(removed.leftovers_removed) == leftovers
        assert not any(os.path.exists(s.backend.path_of(pack_name(p))) for p in leftovers)
        assert s.verify().ok and not s.verify().leftover_packs


def test_chunks_a_version_sealed_during_the_gc_uses_are_kept(small):
    """A version sealed between gc's liveness snapshot and its index switch, using chunks
    the snapshot found dead (a's, deleted meanwhile): the switch keeps them, and the old
    pack that holds them."""
    with Store.open(small.path) as s:
        s.apply_retention()                           # a is deleted; its chunks are dead
        liveness = s._liveness()
        plan = s._plan_packs(liveness)
        assert plan.drop or plan.rewrite
        s.import_directory(small.src, "p", "r3", "again")   # dedups against a's chunks
        report = GcReport(False, "", s.config.gc.rewrite_below)
        s._reclaim(liveness, plan, report, None)
        assert report.revived > 0 and report.old_packs_kept
        assert s.verify().ok
    assert_restores(small.path, ["p/r3/again"], {"p/r3/again": small.src}, small.tmp / "out")


def test_a_reader_whose_pack_was_just_rewritten_looks_again(small):
    """The reader looks a chunk up; before it reads it, `ckptfs gc` in another process
    copies it to a new pack and deletes the old one."""
    with Store.open(small.path) as reader:
        reader.apply_retention()        # a goes; b shares a's optimizer.pt (same bytes)
        old = set(reader._plan_packs(reader._liveness()).rewrite)
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


# -- through a mount ---------------------------------------------------------------------------
def test_gc_while_mounted(pristine, mount, tmp_path):
    path = copy_store(pristine.path, tmp_path / "store")
    mnt = mount(path)
    run = os.path.join(mnt, "projects", "p", "r")
    # the kernel caches these for an hour: the daemon must tell it they are gone
    assert sorted(os.listdir(os.path.join(run, "v3"))) == sorted(os.listdir(pristine.sources["p/r/v3"]))
    assert os.path.isfile(os.path.join(run, "v3.json"))
    held = os.open(os.path.join(run, "v3", "own.bin"), os.O_RDONLY)   # opened, never read
    try:
        run_cli_checked("gc", path)
        wait_for(lambda: not os.path.exists(os.path.join(run, "v3")), "v3 to leave the mount")
        assert sorted(os.listdir(run)) == ["latest", "production", "run.json", "v1", "v1.json",
                                           "v2", "v2.json", "v4", "v4.json"]
        with pytest.raises(OSError) as failed:
            os.pread(held, 4096, 0)                  # its chunks were reclaimed
        assert failed.value.errno == errno.EIO
    finally:
        os.close(held)
    deleted = os.path.join(mnt, ".ckptfs", "deleted", "p", "r")
    assert sorted(os.listdir(deleted)) == ["v0.json", "v3.json"]
    grep = sh(f"grep -c '\"sha256\"' {deleted}/v3.json && grep '\"reason\"' {deleted}/v3.json")
    assert grep.returncode == 0
    assert grep.stdout.splitlines()[1].strip() == '"reason": "not among the newest 1",'
    tomb = json.loads(sh(f"cat {deleted}/v0.json").stdout)
    assert tomb["deleted_at"] and tomb["deletion"]["policy"]["scope"] == "p"
    assert {f["path"] for f in tomb["files"]} >= {"own.bin", "model.safetensors"}
    with open(os.path.join(run, "run.json")) as f:
        versions = {v["version"]: v for v in json.load(f)["versions"]}
    assert list(versions) == RUN
    assert versions["v0"]["deleted"] is True and versions["v0"]["deleted_at"] == tomb["deleted_at"]
    assert versions["v3"]["deleted"] is True and "deleted" not in versions["v4"]
    for ref in KEPT:      # the mount reads the kept versions, some now in new packs
        rel = ref.split("/", 1)[1]
        check = sh(f"cd {pristine.sources[ref]} && sha256sum model.safetensors own.bin "
                   f"optimizer.pt > {tmp_path}/sums && cd {mnt}/projects/p/{rel} && "
                   f"sha256sum -c {tmp_path}/sums")
        assert check.returncode == 0, check.stdout + check.stderr
    # The deleted version leaves the run's working view too; its name is never reused:
    # a new v3 written there is sealed as v3~2.
    assert "v3" not in os.listdir(f"{mnt}/inbox/p/r")
    remade = sh(f"mkdir -p {mnt}/inbox/p/r/v3 && cp -r {pristine.sources['p/r/v3']}/. "
                f"{mnt}/inbox/p/r/v3/ && touch {mnt}/inbox/p/r/v3/.seal")
    assert remade.returncode == 0, remade.stderr
    wait_for(lambda: os.path.isdir(os.path.join(run, "v3~2")), "v3 written again to be sealed")
