"""The `ckptfs` command line as a user drives it: real subprocesses of `python -m ckptfs`
on real stores (LMDB index, pack files, journal) and real checkpoint directories.

Every command's stderr is checked for "Traceback": an error a user can cause must come
out as one `ckptfs: error: ...` line and an exit code, never as a Python crash.
"""
import importlib.metadata
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from datetime import datetime
from types import SimpleNamespace

import pytest

from tests.helpers.cli import run_cli_checked, run_cli_many
from tests.helpers.samples import make_checkpoint, tree_snapshot

import ckptfs

SUBDIRS = ("packs", "index", "journal", "spool")
COMMANDS = ("init", "import", "ls", "cat", "get", "stats", "verify", "rebuild-index")


class Ckptfs:
    """The real `ckptfs` command, exit code and traceback checked (conftest)."""

    def __call__(self, *args, rc=0, **kw):
        return run_cli_checked(*args, rc=rc, **kw)

    def many(self, *calls, rc=0):
        return run_cli_many(*calls, rc=rc)


@pytest.fixture
def ck(cli):
    return Ckptfs()


def out(proc) -> str:
    return proc.stdout.decode()


def err(proc) -> str:
    return proc.stderr.decode(errors="replace")


def source_files(src) -> dict:
    """{relative path: bytes} of the regular files below `src` (symlinks excluded)."""
    files = {}
    for dirpath, _dirs, names in os.walk(src):
        for name in names:
            full = os.path.join(dirpath, name)
            if os.path.isfile(full) and not os.path.islink(full):
                with open(full, "rb") as f:
                    files[os.path.relpath(full, src)] = f.read()
    return files


# -- a store with two imported versions, shared by the read-only tests -------------------
@pytest.fixture(scope="module")
def populated(tmp_path_factory):
    """STORE with proj/run-1/step-100 and proj/run-1/step-200 imported through the CLI."""
    root = tmp_path_factory.mktemp("populated")
    ck = Ckptfs()
    pop = SimpleNamespace()
    pop.store = str(root / "store")
    pop.src1 = make_checkpoint(root / "src" / "step-100", step=100)
    pop.src2 = make_checkpoint(root / "src" / "step-200", step=200)
    ck("init", pop.store)
    pop.import1 = ck("import", pop.store, pop.src1, "proj/run-1/step-100")
    pop.import2 = ck("import", pop.store, pop.src2, "proj/run-1/step-200")
    return pop


# -- help and version ---------------------------------------------------------------------
def test_help_lists_every_command(ck):
    proc = ck("--help")
    text = out(proc)
    assert "Usage:" in text
    for command in COMMANDS:
        assert re.search(rf"^\s+{re.escape(command)}\s", text, re.M), f"{command} not in --help"
    assert out(ck("import", "--help")).count("PROJECT/RUN/VERSION") >= 1


