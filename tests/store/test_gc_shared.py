"""Garbage collection on a shared store: several machines, each a `Store` with its own
index over one shared backend (tests/helpers/shared.py), no lock service. The switch is
a journal entry every index applies alike; retired packs wait for the grace period;
leftovers go by age; an ingest racing a gc on another machine starts over."""
import os
import subprocess
import sys
import time
from datetime import datetime

import pytest

from ckptfs.cli.retention import print_gc_report
from ckptfs.store import Store
from ckptfs.store.errors import StoreFormatError
from ckptfs.store.gc import CRASH_ENV, CRASH_EXIT, GcReport
from ckptfs.store.pack import list_pack_ids, pack_name
from tests.helpers.gc import make_version
from tests.helpers.samples import make_checkpoint, tree_snapshot
from tests.helpers.shared import open_machine, shared_store
from tests.helpers.waiting import wait_for

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def set_grace(root: str, seconds: float) -> None:
    """gc.grace_seconds in the shared store's ckptfs.toml (machines opened later read it)."""
    toml = os.path.join(root, "ckptfs.toml")
    with open(toml) as f:
        settings = f.read()
    with open(toml, "w") as f:
        f.write(settings.replace("[gc]\n", f"[gc]\ngrace_seconds = {seconds}\n"))


class World:
    """A shared store at `root` with p/r/v0..v2 sealed by machine a (keep_last=1 on p:
    gc deletes v0 and v1; v2's tensors are delta-coded against v0's, so v0's pack holds
    live bases and is rewritten), and the machines opened on it."""

    def __init__(self, tmp_path, grace: float):
        self.tmp = tmp_path
        self.root = str(tmp_path / "bucket")
        shared_store(self.root)
        set_grace(self.root, grace)
        self.machines = []
        self.sources = {}
        a = self.machine("a")
        for i, v in enumerate(("v0", "v1", "v2")):
            src = make_version(tmp_path / "src" / v, 100 + i, 384 if v == "v0" else 96)
            a.import_directory(src, "p", "r", v)
            self.sources[v] = src
        a.set_retention_policy("p", None, {"keep_last": 1})

    def machine(self, name: str):
        store = open_machine(self.root, str(self.tmp / name))
        self.machines.append(store)
        return store

    def close(self):
        for store in self.machines:
            store.close()


@pytest.fixture
def world(tmp_path):
    made = []

    def make(grace: float = 0):
        made.append(World(tmp_path, grace))
        return made[-1]
    yield make
    for w in made:
        w.close()


def locations(store) -> dict:
    """What an index says about where records are (and its counters of them). Not which
    retired packs it still lists: that is which ones its own gcs deleted."""
    dump = store.index.dump()
    counters = {k: dump["meta"].get(k) for k in (b"chunk_count", b"chunk_raw_bytes",
                                                 b"chunk_stored_bytes")}
    return {"chunks": dump["chunks"], "manifests": dump["manifests"], "meta": counters}


def rewrites(store) -> list[dict]:
    return [e for e in store.journal_entries() if e["type"] == "packs.rewritten"]


def assert_reads(store, version: str, source: str, out):
    store.restore("p", "r", version, str(out))
    assert tree_snapshot(str(out)) == tree_snapshot(source)


def test_the_switch_is_journaled_and_another_index_applying_it_ends_equal(world, tmp_path):
    w = world(grace=0)
    a, b = w.machines[0], w.machine("b")
    report = a.collect_garbage()
    assert [d.ref for d in report.deletions] == ["p/r/v0", "p/r/v1"]
    [entry] = rewrites(a)
    assert sorted(entry["retired"]) == sorted(report.packs_rewritten + report.packs_dropped)
    assert entry["packs"] == report.new_packs and report.new_packs
    assert report.freed_chunks > 0 and report.retired_deleted == sorted(entry["retired"])
    assert not set(entry["retired"]) & set(list_pack_ids(a.backend))
    b.committer.catch_up_if_behind()
    assert locations(b) == locations(a)
    assert b.verify().ok and a.verify().ok
    assert_reads(b, "v2", w.sources["v2"], tmp_path / "out")


@pytest.mark.parametrize("grace", [0, 3600], ids=["retired-deleted", "retired-kept"])
def test_rebuild_and_a_fresh_cache_after_gc_give_the_same_locations(world, tmp_path, grace):
    """With the retired packs still there (grace) a rebuild sees old and new copies side
    by side; without them a fresh cache replays `version.sealed` entries naming packs
    that are gone. Both end where the gc's own index is."""
    w = world(grace=grace)
    a = w.machines[0]
    report = a.collect_garbage()
    assert (report.retired_waiting != []) == bool(grace)
    expected = locations(a)
    fresh = w.machine("fresh")
    assert locations(fresh) == expected
    assert fresh.verify().ok
    assert_reads(fresh, "v2", w.sources["v2"], tmp_path / "fresh-out")
    a.rebuild_index()
    assert locations(a) == expected
    assert [t["record"]["version"] for t in a.tombstones()] == ["v0", "v1"]


