"""Bad input and faults, through the real `ckptfs` command: a source that cannot be read,
a full disk (a real, small tmpfs), two imports racing, a flipped byte in a pack, a torn
journal tail, and an index that missed the last commit.

Every command's stderr is checked for "Traceback": faults must come out as one
`ckptfs: error: ...` line and an exit code.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap

import pytest

from ckptfs.store import Store, codec
from ckptfs.store.backend import LocalBackend
from ckptfs.store.pack import RECORD_HEADER, pack_name, scan_pack
from tests.helpers import faults as helpers
from tests.helpers.cli import run_cli_many
from tests.helpers.faults import (
    assert_no_version,
    assert_verifies,
    ck,
    err,
    file_bytes,
    out,
    pack_files,
)
from tests.helpers.samples import make_checkpoint, tree_snapshot

store = helpers.store  # a fixture (tests/helpers/faults.py)


EXIT_DAMAGE = 3


NOBODY = 65534


many = run_cli_many


def journal_entries(store) -> list[dict]:
    path = os.path.join(store, "journal", "journal.jsonl")
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        return [json.loads(line) for line in f.read().splitlines()]


def journaled_packs(store) -> set[str]:
    """Paths of every pack some sealed version refers to."""
    return {LocalBackend(store).path_of(pack_name(pid))
            for e in journal_entries(store) if e["type"] == "version.sealed"
            for pid in e["packs"]}


# -- sources that cannot be imported ---------------------------------------------------------
def test_source_missing(store, tmp_path):
    proc = ck("import", store, tmp_path / "nowhere", "p/r/v", rc=1)
    assert f"{tmp_path / 'nowhere'}: no such directory" in err(proc)
    assert_no_version(store)


def test_source_is_a_file(store, tmp_path):
    src = tmp_path / "model.safetensors"
    src.write_bytes(b"\0" * 100)
    proc = ck("import", store, src, "p/r/v", rc=1)
    assert f"{src} is not a directory" in err(proc)
    assert out(ck("ls", store)) == ""


def test_fifo_inside_the_source_is_refused(store, tmp_path):
    src = make_checkpoint(tmp_path / "src")
    fifo = os.path.join(src, "tokenizer", "pipe")
    os.mkfifo(fifo)
    # nothing ever opens the FIFO for writing: an import that tried to read it would hang
    proc = ck("import", store, src, "p/r/v", rc=1, timeout=60)
    assert fifo in err(proc) and "special file" in err(proc)
    assert_no_version(store)
    assert pack_files(store) == []


CHILD_AS_NOBODY = textwrap.dedent("""
    import os, sys
    import ckptfs.cli.app, ckptfs.store, ckptfs.store.store, ckptfs.store.ingest
    import ckptfs.store.codec, ckptfs.store.chunking, ckptfs.store.pack, ckptfs.store.journal
    import ckptfs.meta.seal, ckptfs.meta.import_export, tqdm, numpy  # imported lazily by the CLI; nobody cannot read root's Python
    os.setgroups([])
    os.setgid({uid})
    os.setuid({uid})
    assert os.geteuid() == {uid}
    ckptfs.cli.app.main(sys.argv[1:], prog_name="ckptfs")   # exits (SystemExit) with its code
