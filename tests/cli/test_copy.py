"""`ckptfs copy SRC DST [PATTERN]`: real stores on disk, the real `ckptfs` command.

One signed source store (module scope) holds p/r/v1, nlp/run/step-100 -> step-200 (HF
checkpoints with metrics, a ckptfs.json, the alias `production` on step-200) and a run
p/scratch whose first version was deleted; each test copies into stores of its own.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest

# Imported lazily by `ckptfs copy`: the forked child of `cli_as_user`, as nobody, cannot
# read Python's own files under /root, so they are imported here first.
import ckptfs.cli.copy  # noqa: F401
import ckptfs.meta.copy  # noqa: F401
from ckptfs.store import Store
from tests.helpers.access import NOBODY, cli_as_user, public_dir, refusals
from tests.helpers.cli import run_cli_checked, run_cli_many
from tests.helpers.encryption import CONFIG_TEXT, env_with, grep_packs
from tests.helpers.export import archive_sample_versions
from tests.helpers.recovery import flip_payload_byte, two_versions
from tests.helpers.samples import make_checkpoint, tree_snapshot
from tests.helpers.signing import check_signature, public_key_of

# What a copy seals anew in DST; everything else of a sidecar is SRC's.
SEALED_ANEW = ("sealed_at", "signature", "storage", "imported_from")


def ck(*args, rc=0, **kw):
    return run_cli_checked(*args, rc=rc, **kw)


def out(proc) -> str:
    return proc.stdout.decode()


def err(proc) -> str:
    return proc.stderr.decode(errors="replace")


def show(store, ref) -> dict:
    return json.loads(out(ck("show", store, ref)))


def stats(store) -> dict:
    return json.loads(out(ck("stats", "--json", store)))


def new_store(path, *init_options) -> str:
    ck("init", *init_options, path)
    return str(path)


def versions_in(store) -> list[str]:
    with Store.open(store) as s:
        return sorted(f"{v['project']}/{v['run']}/{v['version']}" for v in s.all_versions())


def spool_copy_dirs(store) -> list[str]:
    return [n for n in os.listdir(os.path.join(store, "spool")) if n.startswith("copy-")]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("copy-source")
    src = SimpleNamespace(root=root, store=str(root / "store"), key=str(root / "sign.pem"))
    with Store.init(src.store) as store:
        store.generate_signing_key(src.key)
        archive_sample_versions(store, src)  # the versions of test_export.py's source
        for name, step in (("tmp1", 1), ("tmp2", 2)):
            store.import_directory(make_checkpoint(root / "src" / name, step=step),
                                   "p", "scratch", name)
        store.delete_version("p", "scratch", "tmp1", "scratch")
    return src


LIVE = ["nlp/run/step-100", "nlp/run/step-200", "p/r/v1", "p/scratch/tmp2"]


def test_copy_all_copies_live_versions_parents_first_with_metadata_and_aliases(source, tmp_path):
    dst = new_store(tmp_path / "dst")
    proc = ck("copy", source.store, dst)
    lines = out(proc).splitlines()
    # In the order SRC sealed them, the deleted p/scratch/tmp1 left out.
    assert [line.split(" (")[0] for line in lines[:-1]] == [
        "copied: p/r/v1", "copied: nlp/run/step-100", "copied: nlp/run/step-200",
        "copied: p/scratch/tmp2"]
    assert "alias production set" in lines[2]
    assert lines[-1].startswith("copy: 4 copied, 0 already there, 0 failed; ")
    assert "newly stored in DST" in lines[-1]
    assert versions_in(dst) == LIVE

    for ref in ("nlp/run/step-100", "nlp/run/step-200", "p/r/v1"):
        original, copied = show(source.store, ref), show(dst, ref)
        assert copied["digest"] == original["digest"]
        for f in original["files"] + copied["files"]:
            del f["stored_bytes"]  # what each store added, not the file
        assert {k: v for k, v in copied.items() if k not in SEALED_ANEW} == \
            {k: v for k, v in original.items() if k not in SEALED_ANEW}, ref
        origin = copied["imported_from"]
        assert (origin["store"], origin["via"], origin["sealed_at"], origin["digest"]) == \
            (source.store, "copy", original["sealed_at"], original["digest"])
    # Lineage resolves in DST: step-200's parent is DST's step-100.
    lineage = out(ck("lineage", dst, "nlp/run/step-200"))
    assert "nlp/run/step-100" in lineage
    assert show(dst, "nlp/run/step-200")["lineage"]["parent"]["version"] == "step-100"
    assert show(dst, "nlp/run/step-100")["tags"] == ["candidate"]
    assert out(ck("tags", dst, "nlp/run")).count("production -> step-200") == 1
    # The files themselves, byte for byte, with modes, mtimes and symlinks.
    ck("get", dst, "p/r/v1", tmp_path / "got")
    assert tree_snapshot(tmp_path / "got") == tree_snapshot(source.v1)
    assert spool_copy_dirs(dst) == []
    ck("verify", dst)


def test_a_signed_version_stays_verifiable_in_dst(source, tmp_path):
    dst = new_store(tmp_path / "dst")
    proc = ck("copy", source.store, dst, "nlp/run/step-200")
    key_id = show(source.store, "nlp/run/step-200")["signature"]["key_id"]
    assert f"signature by SRC's key {key_id} verified" in out(proc)
    copied = show(dst, "nlp/run/step-200")
    origin = copied["imported_from"]
    assert origin["checks"] == {"signature": "valid", "signature_key_id": key_id}
    # Checked here with SRC's public key alone, over the name and DST's own digest.
    assert check_signature(origin["signature"], public_key_of(source.key + ".pub"),
                           "nlp/run/step-200", copied["digest"])
    # DST signs nothing itself: the version keeps SRC's signature, which DST's verify
    # checks with SRC's public key (DST has never journaled that key).
    assert copied["signature"] == origin["signature"]
    report = out(ck("verify", "--signatures", "--public-key", source.key + ".pub", dst))
    assert "1 signed and valid" in report, report
    assert "1 by an unknown key" in out(ck("verify", "--signatures", dst, rc=None))


def test_a_second_copy_is_a_no_op(source, tmp_path):
    dst = new_store(tmp_path / "dst")
    ck("copy", source.store, dst)
    before = stats(dst)
    with Store.open(dst) as s:
        seq = s.applied_seq()
    proc = ck("copy", source.store, dst)
    assert out(proc).splitlines()[:-1] == [f"already there: {ref}" for ref in
                                           ["p/r/v1", "nlp/run/step-100", "nlp/run/step-200",
                                            "p/scratch/tmp2"]]
    assert out(proc).splitlines()[-1].startswith(
        "copy: 0 copied, 4 already there, 0 failed; 0 B read, 0 B newly stored in DST")
    assert stats(dst) == before
    with Store.open(dst) as s:
        assert s.applied_seq() == seq  # nothing journaled


def test_a_pattern_selects_and_dry_run_copies_nothing(source, tmp_path):
    dst = new_store(tmp_path / "dst")
    dry = ck("copy", "--dry-run", source.store, dst, "nlp/*/step-2*")
    assert out(dry).splitlines() == [
        "would copy: nlp/run/step-200 (9 files, "
        f"{show(source.store, 'nlp/run/step-200')['storage']['logical_bytes']} bytes)",
        "dry run: 1 to copy, 0 already there, 0 that would fail; nothing was copied"]
    assert versions_in(dst) == []

    ck("copy", source.store, dst, "nlp/*/step-2*")
    assert versions_in(dst) == ["nlp/run/step-200"]
    # Its parent was not copied: kept as given, and said so.
    assert "lineage.parent nlp/run/step-100 is not in this store (kept as given)" in \
        show(dst, "nlp/run/step-200")["warnings"]
    proc = ck("copy", source.store, dst, "nlp")
    assert out(proc).splitlines()[:2] == ["copied: nlp/run/step-100 (signature by SRC's key "
                                          f"{show(source.store, 'p/r/v1')['signature']['key_id']}"
                                          " verified)",
                                          "already there: nlp/run/step-200"]


def test_dedup_against_dst_stores_shared_chunks_once(tmp_path):
    src = new_store(tmp_path / "src")
    first = make_checkpoint(tmp_path / "c" / "v1", step=1, scale=8)
    second = make_checkpoint(tmp_path / "c" / "v2", step=2, scale=8)  # shares most chunks
    ck("import", src, first, "p/r/v1")
    ck("import", src, second, "p/r/v2")
    dst = new_store(tmp_path / "dst")
    ck("copy", src, dst, "p/r/v1")
    one = stats(dst)["stored_bytes"]
    proc = ck("copy", src, dst)
    both = stats(dst)["stored_bytes"]
    # The second version adds about what it added in SRC, far less than a version.
    assert both - one < 0.5 * one
    assert abs(both - stats(src)["stored_bytes"]) < 0.05 * both
    assert "copy: 1 copied, 1 already there, 0 failed; " in out(proc)


def test_a_name_taken_by_other_content_fails_that_version_only(source, tmp_path):
    dst = new_store(tmp_path / "dst")
    ck("import", dst, make_checkpoint(tmp_path / "other", step=7), "p/r/v1")
    ck("import", dst, make_checkpoint(tmp_path / "other2", step=8), "nlp/run/other")
    ck("tag", dst, "nlp/run/other", "production")
    proc = ck("copy", source.store, dst, rc=1)
    lines = out(proc).splitlines()
    assert lines[0].startswith("failed: p/r/v1: DST has another version under this name ")
    assert "alias production skipped: in DST it names other" in lines[2]
    assert lines[-1].startswith("copy: 3 copied, 0 already there, 1 failed; ")
    assert err(proc) == "ckptfs: error: 1 of 4 version(s) were not copied (see above)\n"
    assert versions_in(dst) == sorted(LIVE + ["nlp/run/other"])
    assert show(dst, "p/r/v1")["digest"] != show(source.store, "p/r/v1")["digest"]


def test_into_and_out_of_an_encrypted_store(source, tmp_path):
    env = env_with()
    dst = str(tmp_path / "dst")
    ck("init", "--encrypt", "--key-file", tmp_path / "dst.key", dst, env=env)
    ck("copy", source.store, dst, "p/r", env=env)
    assert versions_in(dst) == ["p/r/v1"]
    assert grep_packs(dst, CONFIG_TEXT) == 0  # the packs hold no plaintext
    ck("get", dst, "p/r/v1", tmp_path / "got", env=env)
    assert tree_snapshot(tmp_path / "got") == tree_snapshot(source.v1)
    # and on, from the encrypted store into a plain one
    plain = new_store(tmp_path / "plain")
    ck("copy", dst, plain, env=env)
    ck("get", plain, "p/r/v1", tmp_path / "got-again")
    assert tree_snapshot(tmp_path / "got-again") == tree_snapshot(source.v1)
    assert grep_packs(plain, CONFIG_TEXT) > 0


def test_a_copy_killed_half_way_leaves_dst_sound_and_a_rerun_finishes(tmp_path):
    src = str(tmp_path / "src")
    with Store.init(src) as s:  # three versions with nothing in common, ~30 MB each
        for n in (1, 2, 3):
            s.import_directory(make_checkpoint(tmp_path / "c" / f"v{n}", step=n, seed=n,
                                               scale=50), "p", "r", f"v{n}")
    dst = new_store(tmp_path / "dst")
    copying = subprocess.Popen([sys.executable, "-m", "ckptfs", "copy", src, dst],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = copying.stdout.readline().decode()  # printed once v1 is sealed in DST
    copying.send_signal(signal.SIGKILL)
    copying.communicate()
    assert first.startswith("copied: p/r/v1")
    assert "p/r/v1" in versions_in(dst) and len(versions_in(dst)) < 3
    ck("verify", dst)

    proc = ck("copy", src, dst)
    assert out(proc).splitlines()[0] == "already there: p/r/v1"
    assert versions_in(dst) == ["p/r/v1", "p/r/v2", "p/r/v3"]
    assert spool_copy_dirs(dst) == []  # the killed copy's staging went too
    ck("verify", dst)


def test_errors_are_one_line(source, tmp_path):
    dst = new_store(tmp_path / "dst")
    same, missing_src, missing_dst, bad, nothing = run_cli_many(
        ("copy", source.store, source.store),
        ("copy", tmp_path / "nope", dst),
        ("copy", source.store, tmp_path / "nope"),
        ("copy", source.store, dst, "nlp//step-1"),
        ("copy", source.store, dst, "vision/*"), rc=1)
    assert err(same) == f"ckptfs: error: SRC and DST are the same store ({source.store})\n"
    assert err(missing_src) == f"ckptfs: error: {tmp_path / 'nope'}: no such store (create " \
                               "a store with `ckptfs init`)\n"
    assert "no such store" in err(missing_dst)
    assert err(bad).startswith("ckptfs: error: bad pattern 'nlp//step-1': expected "
                               "PROJECT[/RUN[/VERSION]]")
    assert err(nothing) == f"ckptfs: error: no version of {source.store} matches 'vision/*'\n"
    assert versions_in(dst) == []


@pytest.mark.skipif(os.getuid() != 0, reason="needs root (to act as another user)")
def test_roles_reader_in_src_and_writer_in_dst(open_store):  # the fixture of conftest.py
    dst = os.path.join(public_dir(), "dst")
    try:
        with Store.init(dst) as s:
            s.set_enforcement(True)
        subprocess.run(["chmod", "-R", "a+rwX", os.path.dirname(dst)], check=True)
        # nobody reads vision in SRC, but may not write it in DST
        code, output = cli_as_user("copy", open_store, dst, "vision")
        assert (code, output) == (1, (
            "ckptfs: error: user nobody (uid 65534) may not archive versions (a copy) in "
            "project vision: needs role writer, has no role; ask an admin: ckptfs access "
            f"grant {dst} vision writer user:nobody\n"))
        assert [(e["operation"], e["role"]) for e in refusals(dst, NOBODY)] == \
            [("archive versions (a copy)", "writer")]
        with Store.open(dst) as s:
            s.grant("*", "user:nobody", "writer")
        # ... and may not read nlp in SRC: refused before anything is copied
        code, output = cli_as_user("copy", open_store, dst)
        assert code == 1 and output.startswith(
            "ckptfs: error: user nobody (uid 65534) may not read versions (to copy them) in "
            "project nlp: needs role reader, has no role")
        assert versions_in(dst) == []
        code, output = cli_as_user("copy", open_store, dst, "vision")
        assert code == 0, output
        assert output.startswith("copied: vision/r/v1")
        assert versions_in(dst) == ["vision/r/v1"]
    finally:
        shutil.rmtree(os.path.dirname(dst), ignore_errors=True)


def test_a_version_damaged_in_src_fails_with_exit_3_and_the_others_copy(tmp_path):
    src = str(tmp_path / "src")
    two_versions(tmp_path, src)
    flip_payload_byte(src, "v1", "optimizer.pt")  # not shared with v2
    dst = new_store(tmp_path / "dst")
    proc = ck("copy", src, dst, rc=3)
    lines = out(proc).splitlines()
    assert lines[0].startswith("failed: p/r/v1: damaged in SRC: optimizer.pt: ")
    assert lines[1].startswith("copied: p/r/v2")
    assert err(proc) == "ckptfs: error: 1 of 2 version(s) were not copied (see above)\n"
    assert versions_in(dst) == ["p/r/v2"]
    assert spool_copy_dirs(dst) == []
    ck("verify", dst)


def test_a_local_store_moves_to_object_storage_and_back(source, s3_store_url, tmp_path):
    """The way to move a store to S3: copy into a store on a bucket, then read it from
    another machine's cache (and copy it back), every file byte for byte."""
    cache = ["--cache-dir", tmp_path / "cache-a"]
    ck(*cache, "init", s3_store_url)
    ck(*cache, "copy", source.store, s3_store_url)
    with Store.open(s3_store_url, cache_dir=str(tmp_path / "cache-b")) as other_machine:
        assert versions_in(source.store) == sorted(
            f"{v['project']}/{v['run']}/{v['version']}" for v in other_machine.all_versions())
    back = new_store(tmp_path / "back")
    ck("--cache-dir", tmp_path / "cache-c", "copy", s3_store_url, back)
    for ref in versions_in(source.store):
        assert show(back, ref)["digest"] == show(source.store, ref)["digest"]
    ck("get", back, "nlp/run/step-200", tmp_path / "got")
    ck("get", source.store, "nlp/run/step-200", tmp_path / "want")
    assert tree_snapshot(tmp_path / "got") == tree_snapshot(tmp_path / "want")