def test_a_retired_pack_outlives_the_grace_period_for_stale_readers(world, tmp_path):
    w = world(grace=3600)
    a, b = w.machines[0], w.machine("b")    # b's index: from before the gc
    report = a.collect_garbage()
    [entry] = rewrites(a)
    retired = sorted(entry["retired"])
    assert report.retired_waiting == retired and report.retired_deleted == []
    assert set(retired) <= set(list_pack_ids(a.backend))
    b.packs.close()                          # no descriptor of an old pack kept open
    assert_reads(b, "v2", w.sources["v2"], tmp_path / "stale")   # its old packs are there
    assert b.committer.applied_seq() < entry["seq"]

    again = a.collect_garbage()              # within the grace period: nothing goes
    assert again.retired_deleted == [] and set(retired) <= set(list_pack_ids(a.backend))

    a.config.gc.grace_seconds = 1            # the entry's time is soon older than that
    retired_at = datetime.fromisoformat(entry["time"]).timestamp()
    wait_for(lambda: time.time() > retired_at + 1, "the retiring entry to be 1 s old")
    done = a.collect_garbage()
    assert done.retired_deleted == retired and done.retired_waiting == []
    assert not set(retired) & set(list_pack_ids(a.backend))

    b.packs.close()
    b.reader.clear_cache()
    assert b.committer.applied_seq() < entry["seq"]       # still stale: a read finds a
    assert_reads(b, "v2", w.sources["v2"], tmp_path / "caught-up")  # pack gone, catches up
    assert b.committer.applied_seq() >= entry["seq"]


def test_dry_run_and_report_say_what_waits_for_the_grace_period(world, capsys):
    w = world(grace=3600)
    a = w.machines[0]
    dry = a.collect_garbage(dry_run=True)
    assert dry.retired_waiting == sorted(dry.packs_rewritten + dry.packs_dropped)
    assert dry.delete_after and dry.grace_seconds == 3600
    report = a.collect_garbage()
    assert report.delete_after and report.retired_waiting
    print_gc_report(report)
    out = capsys.readouterr().out
    assert f"{len(report.retired_waiting)} pack(s) retired, deleted after " \
           f"{report.delete_after}" in out
    later = a.collect_garbage(dry_run=True)
    assert later.retired_waiting == report.retired_waiting and later.freed_chunks == 0


def test_leftover_packs_go_only_once_older_than_the_grace_period(world):
    w = world(grace=3600)
    a, b = w.machines[0], w.machine("b")
    dead = b.begin_ingest("p", "r", "never")     # a writer on b that died mid-import
    ingest_src = make_checkpoint(w.tmp / "src" / "never", step=7, seed=9)
    assert dead.prepare_file("model.safetensors", os.path.join(ingest_src, "model.safetensors"),
                             "model.safetensors")
    dead.sink.close()
    dead.release()
    leftovers = set(dead.sink.pack_ids)
    assert leftovers
    kept = a.collect_garbage()
    assert set(kept.leftovers_kept) == leftovers and not kept.leftovers_removed
    assert "younger than the grace period" in kept.leftovers_reason
    a.config.gc.grace_seconds = 1
    written = max(os.path.getmtime(a.backend.path_of(pack_name(p))) for p in leftovers)
    wait_for(lambda: time.time() > written + 1, "the leftover packs to be 1 s old")
    removed = a.collect_garbage()
    assert set(removed.leftovers_removed) == leftovers and not removed.leftovers_kept
    assert not leftovers & set(list_pack_ids(a.backend))
    assert not [i.name for i in a.backend.list("packs/") if i.name.endswith(".idx")
                and int(i.name.rsplit("/", 1)[1][:-4], 16) in leftovers]


def prepare_all(ingest, src: str) -> dict:
    tokens = {}
    for dirpath, _dirs, files in os.walk(src):
        for name in files:
            full = os.path.join(dirpath, name)
            if not os.path.islink(full):
                rel = os.path.relpath(full, src)
                assert ingest.prepare_file(rel, full, rel)
                tokens[rel] = rel
    return tokens


def test_an_ingest_on_another_machine_racing_gc_starts_over(world, tmp_path):
    """b prepares a copy of v1 (every chunk deduplicated against v1's, in a pack gc
    retires); a deletes v1 and gcs; b's commit catches up, finds the chunks gone
    (ChunksReclaimedError inside), and import_directory starts over."""
    w = world(grace=0)
    a, b = w.machines[0], w.machine("b")
    ingest = b.begin_ingest("p", "copy", "of-v1")
    tokens = prepare_all(ingest, w.sources["v1"])
    assert ingest.stats.new_chunks == 0
    report = a.collect_garbage()
    assert "p/r/v1" in [d.ref for d in report.deletions] and report.retired_deleted
    sealed = b.import_directory(w.sources["v1"], "p", "copy", "of-v1", ingest=ingest,
                                token_of=lambda e: tokens.get(e.path))
    assert sealed.retried and sealed.stats.new_chunks > 0
    assert b.verify().ok
    a.committer.catch_up_if_behind()
    for machine, out in ((a, "out-a"), (b, "out-b")):
        machine.restore("p", "copy", "of-v1", str(tmp_path / out))
        assert tree_snapshot(str(tmp_path / out)) == tree_snapshot(w.sources["v1"])