def test_version_from_module_and_console_script(ck):
    expected = importlib.metadata.version("ckptfs")
    assert expected == ckptfs.__version__
    # under `python -m` click names the program after the interpreter invocation
    assert out(ck("--version")).strip().endswith(f"ckptfs, version {expected}")
    script = os.path.join(os.path.dirname(sys.executable), "ckptfs")
    proc = subprocess.run([script, "--version"], capture_output=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().strip() == f"ckptfs, version {expected}"


# -- init -----------------------------------------------------------------------------------
def test_init_creates_the_store_layout(ck, store_path):
    proc = ck("init", store_path)
    assert out(proc).strip() == f"created store {store_path}"
    config = os.path.join(store_path, "ckptfs.toml")
    assert os.path.isfile(config)
    for sub in SUBDIRS:
        assert os.path.isdir(os.path.join(store_path, sub)), sub
    # the settings file holds the chunk-id key: private to its owner
    assert stat.S_IMODE(os.stat(config).st_mode) == 0o600
    with open(config) as f:
        text = f.read()
    assert re.search(r"^format = 1$", text, re.M)
    assert re.search(r'^chunk_id_key = "[0-9a-f]{64}"$', text, re.M)
    # and it is usable straight away
    assert out(ck("ls", store_path)) == ""
    assert out(ck("verify", store_path)).startswith("ok:")


def test_init_refuses_an_existing_store_and_keeps_its_key(ck, store_path):
    ck("init", store_path)
    with open(os.path.join(store_path, "ckptfs.toml"), "rb") as f:
        before = f.read()
    proc = ck("init", store_path, rc=1)
    assert "already a ckptfs store" in err(proc)
    assert err(proc).startswith("ckptfs: error: ")
    with open(os.path.join(store_path, "ckptfs.toml"), "rb") as f:
        assert f.read() == before, "a second init rewrote the settings (and the chunk-id key)"


def test_init_refuses_a_non_empty_directory_and_leaves_it_alone(ck, tmp_path):
    target = tmp_path / "busy"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    proc = ck("init", target, rc=1)
    assert "not empty" in err(proc)
    assert sorted(os.listdir(target)) == ["notes.txt"]
    assert (target / "notes.txt").read_text() == "mine"


# -- import, ls, cat, get -------------------------------------------------------------------
def test_import_summary_line(populated):
    line = out(populated.import1).strip()
    m = re.fullmatch(r"imported proj/run-1/step-100: (\d+) files, ([\d.]+ [KMG]?B) logical, "
                     r"([\d.]+ [KMG]?B) new stored \(dedup ([\d.]+x|all deduplicated), "
                     r"compression ([\d.]+)x\), ([\d.]+) s, (\d+) MB/s", line)
    assert m, line
    assert int(m.group(1)) == len(source_files(populated.src1))
    total = sum(len(b) for b in source_files(populated.src1).values())
    assert m.group(2) == f"{total / 1000:.1f} KB"
    assert float(m.group(5)) >= 1.0


def test_ls_at_every_level(ck, populated):
    s = populated.store
    top, proj, run, version, sub, sub2, nope1, nope2, nope3, nope4 = ck.many(
        ("ls", s), ("ls", s, "proj"), ("ls", s, "proj/run-1"), ("ls", s, "proj/run-1/step-100"),
        ("ls", s, "proj/run-1/step-100/tokenizer"),
        ("ls", s, "/proj/run-1/step-100/tokenizer/"),
        ("ls", s, "nope"), ("ls", s, "proj/nope"), ("ls", s, "proj/run-1/nope"),
        ("ls", s, "proj/run-1/step-100/missing"), rc=None)
    assert out(top) == "proj\n"
    assert out(proj) == "run-1\n"
    assert out(run) == "step-100\nstep-200\n"
    assert out(version).splitlines() == sorted(os.listdir(populated.src1), key=os.fsencode)
    assert out(sub) == "vocab.txt\n"
    # a trailing slash and a leading one are the same reference
    assert out(sub2) == "vocab.txt\n"
    assert all(p.returncode == 0 for p in (top, proj, run, version, sub, sub2))
    # what is not there is an error, not an empty listing
    for proc, message in ((nope1, "no project 'nope'"), (nope2, "no run 'proj/nope'"),
                          (nope3, "no version proj/run-1/nope"), (nope4, "has no 'missing'")):
        assert proc.returncode == 1 and message in err(proc) and out(proc) == ""


def test_ls_long_shows_modes_sizes_times_and_symlink_targets(ck, populated):
    src = populated.src1
    lines = out(ck("ls", "-l", populated.store, "proj/run-1/step-100")).splitlines()
    names = sorted(os.listdir(src), key=os.fsencode)
    assert len(lines) == len(names)
    for line, name in zip(lines, names):
        st = os.lstat(os.path.join(src, name))
        when = datetime.fromtimestamp(st.st_mtime_ns / 1e9).strftime("%Y-%m-%d %H:%M")
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(os.path.join(src, name))
            expected = f"{stat.filemode(st.st_mode)} {0:>12} {when} {name} -> {target}"
        elif stat.S_ISDIR(st.st_mode):
            expected = f"{stat.filemode(st.st_mode)} {0:>12} {when} {name}"
        else:
            expected = f"{stat.filemode(st.st_mode)} {st.st_size:>12} {when} {name}"
        assert line == expected
    joined = "\n".join(lines)
    assert "-rw-r----- " in joined                       # config.json's 0640 survived
    assert "latest.safetensors -> model.safetensors" in joined
    assert re.search(r"^d\S+ .* tokenizer$", joined, re.M)
    sub = out(ck("ls", "-l", populated.store, "proj/run-1/step-100/tokenizer")).strip()
    assert re.fullmatch(r"-rw-r--r-- +18889 \S+ \S+ vocab.txt", sub), sub
    runs = out(ck("ls", "-l", populated.store, "proj/run-1")).splitlines()
    assert len(runs) == 2
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d +6 files +564\.0 KB +step-100", runs[0])


def test_cat_is_byte_equal_to_every_source_file(ck, populated):
    wanted = {f"proj/run-1/step-100/{rel}": data
              for rel, data in source_files(populated.src1).items()}
    assert len(wanted) == 6
    procs = ck.many(*[("cat", populated.store, ref) for ref in wanted])
    for (ref, data), proc in zip(wanted.items(), procs):
        assert proc.stdout == data, f"{ref} differs"
        assert proc.stderr == b""


def test_cat_refuses_a_directory_and_a_missing_file(ck, populated):
    proc = ck("cat", populated.store, "proj/run-1/step-100/tokenizer", rc=1)
    assert "is a dir, not a file" in err(proc) and proc.stdout == b""
    proc = ck("cat", populated.store, "proj/run-1/step-100/nope.bin", rc=1)
    assert "has no 'nope.bin'" in err(proc) and proc.stdout == b""


def test_get_restores_an_equal_tree(ck, populated, tmp_path):
    dest = tmp_path / "restored"
    proc = ck("get", populated.store, "proj/run-1/step-100", dest)
    assert re.match(r"restored 6 files of proj/run-1/step-100, 564\.0 KB to .* SHA-256 verified", out(proc))
    want = tree_snapshot(populated.src1)
    got = tree_snapshot(dest)
    assert got == want
    # the parts the snapshot compares are all there
    assert got["EMPTY"][3] == b""
    assert got["latest.safetensors"] == ("symlink", "model.safetensors")
    assert got["tokenizer"][0] == "dir"
    assert stat.S_IMODE(got["config.json"][1]) == 0o640
    assert got["config.json"][2] == 1_600_000_000_123_456_789


def test_get_files_glob_restores_only_matching_files(ck, populated, tmp_path):
    dest = tmp_path / "json-only"
    proc = ck("get", "--files", "*.json", populated.store, "proj/run-1/step-200", dest)
    assert out(proc).startswith("restored 2 files")
    want = {k: v for k, v in tree_snapshot(populated.src2).items() if k.endswith(".json")}
    assert sorted(want) == ["config.json", "trainer_state.json"]
    assert tree_snapshot(dest) == want
    # a path glob reaches into a sub-directory and brings its directory along
    dest2 = tmp_path / "vocab-only"
    ck("get", "--files", "tokenizer/*", populated.store, "proj/run-1/step-200", dest2)
    full = tree_snapshot(populated.src2)
    assert tree_snapshot(dest2) == {k: full[k] for k in ("tokenizer", "tokenizer/vocab.txt")}


def test_get_files_glob_matching_nothing_fails(ck, populated, tmp_path):
    dest = tmp_path / "nothing"
    proc = ck("get", "--files", "*.bin", populated.store, "proj/run-1/step-100", dest, rc=1)
    assert "matches '*.bin'" in err(proc)
    assert not dest.exists()


def test_get_refuses_to_overwrite_a_file_of_the_version(ck, populated, tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "config.json").write_bytes(b"my own config")
    proc = ck("get", populated.store, "proj/run-1/step-100", dest, rc=1)
    assert "already exists" in err(proc) and "config.json" in err(proc)
    assert (dest / "config.json").read_bytes() == b"my own config"
    assert os.listdir(dest) == ["config.json"], "get wrote files before refusing"


# -- immutability and dedup ------------------------------------------------------------------
def test_importing_the_same_name_twice_fails_and_keeps_the_first(ck, store_path, tmp_path):
    src1 = make_checkpoint(tmp_path / "a", step=100)
    src2 = make_checkpoint(tmp_path / "b", step=200, seed=7)
    ck("init", store_path)
    ck("import", store_path, src1, "p/r/v")
    journal = os.path.join(store_path, "journal", "journal.jsonl")
    journal_before = open(journal, "rb").read()
    proc = ck("import", store_path, src2, "p/r/v", rc=1)
    assert "already exists" in err(proc) and "immutable" in err(proc)
    assert out(proc) == ""
    assert open(journal, "rb").read() == journal_before
    listing, verify = ck.many(("ls", store_path, "p/r"), ("verify", store_path))
    assert out(listing) == "v\n"
    assert re.match(r"ok: .* 1 versions, 6 files", out(verify))
    ck("get", store_path, "p/r/v", tmp_path / "out")
    assert tree_snapshot(tmp_path / "out") == tree_snapshot(src1)


def test_second_similar_checkpoint_is_deduplicated(ck, store_path, tmp_path):
    src1 = make_checkpoint(tmp_path / "step-100", step=100, scale=4)
    src2 = str(tmp_path / "step-101")
    shutil.copytree(src1, src2, symlinks=True)
    with open(os.path.join(src2, "trainer_state.json"), "w") as f:
        json.dump({"global_step": 101, "log_history": []}, f)
    ck("init", store_path)
    first = out(ck("import", store_path, src1, "p/r/step-100"))
    after1 = json.loads(out(ck("stats", "--json", store_path)))
    second = out(ck("import", store_path, src2, "p/r/step-101"))
    after2 = json.loads(out(ck("stats", "--json", store_path)))
    assert after1["stored_bytes"] > 1_000_000
    new_bytes = after2["stored_bytes"] - after1["stored_bytes"]
    assert 0 < new_bytes < after1["stored_bytes"] / 100, (first, second)
    assert after2["pack_bytes"] - after1["pack_bytes"] < after1["pack_bytes"] / 50
    assert after2["logical_bytes"] > 1.99 * after1["logical_bytes"]
    assert after2["dedup_ratio"] > 1.9
    assert "dedup 1.00x" in first
    m = re.search(r"([\d.]+) (B|KB) new stored \(dedup (\d+\.\d+)x", second)
    assert m and float(m.group(3)) > 1000, second


# -- names and stores that cannot be used --------------------------------------------------
BAD_NAMES = [
    ("p//v", "run must not be empty"),
    ("p/./v", "'.' and '..' are reserved"),
    ("p/r/..", "'.' and '..' are reserved"),
    ("p/r/a\x01b", "must not contain control characters"),
    ("p/r/tab\there", "must not contain control characters"),
    ("p/r/" + "x" * 256, "256 bytes long; the limit is 255 bytes"),
    ("p/" + "é" * 128 + "/v", "256 bytes long; the limit is 255 bytes"),
]


@pytest.mark.parametrize("ref,rule", BAD_NAMES, ids=["empty", "dot",
                                                       "dotdot", "ctrl-01", "tab",
                                                       "256-ascii", "256-utf8"])
def test_bad_names_are_refused_with_the_rule(ck, populated, ref, rule):
    journal = os.path.join(populated.store, "journal", "journal.jsonl")
    journal_before = open(journal, "rb").read()
    proc = ck("import", populated.store, populated.src1, ref, rc=1)
    assert rule in err(proc), err(proc)
    assert err(proc).startswith("ckptfs: error: ")
    assert out(proc) == ""
    assert open(journal, "rb").read() == journal_before, "a refused import was journaled"


def test_bad_name_is_refused_by_get_and_ls_too(ck, populated, tmp_path):
    get, ls = ck.many(("get", populated.store, "proj/run-1/..", tmp_path / "dest"),
                      ("ls", populated.store, "proj/run\x01"), rc=1)
    assert "'.' and '..' are reserved" in err(get)
    assert not (tmp_path / "dest").exists()
    assert "must not contain control characters" in err(ls)


def test_name_of_255_bytes_is_accepted(ck, store_path, tmp_path):
    src = make_checkpoint(tmp_path / "src")
    name = "v" * 255
    ck("init", store_path)
    ck("import", store_path, src, f"p/r/{name}")
    assert out(ck("ls", store_path, "p/r")) == name + "\n"
    assert ck("cat", store_path, f"p/r/{name}/config.json").stdout == \
        open(os.path.join(src, "config.json"), "rb").read()


def test_c1_control_character_in_a_name_is_refused(ck, store_path, tmp_path):
    src = make_checkpoint(tmp_path / "src")
    ck("init", store_path)
    proc = ck("import", store_path, src, "p/r/evil\x9b2J", rc=None)
    assert proc.returncode != 0 and "control characters" in err(proc)


def test_a_store_that_does_not_exist(ck, tmp_path):
    missing = tmp_path / "no-store"
    for proc in ck.many(("ls", missing), ("import", missing, tmp_path, "p/r/v"), rc=1):
        assert "no such store" in err(proc) and "ckptfs init" in err(proc)
    assert not missing.exists(), "a command created the missing store"


def test_a_directory_that_is_not_a_store(ck, tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    for proc in ck.many(("verify", plain), ("import", plain, tmp_path, "p/r/v"), rc=1):
        assert "is not a ckptfs store" in err(proc) and "ckptfs init" in err(proc)
    assert os.listdir(plain) == []


def test_a_store_of_a_newer_format(ck, store_path, tmp_path):
    ck("init", store_path)
    config = os.path.join(store_path, "ckptfs.toml")
    with open(config) as f:
        text = f.read()
    newer = re.sub(r"^format = 1$", "format = 99", text, flags=re.M)
    assert newer != text
    with open(config, "w") as f:
        f.write(newer)
    for proc in ck.many(("ls", store_path),
                        ("import", store_path, make_checkpoint(tmp_path / "src"), "p/r/v"),
                        rc=1):
        assert "store format 99, newer than this ckptfs supports" in err(proc)
        assert "upgrade ckptfs" in err(proc)


# -- stats and verify --------------------------------------------------------------------------
def test_stats_figures(ck, populated):
    sizes = [len(b) for src in (populated.src1, populated.src2)
             for b in source_files(src).values()]
    st = json.loads(out(ck("stats", "--json", populated.store)))
    assert st["projects"] == 1 and st["runs"] == 1 and st["versions"] == 2
    assert st["files"] == len(sizes) == 12
    assert st["logical_bytes"] == sum(sizes)
    pack_files = [os.path.join(d, n) for d, _, names in os.walk(f"{populated.store}/packs")
                  for n in names if n.endswith(".pack")]
    assert st["packs"] == len(pack_files)
    assert st["pack_bytes"] == sum(os.path.getsize(p) for p in pack_files)
    assert st["unique_bytes"] < st["logical_bytes"]          # the two versions share chunks
    assert st["dedup_ratio"] == pytest.approx(st["logical_bytes"] / st["unique_bytes"])
    text = out(ck("stats", populated.store))
    assert re.search(r"^versions: +2$", text, re.M)
    assert re.search(r"^files: +12$", text, re.M)
    assert re.search(rf"^logical bytes: +{sum(sizes) / 1e6:.1f} MB$", text, re.M)


def test_verify_on_a_healthy_store(ck, populated):
    text = out(ck("verify", populated.store))
    assert re.fullmatch(r"ok: \d+ packs, \d+ chunks, 2 versions, 12 files \([\d.]+ MB\) "
                        r"verified\n", text), text


# -- rebuild-index ---------------------------------------------------------------------------
def observe(ck, store, versions) -> dict:
    """What a user sees of a store through the CLI: its projects, its runs and versions
    in long form, stats and verify."""
    calls = {"stats": ("stats", "--json", store), "verify": ("verify", store),
             "ls": ("ls", store)}
    for ref in versions:
        p, r, _v = ref.split("/")
        calls[f"ls {p}/{r}"] = ("ls", "-l", store, f"{p}/{r}")
        calls[f"ls {ref}"] = ("ls", "-l", store, ref)
    return {key: out(proc) for key, proc in zip(calls, ck.many(*calls.values()))}


def test_rebuild_index_changes_nothing_visible(ck, store_path, tmp_path):
    sources = {"proj/run-1/step-100": make_checkpoint(tmp_path / "a", step=100),
               "proj/run-1/step-200": make_checkpoint(tmp_path / "b", step=200)}
    ck("init", store_path)
    for ref, src in sources.items():
        ck("import", store_path, src, ref)
    before = observe(ck, store_path, sources)
    assert "2 versions, 12 files" in before["verify"]
    data_file = os.path.join(store_path, "index", "data.mdb")
    old_inode = os.stat(data_file).st_ino
    proc = ck("rebuild-index", store_path)
    assert re.fullmatch(r"index rebuilt from 2 packs and the journal: 2 versions\n", out(proc))
    assert os.stat(data_file).st_ino != old_inode, "the index was not replaced"
    assert not os.path.exists(os.path.join(store_path, "index.rebuild"))
    assert not os.path.exists(os.path.join(store_path, "index.old"))
    after = observe(ck, store_path, sources)
    assert after.keys() == before.keys()
    for key in before:
        assert after[key] == before[key], f"{key} differs after rebuild-index"
    # cat of every file: before the rebuild it printed the source bytes (that is what
    # test_cat_is_byte_equal_to_every_source_file checks); after it, it still must
    wanted = {f"{ref}/{rel}": data for ref, src in sources.items()
              for rel, data in source_files(src).items()}
    assert len(wanted) == 12
    for (ref, data), proc in zip(wanted.items(),
                                 ck.many(*[("cat", store_path, ref) for ref in wanted])):
        assert proc.stdout == data, f"cat {ref} differs after rebuild-index"