""").format(uid=NOBODY)


def run_as_nobody(*args, cwd):
    proc = subprocess.run([sys.executable, "-c", CHILD_AS_NOBODY, *map(str, args)],
                          capture_output=True, cwd=cwd, timeout=120)
    assert "Traceback" not in err(proc), err(proc)
    return proc


def chown_tree(root, uid):
    os.chown(root, uid, uid)
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            os.lchown(os.path.join(dirpath, name), uid, uid)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand the files to another user")
def test_unreadable_file_inside_the_source():
    # pytest's tmp_path is private to root (0700): use a directory nobody can reach
    base = tempfile.mkdtemp(prefix="ckptfs-nobody-")
    try:
        os.chmod(base, 0o755)
        store, src = os.path.join(base, "store"), os.path.join(base, "src")
        ck("init", store)
        make_checkpoint(src)
        chown_tree(store, NOBODY)
        chown_tree(src, NOBODY)
        secret = os.path.join(src, "trainer_state.json")   # last in import order
        os.chmod(secret, 0)

        proc = run_as_nobody("import", store, src, "p/r/v", cwd=base)
        assert proc.returncode == 1, err(proc)
        assert f"{secret}: permission denied" in err(proc)
        assert out(proc) == ""
        assert_no_version(store)
        assert pack_files(store) == [], "the failed import left its packs behind"
        assert_verifies(store, 0)

        # the same child, with the file readable again, imports fine: the refusal above
        # came from that one file, not from the store or the privilege drop
        os.chmod(secret, 0o644)
        chown_tree(store, NOBODY)   # the root-run checks above may have created files
        proc = run_as_nobody("import", store, src, "p/r/v", cwd=base)
        assert proc.returncode == 0, err(proc)
        assert ck("cat", store, "p/r/v/trainer_state.json").stdout == file_bytes(secret)
    finally:
        shutil.rmtree(base, ignore_errors=True)


# -- two imports at once --------------------------------------------------------------------------
def popen_import(store, src, ref):
    return subprocess.Popen([sys.executable, "-m", "ckptfs", "import", store, src, ref],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc):
    stdout, stderr = proc.communicate(timeout=120)
    assert b"Traceback" not in stderr, stderr.decode(errors="replace")
    return proc.returncode, stdout.decode(), stderr.decode()


def shared_sources(tmp_path, names):
    """Checkpoints of several MB that share most of their bytes (a common 6 MB blob)."""
    shared = os.urandom(6 << 20)
    sources = {}
    for i, name in enumerate(names):
        src = make_checkpoint(tmp_path / f"src-{name}", step=100 + i)
        with open(os.path.join(src, "shared.bin"), "wb") as f:
            f.write(shared)
        with open(os.path.join(src, "own.bin"), "wb") as f:
            f.write(os.urandom(2 << 20))
        sources[name] = src
    return sources


def test_two_imports_at_once_both_commit(store, tmp_path):
    sources = shared_sources(tmp_path, ["v1", "v2"])
    procs = {name: popen_import(store, src, f"p/r/{name}") for name, src in sources.items()}
    assert all(p.poll() is None for p in procs.values()), "the imports did not overlap"
    for name, proc in procs.items():
        code, stdout, stderr = finish(proc)
        assert code == 0, stderr
        assert stdout.startswith(f"imported p/r/{name}: 8 files")
    assert out(ck("ls", store, "p/r")) == "v1\nv2\n"
    assert_verifies(store, 2)
    for name, src in sources.items():
        dest = tmp_path / f"out-{name}"
        ck("get", store, f"p/r/{name}", dest)
        assert tree_snapshot(dest) == tree_snapshot(src)
    st = json.loads(out(ck("stats", "--json", store)))
    # the shared blob is stored once in the index, however the two imports interleaved
    assert st["unique_bytes"] < st["logical_bytes"] - (5 << 20)
    assert set(pack_files(store)) == journaled_packs(store)


def test_same_version_name_from_two_processes(store, tmp_path):
    sources = shared_sources(tmp_path, ["a", "b"])
    procs = {name: popen_import(store, src, "p/r/v") for name, src in sources.items()}
    assert all(p.poll() is None for p in procs.values()), "the imports did not overlap"
    results = {name: finish(proc) for name, proc in procs.items()}
    winners = [name for name, (code, _, _) in results.items() if code == 0]
    assert len(winners) == 1, results
    (loser,) = set(results) - set(winners)
    code, stdout, stderr = results[loser]
    assert code == 1 and stdout == ""
    assert "p/r/v" in stderr and "immutable" in stderr
    assert re.search(r"already exists|created by another import", stderr), stderr
    assert out(ck("ls", store, "p/r")) == "v\n"
    assert_verifies(store, 1)
    dest = tmp_path / "out"
    ck("get", store, "p/r/v", dest)
    assert tree_snapshot(dest) == tree_snapshot(sources[winners[0]])
    assert set(pack_files(store)) == journaled_packs(store), "the loser left its packs"


# -- a flipped byte in a pack ---------------------------------------------------------------------
def flip_byte_of_chunk(store, chunk_hex) -> tuple[int, str]:
    """Flip one byte in the middle of the chunk's payload; return (pack id, pack file)."""
    with Store.open(store) as s:
        loc = s.index_location(bytes.fromhex(chunk_hex))
        path = s.backend.path_of(pack_name(loc.pack_id))
    at = loc.offset + RECORD_HEADER.size + (loc.length - RECORD_HEADER.size) // 2
    with open(path, "r+b") as f:
        f.seek(at)
        old = f.read(1)
        f.seek(at)
        f.write(bytes([old[0] ^ 0x5A]))
    return loc.pack_id, path


