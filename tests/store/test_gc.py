"""Garbage collection on a real store, in-process: dead records above the threshold, the
rewrite threshold, an import racing a gc, leftover packs, and chunks a version sealed
during the gc uses. Through the CLI: tests/cli/test_gc.py."""
import os

from ckptfs.store import Store
from ckptfs.store.gc import GcReport
from ckptfs.store.pack import pack_name
from tests.helpers import gc as helpers
from tests.helpers.gc import KEPT, assert_restores
from tests.helpers.samples import make_checkpoint
from tests.helpers.stores import copy_store

pristine = helpers.pristine  # a fixture (tests/helpers/gc.py)
small = helpers.small  # a fixture (tests/helpers/gc.py)


def test_dead_records_in_packs_above_the_threshold_stay_indexed_until_their_pack_goes(
        pristine, tmp_path):
    """With rewrite_below = 0 no pack is rewritten: the dead records of the packs that
    stay also stay in the index (no other index could learn from the journal which they
    are), so rebuild-index gives the same index. Once their pack is rewritten, they go."""
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
        assert first.freed_chunks == 0
        chunks = s.stats()["chunks"]
        s.rebuild_index()
        assert s.stats()["chunks"] == chunks and s.verify().ok
        s.config.gc.rewrite_below = 0.5
        again = s.collect_garbage()
        assert again.freed_chunks > 0 and again.deletions == [] and again.packs_rewritten
        assert s.stats()["chunks"] == chunks - again.freed_chunks and s.verify().ok
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
        leftovers = set(dead.sink.pack_ids)
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
        liveness = s.collector.liveness()
        plan = s.collector.plan_packs(liveness)
        assert plan.drop or plan.rewrite
        s.import_directory(small.src, "p", "r3", "again")   # dedups against a's chunks
        report = GcReport(False, "", s.config.gc.rewrite_below)
        s.collector.reclaim(liveness, plan, report, None)
        assert report.revived > 0 and report.old_packs_kept
        assert s.verify().ok
    assert_restores(small.path, ["p/r3/again"], {"p/r3/again": small.src}, small.tmp / "out")