def test_a_version_another_machine_seals_during_the_gc_keeps_its_chunks(world, tmp_path):
    """b seals a copy of v1 after a's gc found v1's chunks dead and before its switch:
    the switch, checked again on a's index caught up with b's entry, keeps them (and
    the pack that holds them)."""
    w = world(grace=0)
    a, b = w.machines[0], w.machine("b")
    a.apply_retention()                       # v0, v1 deleted: v1's own chunks are dead
    liveness = a.collector.liveness()
    plan = a.collector.plan_packs(liveness)
    b.committer.catch_up_if_behind()
    b.import_directory(w.sources["v1"], "p", "copy", "of-v1")   # dedups against v1's
    report = GcReport(False, "", a.config.gc.rewrite_below)
    a.collector.reclaim(liveness, plan, report, None)
    assert report.revived > 0 and report.old_packs_kept
    retired = {p for entry in rewrites(a) for p in entry["retired"]}
    assert not set(report.old_packs_kept) & retired
    assert set(report.old_packs_kept) <= set(list_pack_ids(a.backend))
    b.committer.catch_up_if_behind()
    assert locations(b) == locations(a) and a.verify().ok and b.verify().ok
    b.restore("p", "copy", "of-v1", str(tmp_path / "out"))
    assert tree_snapshot(str(tmp_path / "out")) == tree_snapshot(w.sources["v1"])


def test_a_gc_whose_view_another_gc_changed_drops_its_switch(world, tmp_path):
    w = world(grace=0)
    a, b = w.machines[0], w.machine("b")
    a.apply_retention()
    b.committer.catch_up_if_behind()
    liveness = b.collector.liveness()          # b's gc has looked, not switched yet
    plan = b.collector.plan_packs(liveness)
    assert plan.old
    first = a.collect_garbage()                # a's gc switches first
    assert first.retired_deleted
    late = GcReport(False, "", b.config.gc.rewrite_below)
    b.collector.reclaim(liveness, plan, late, None)
    assert late.superseded and late.new_packs == [] and late.retired_deleted == []
    assert len(rewrites(b)) == 1
    packs = set(list_pack_ids(a.backend))
    with a.index.read() as txn:
        assert packs == a.index.referenced_pack_ids(txn)   # b's copies went
    assert a.verify().ok and b.verify().ok
    assert locations(b) == locations(a)
    assert_reads(b, "v2", w.sources["v2"], tmp_path / "out")


CRASHING_GC = """
import sys
from tests.helpers.shared import open_machine
open_machine(sys.argv[1], sys.argv[2]).collect_garbage()
"""


@pytest.mark.parametrize("point", ["after-deletions", "after-new-packs", "after-index-switch",
                                   "mid-old-pack-removal"])
def test_a_gc_killed_at_each_step_on_a_shared_store_is_finished_by_the_next(
        world, tmp_path, point):
    w = world(grace=0)
    a, b = w.machines[0], w.machine("b")
    proc = subprocess.run([sys.executable, "-c", CRASHING_GC, w.root, str(tmp_path / "a")],
                          env={**os.environ, CRASH_ENV: point, "PYTHONPATH": os.pathsep.join(
                              [os.path.join(REPO, "src"), REPO])},
                          cwd=REPO, capture_output=True, timeout=300)
    assert proc.returncode == CRASH_EXIT, proc.stderr.decode()
    for machine in (a, b):       # sound at once: each index catches up and verifies
        machine.committer.catch_up_if_behind()
        assert machine.verify().ok
    assert len(rewrites(a)) == (point in ("after-index-switch", "mid-old-pack-removal"))
    a.collect_garbage()
    b.committer.catch_up_if_behind()
    assert locations(b) == locations(a)
    with a.index.read() as txn:
        referenced = a.index.referenced_pack_ids(txn)
        assert a.index.retired_packs(txn) == {}
    assert set(list_pack_ids(a.backend)) == referenced    # no copies, no old packs left
    assert a.verify().ok and b.verify().ok
    assert_reads(b, "v2", w.sources["v2"], tmp_path / "out")


def test_the_grace_period_is_a_day_on_a_shared_store_none_locally_and_checked(tmp_path):
    root = str(tmp_path / "bucket")
    shared_store(root)
    local = Store.open(root)                 # the same directory as a local store
    shared = open_machine(root, str(tmp_path / "m"))
    try:
        assert local.collector.grace == 0 and shared.collector.grace == 24 * 3600
    finally:
        local.close()
        shared.close()
    set_grace(root, "'a day'")
    with pytest.raises(StoreFormatError, match=r"gc\.grace_seconds must be a number from 0"):
        open_machine(root, str(tmp_path / "m"))