def chunks_of(store, ref) -> dict:
    """{file path: [chunk id hex, ...]} of a version."""
    p, r, v = ref.split("/")
    with Store.open(store) as s:
        return {e["path"]: [c for c, _ in e["chunks"]] for e in s.walk(p, r, v)
                if e["type"] == "file"}


def test_flipped_byte_in_a_pack_is_caught_everywhere(store, tmp_path):
    src1 = make_checkpoint(tmp_path / "s1", step=100)
    src2 = make_checkpoint(tmp_path / "s2", step=200)
    ck("import", store, src1, "p/r/v1")
    ck("import", store, src2, "p/r/v2")
    v1, v2 = chunks_of(store, "p/r/v1"), chunks_of(store, "p/r/v2")
    # a chunk of v2's model.safetensors, not its first, that no other file uses
    others = {c for path, ids in v2.items() if path != "model.safetensors" for c in ids}
    others |= {c for ids in v1.values() for c in ids}
    ids = v2["model.safetensors"]
    k = next(i for i in range(1, len(ids)) if ids[i] not in others and ids.count(ids[i]) == 1)
    pack_id, _ = flip_byte_of_chunk(store, ids[k])
    truth = file_bytes(os.path.join(src2, "model.safetensors"))

    proc = ck("cat", store, "p/r/v2/model.safetensors", rc=EXIT_DAMAGE)
    assert "integrity" in err(proc)
    assert len(proc.stdout) < len(truth) and truth.startswith(proc.stdout), \
        "cat printed bytes that are not the file's"

    dest = tmp_path / "out"
    proc = ck("get", store, "p/r/v2", dest, rc=EXIT_DAMAGE)
    assert "damaged: model.safetensors" in err(proc)
    assert not os.path.lexists(dest / "model.safetensors")
    want = tree_snapshot(src2)
    del want["model.safetensors"]
    assert tree_snapshot(dest) == want, "the intact files were not restored as they were"

    proc = ck("verify", store, rc=EXIT_DAMAGE)
    report = out(proc)
    assert set(re.findall(r"^damaged pack ([0-9a-f]{8}):", report, re.M)) == {f"{pack_id:08x}"}
    assert re.findall(r"^damaged version (.*)$", report, re.M) == ["p/r/v2"]
    assert re.findall(r"^damaged file (\S+):", report, re.M) == ["p/r/v2/model.safetensors"]
    assert "verify found damage" in err(proc)

    # everything that does not hold the damaged chunk still reads right
    # (v1's model.safetensors shares the other chunks of the damaged file)
    files = [(src1, "p/r/v1", "model.safetensors"), (src1, "p/r/v1", "optimizer.pt"),
             (src2, "p/r/v2", "optimizer.pt"), (src2, "p/r/v2", "tokenizer/vocab.txt")]
    procs = many(*[("cat", store, f"{ref}/{rel}") for _, ref, rel in files])
    for (src, _, rel), proc in zip(files, procs):
        assert proc.stdout == file_bytes(os.path.join(src, rel)), proc.args


