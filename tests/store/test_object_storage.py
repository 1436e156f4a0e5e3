"""The engine on a store on object storage (a bucket of the real S3 server) used by
several machines at once, each a `Store` with a cache directory of its own: what the
conditional commit decides when their commits interleave."""
import os
import shutil
import subprocess

import pytest

from ckptfs.store import Store, VersionExistsError
from tests.helpers.object_storage import (
    REPO_ROOT, Machine, after, helper_process, set_gc_grace, version_bytes)
from tests.helpers.samples import make_checkpoint


@pytest.fixture
def two_machines(s3_store_url, tmp_path):
    Store.init(s3_store_url, cache_dir=str(tmp_path / "cache-a")).close()
    opened = [Store.open(s3_store_url, cache_dir=str(tmp_path / f"cache-{name}"))
              for name in ("a", "b")]
    yield opened
    for machine in opened:
        machine.close()


def test_a_name_taken_between_a_catch_up_and_the_append_is_refused(two_machines, tmp_path):
    """A seals p/r/v1 while B's commit of the same name is past its checks (B caught up
    before A's entry landed): B's append must not chain onto A's entry, but catch up,
    check again and refuse the name."""
    a, b = two_machines
    src_a = make_checkpoint(tmp_path / "src-a" / "v1", step=1, seed=1)
    src_b = make_checkpoint(tmp_path / "src-b" / "v1", step=1, seed=2)
    signing = b.catalog.signing
    checked = signing.seal_signature  # called by B's commit after its "name is free" check

    def a_commits_meanwhile(*args):
        signing.seal_signature = checked  # once
        a.import_directory(src_a, "p", "r", "v1")
        return checked(*args)
    signing.seal_signature = a_commits_meanwhile
    with pytest.raises(VersionExistsError, match="created by another import meanwhile"):
        b.import_directory(src_b, "p", "r", "v1")
    assert signing.seal_signature is checked, "A's commit did not run inside B's"
    entries = list(b.committer.journal_entries())
    assert [e["version"] for e in entries if e.get("type") == "version.sealed"] == ["v1"]
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    for machine in (a, b):
        machine.committer.catch_up_if_behind()
        assert [v["version"] for v in machine.versions("p", "r")] == ["v1"]
        assert machine.version_record("p", "r", "v1")["digest"] == \
            a.version_record("p", "r", "v1")["digest"]


def test_eight_processes_committing_25_versions_each_keep_one_intact_chain(s3_store_url,
                                                                         tmp_path):
    """Each a machine of its own (its cache directory), all started together: every
    commit lands once, in one chain without gaps, each entry its writer's (its nonce)."""
    writers, count = 8, 25
    Store.init(s3_store_url, cache_dir=str(tmp_path / "cache-init")).close()
    go = tmp_path / "go"
    procs = [subprocess.Popen(helper_process("commit_versions", s3_store_url,
                                             str(tmp_path / f"cache-{n}"), n, count, str(go)),
                              cwd=REPO_ROOT, stderr=subprocess.PIPE) for n in range(writers)]
    go.touch()
    errors = [(p.wait(timeout=600), p.stderr.read().decode()) for p in procs]
    assert all(code == 0 for code, _ in errors), errors

    store = Store.open(s3_store_url, cache_dir=str(tmp_path / "cache-check"))
    try:
        for n in range(writers):
            assert sorted(v["version"] for v in store.versions("p", f"w{n}")) == \
                sorted(f"v{i}" for i in range(count))
        entries = list(store.committer.journal_entries())
        assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
        assert len(entries) == 1 + writers * count
        nonces = [e["nonce"] for e in entries]
        assert len(set(nonces)) == len(nonces)
        chain = store.committer.check_journal()  # what `ckptfs audit verify` reports
        assert chain["ok"] and chain["entries"] == len(entries), chain
        for n, i in ((0, 0), (writers - 1, count - 1), (3, 12)):
            out = tmp_path / f"out-{n}-{i}"
            store.restore("p", f"w{n}", f"v{i}", str(out))
            assert (out / "data.bin").read_bytes() == version_bytes(n, i)
    finally:
        store.close()


def test_imports_that_deduplicate_against_a_version_gc_is_reclaiming(s3_server, s3_store_url,
                                                                     tmp_path):
    """Machine I imports versions sharing every chunk of `base` while machine G deletes
    `base` and runs gc with no grace period: each import either still finds its chunks
    or starts over; none fails, and every version reads back as written."""
    base = make_checkpoint(tmp_path / "src" / "base", step=1, scale=2)
    sources = []
    for i in range(4):
        copy = tmp_path / "src" / f"v{i}"
        shutil.copytree(base, copy, symlinks=True)
        (copy / "note.txt").write_text(f"version {i}\n")
        sources.append(str(copy))
    newer = tmp_path / "src" / "newer"
    newer.mkdir()
    (newer / "note.txt").write_text("a later version, so that `base` is not the newest\n")
    with Store.init(s3_store_url, cache_dir=str(tmp_path / "cache-i")) as store:
        # `base` lives in a run of its own with a newer version after it: whichever of
        # the delete and the imports comes first, `base` may be deleted
        store.import_directory(base, "p", "old", "base")
        store.import_directory(newer, "p", "old", "newer")
    set_gc_grace(s3_server, s3_store_url, 0)
    go = tmp_path / "go"
    importer = subprocess.Popen(helper_process("import_all", s3_store_url,
                                               str(tmp_path / "cache-i"), sources, str(go)),
                                cwd=REPO_ROOT, stderr=subprocess.PIPE)
    g = Machine(s3_store_url, tmp_path / "cache-g")
    collector = subprocess.Popen(after(
        go, g.command_line("delete", "p/old/base", "--reason", "old"), g.command_line("gc"),
        g.command_line("gc")), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    go.touch()
    assert importer.wait(timeout=300) == 0, importer.stderr.read().decode()
    assert collector.wait(timeout=300) == 0, collector.stderr.read().decode()

    with Store.open(s3_store_url, cache_dir=str(tmp_path / "cache-check")) as store:
        assert sorted(v["version"] for v in store.versions("p", "r")) == \
            [f"v{i}" for i in range(4)]
        for src in sources:
            out = tmp_path / "out" / os.path.basename(src)
            store.restore("p", "r", os.path.basename(src), str(out))
            assert file_contents(out) == file_contents(src)
        assert store.verify().ok


def file_contents(root) -> dict:
    return {os.path.relpath(os.path.join(d, n), root): open(os.path.join(d, n), "rb").read()
            for d, _, names in os.walk(root) for n in names
            if not os.path.islink(os.path.join(d, n))}
