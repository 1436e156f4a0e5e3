"""Ingest ahead of the seal: files are prepared as their writers close them, and the seal
takes a prepared file only while it is still exactly what was prepared.

Real mounts driven by real tools; the figures come from MOUNT/.ckptfs/stats.json
(`files_prepared`, `files_reused_at_seal`) and the store itself.
"""
import os

from tests.helpers.cli import run_cli_checked
from tests.helpers.samples import make_checkpoint
from tests.helpers.inbox import (REF, assert_same_files, copied_in, empty_version, read, sh,
                                 stats, stats_once_counted, verify_ok, wait_sealed)
from tests.helpers.stores import new_store
from tests.helpers.waiting import wait_for

from ckptfs.store import Store
from ckptfs.store.backend import LocalBackend
from ckptfs.store.pack import list_pack_ids

FILES_IN_SOURCE = 6  # regular files of samples.make_checkpoint (the symlink is not one)


def prepared(mnt: str) -> int:
    return stats(mnt)["files_prepared"]


def pack_count(store: str) -> int:
    return len(list_pack_ids(LocalBackend(store)))


def copied_and_prepared(tmp_path, mount, copy: str) -> tuple[str, str]:
    """A new store mounted with a long quiet period, `copy` (a shell command, {mnt} in
    it) run, and every file of the sample checkpoint prepared: (store, mount point)."""
    store, mnt = copied_in(tmp_path, mount, "600", copy)
    wait_for(lambda: prepared(mnt) == FILES_IN_SOURCE, "every file to be prepared", 20)
    return store, mnt


def seal_now(mnt: str, ref: str = REF) -> str:
    open(os.path.join(mnt, "inbox", ref, ".seal"), "w").close()
    return wait_sealed(mnt, ref)


def test_files_are_prepared_as_they_close_and_the_seal_reuses_them(source, tmp_path, mount):
    store, mnt = copied_and_prepared(
        tmp_path, mount, f"mkdir -p {{mnt}}/inbox/p/r && cp -a {source} {{mnt}}/inbox/p/r/v1")
    assert pack_count(store) >= 1  # the chunks are in a pack already...
    with Store.open(store) as s:
        assert s.version_record("p", "r", "v1") is None  # ...but nothing is committed
    sealed = seal_now(mnt)
    assert stats_once_counted(mnt, 1)["files_reused_at_seal"] == FILES_IN_SOURCE
    assert_same_files(sealed, source)
    assert sh(f"cd {source} && find . -type f -exec sha256sum {{}} + > {tmp_path}/sums && "
              f"cd {sealed} && sha256sum --quiet -c {tmp_path}/sums").returncode == 0
    verify_ok(store)


def test_a_file_changed_after_it_was_prepared_is_sealed_with_its_new_bytes(tmp_path, mount):
    """Same size and the old mtime put back (as `cp -a` or `rsync` would): only the
    daemon's write counter can tell. A changed file is prepared again once closed."""
    store, mnt, version = empty_version(tmp_path, mount, "600")
    old, new = os.urandom(3 << 20), os.urandom(3 << 20)
    for name in ("rewritten.bin", "truncated.bin", "kept.bin"):
        with open(f"{version}/{name}", "wb") as f:
            f.write(old)
    wait_for(lambda: prepared(mnt) == 3, "the three files to be prepared", 20)
    mtime = os.stat(f"{version}/rewritten.bin").st_mtime_ns
    with open(f"{version}/rewritten.bin", "r+b") as f:  # in place, no truncation
        f.write(new)
    os.utime(f"{version}/rewritten.bin", ns=(mtime, mtime))
    assert sh(f"truncate -s 1000 {version}/truncated.bin").returncode == 0  # setattr(size)
    os.rename(f"{version}/kept.bin", f"{version}/renamed.bin")  # content unchanged
    wait_for(lambda: prepared(mnt) == 5, "the two changed files to be prepared again", 20)
    sealed = seal_now(mnt)
    assert read(f"{sealed}/rewritten.bin") == new
    assert os.stat(f"{sealed}/rewritten.bin").st_mtime_ns == mtime
    assert read(f"{sealed}/truncated.bin") == old[:1000]
    assert read(f"{sealed}/renamed.bin") == old
    assert stats_once_counted(mnt, 1)["files_reused_at_seal"] == 3
    verify_ok(store)


def test_rsync_temp_files_renamed_into_place_are_reused(source, tmp_path, mount):
    store, mnt = copied_and_prepared(
        tmp_path, mount, f"mkdir -p {{mnt}}/inbox/p/r/v1 && rsync -a {source}/ {{mnt}}/inbox/p/r/v1/")
    sealed = seal_now(mnt)
    assert stats_once_counted(mnt, 1)["files_reused_at_seal"] == FILES_IN_SOURCE
    assert_same_files(sealed, source)
    verify_ok(store)