def test_damaged_delta_base_is_blamed_on_its_own_pack_only(store, tmp_path):
    ck("import", store, make_checkpoint(tmp_path / "s1", step=100), "p/r/v1")
    ck("import", store, make_checkpoint(tmp_path / "s2", step=200), "p/r/v2")
    v1, v2 = chunks_of(store, "p/r/v1"), chunks_of(store, "p/r/v2")
    # a block of a tensor that changed between the versions: v2 stores it as an XOR
    # delta against v1's block in v1's pack
    with Store.open(store) as s:
        deltas = []
        for i, c in enumerate(v2["model.safetensors"]):
            loc = s.index_location(bytes.fromhex(c))
            record = s.packs.read(loc.pack_id, loc.offset, loc.length)
            if codec.is_delta(record.codec):
                deltas.append((i, loc.pack_id, codec.delta_base_id(record.codec,
                                                                    record.payload).hex()))
    assert deltas, "the sample no longer produces delta chunks"
    _i, delta_pack, base = deltas[0]
    assert base in v1["model.safetensors"]
    base_pack, _ = flip_byte_of_chunk(store, base)
    assert base_pack != delta_pack
    # the delta's own pack is intact, record for record
    assert scan_pack(LocalBackend(store), delta_pack).damage == []
    proc = ck("verify", store, rc=EXIT_DAMAGE)
    named = set(re.findall(r"^damaged pack ([0-9a-f]{8}):", out(proc), re.M))
    assert named == {f"{base_pack:08x}"}, out(proc)


# -- the journal and the index ------------------------------------------------------------------
def test_torn_journal_tail_is_ignored_and_cut_by_the_next_import(store, tmp_path):
    src1 = make_checkpoint(tmp_path / "s1", step=100)
    src2 = make_checkpoint(tmp_path / "s2", step=200)
    ck("import", store, src1, "p/r/v1")
    journal = os.path.join(store, "journal", "journal.jsonl")
    whole = file_bytes(journal)
    line = whole.splitlines()[-1]
    torn = line[:len(line) // 2].replace(b'"seq":2', b'"seq":3')  # 1: the creator's grant
    with open(journal, "ab") as f:
        f.write(torn)           # a crash in the middle of appending the next entry

    ls_run, cat, verify = many(("ls", store, "p/r"), ("cat", store, "p/r/v1/optimizer.pt"),
                               ("verify", store))
    assert out(ls_run) == "v1\n"
    assert cat.stdout == file_bytes(os.path.join(src1, "optimizer.pt"))
    assert " 1 versions," in out(verify)

    ck("import", store, src2, "p/r/v2")
    assert_verifies(store, 2)
    data = file_bytes(journal)
    assert data.startswith(whole), "the committed entry was altered"
    appended = data[len(whole):]
    assert appended.endswith(b"\n") and appended.count(b"\n") == 1, "the torn tail survived"
    assert json.loads(appended)["version"] == "v2"
    assert [e["seq"] for e in journal_entries(store)] == [1, 2, 3]


def test_index_that_missed_the_last_commit_is_caught_up_from_the_journal(store, tmp_path):
    src1 = make_checkpoint(tmp_path / "s1", step=100)
    src2 = make_checkpoint(tmp_path / "s2", step=200)
    ck("import", store, src1, "p/r/v1")
    index = os.path.join(store, "index")
    saved = str(tmp_path / "index-after-v1")
    shutil.copytree(index, saved)
    ck("import", store, src2, "p/r/v2")
    before = many(("ls", "-l", store, "p/r"), ("ls", "-l", store, "p/r/v2"),
                  ("stats", "--json", store))
    shutil.rmtree(index)
    shutil.copytree(saved, index)   # as if the process died between journal and index

    after = many(("ls", "-l", store, "p/r"), ("ls", "-l", store, "p/r/v2"),
                 ("stats", "--json", store))
    for b, a in zip(before, after):
        assert out(a) == out(b), a.args
    assert out(after[0]).count("\n") == 2
    # model.safetensors of v2 holds XOR-delta chunks whose bases are in v1's pack
    cat, verify = many(("cat", store, "p/r/v2/model.safetensors"), ("verify", store))
    assert cat.stdout == file_bytes(os.path.join(src2, "model.safetensors"))
    assert out(verify).startswith("ok: ") and " 2 versions," in out(verify)
    # the caught-up index also knows which pack ids are taken: the next import works
    ck("import", store, make_checkpoint(tmp_path / "s3", step=300), "p/r/v3")
    assert_verifies(store, 3)