def test_a_checkpoint_removed_before_its_seal_is_sealed_from_what_was_prepared(
        source, tmp_path, mount):
    """A job that rotates its checkpoints faster than the quiet period (rmtree of one not
    sealed yet) loses none: it is sealed first (reusing what was prepared), then hidden."""
    store, mnt = copied_and_prepared(
        tmp_path, mount, f"mkdir -p {{mnt}}/inbox/p/r && cp -r {source} {{mnt}}/inbox/p/r/v1")
    assert pack_count(store) >= 1
    assert sh(f"rm -r {mnt}/inbox/p/r/v1").returncode == 0
    assert os.listdir(f"{mnt}/inbox/p/r") == []
    wait_for(lambda: os.path.isdir(f"{mnt}/projects/p/r/v1"), "the removed v1 to be sealed", 15)
    assert stats_once_counted(mnt, 1)["files_reused_at_seal"] == FILES_IN_SOURCE
    assert_same_files(f"{mnt}/projects/p/r/v1", source, mtime_unit=None)
    assert os.listdir(f"{mnt}/inbox/p/r") == []  # still hidden from the working view
    wait_for(lambda: not os.listdir(os.path.join(store, "spool", "removed", "p", "r")),
             "the removed copy to go", 10)
    verify_ok(store)


def test_an_unmount_deletes_what_was_prepared_and_the_next_mount_seals_it(
        source, tmp_path, mount):
    store, mnt = copied_and_prepared(
        tmp_path, mount, f"mkdir -p {{mnt}}/inbox/p/r && cp -a {source} {{mnt}}/inbox/p/r/v1")
    assert sh(f"fusermount3 -u {mnt}").returncode == 0
    marker = os.path.join(store, "spool", "daemon.running")
    wait_for(lambda: not os.path.exists(marker), "the daemon to finish", 15)
    assert pack_count(store) == 0
    assert not os.path.exists(os.path.join(store, "spool", "staged-packs"))
    mnt = mount(store, "--seal-after", "0.5")
    assert_same_files(wait_sealed(mnt), source)
    verify_ok(store)


def test_the_next_version_of_a_run_is_prepared_after_the_earlier_one_is_sealed(
        tmp_path, mount):
    """v2 waits for v1's seal, so its tensors are delta-coded against v1, as they are when
    each is imported in turn."""
    v1 = make_checkpoint(tmp_path / "src" / "v1", step=100, scale=8)
    v2 = make_checkpoint(tmp_path / "src" / "v2", step=200, scale=8)
    store = new_store(tmp_path)
    mnt = mount(store, "--seal-after", "600")
    os.makedirs(f"{mnt}/inbox/p/r")
    assert sh(f"cp -r {v1} {mnt}/inbox/p/r/v1 && cp -r {v2} {mnt}/inbox/p/r/v2").returncode == 0
    wait_for(lambda: prepared(mnt) == FILES_IN_SOURCE, "v1's files to be prepared", 20)
    assert prepared(mnt) == FILES_IN_SOURCE  # and none of v2's
    seal_now(mnt, "p/r/v1")
    wait_for(lambda: prepared(mnt) == 2 * FILES_IN_SOURCE, "then v2's files", 20)
    sealed = seal_now(mnt, "p/r/v2")
    assert stats_once_counted(mnt, 2)["files_reused_at_seal"] == 2 * FILES_IN_SOURCE
    assert_same_files(sealed, v2, mtime_unit=None)
    with Store.open(store) as s:
        record = s.version_record("p", "r", "v2")
    assert record["delta_parent"] == "p/r/v1"
    reference = new_store(tmp_path, "reference")
    for ref, src in (("p/r/v1", v1), ("p/r/v2", v2)):
        run_cli_checked("import", reference, src, ref)
    with Store.open(reference) as s:
        expected = s.version_record("p", "r", "v2")["new_stored_bytes"]
    assert record["new_stored_bytes"] <= expected * 1.02  # as small as an import in turn
    verify_ok(store)


def test_a_copy_of_an_unsealed_version_in_another_run_is_not_stored_twice(
        source, tmp_path, mount):
    """Both copied before either is sealed: the second waits for the first's seal, then
    finds every chunk in the index."""
    store = new_store(tmp_path)
    mnt = mount(store, "--seal-after", "600")
    os.makedirs(f"{mnt}/inbox/p/a")
    os.makedirs(f"{mnt}/inbox/p/b")
    assert sh(f"cp -r {source} {mnt}/inbox/p/a/v1 && cp -r {source} {mnt}/inbox/p/b/v1").returncode == 0
    wait_for(lambda: prepared(mnt) == FILES_IN_SOURCE, "the first version to be prepared", 20)
    seal_now(mnt, "p/a/v1")
    wait_for(lambda: prepared(mnt) == 2 * FILES_IN_SOURCE, "then the second", 20)
    seal_now(mnt, "p/b/v1")
    with Store.open(store) as s:
        first, second = s.version_record("p", "a", "v1"), s.version_record("p", "b", "v1")
    packs = sum(os.path.getsize(os.path.join(d, name))
                for d, _, names in os.walk(os.path.join(store, "packs")) for name in names)
    assert first["new_stored_bytes"] > 500_000
    assert second["new_stored_bytes"] < 5_000  # its manifest, nothing else
    assert packs < first["new_stored_bytes"] + 50_000  # no duplicate chunks in the packs
    verify_ok(store)
