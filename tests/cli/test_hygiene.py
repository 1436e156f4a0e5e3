"""Nothing leaked, nothing crashes: a store is private to its owner, sidecars keep no
secrets, every name follows one rule, and no user error ends in a traceback (issue #13)."""
import os
import re
import signal
import stat
import subprocess

import pytest

from tests.helpers import hygiene as helpers
from tests.helpers.cli import run_cli_checked, run_cli_many
from tests.helpers.hygiene import BAD_NAMES, NFD_E, readable_by_others, write_file

open_umask = helpers.open_umask  # a fixture (tests/helpers/hygiene.py)


def read_bytes(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def test_a_shared_store_is_private_too(tmp_path, open_umask):
    store = str(tmp_path / "store")
    run_cli_checked("init", "--shared", store)
    src = tmp_path / "ckpt"
    write_file(str(src / "model.bin"))
    run_cli_checked("import", store, src, "p/r/v1")
    assert readable_by_others(store) == []


def test_a_group_shared_store_grants_its_group_and_nobody_else(tmp_path, open_umask):
    """The documented group share (docs/access.md): once the owner opens the store's
    directories to a group, what ckptfs creates later is the group's too, never others'."""
    store = str(tmp_path / "store")
    run_cli_checked("init", store)
    for root, dirs, _files in os.walk(store):
        for path in [root, *(os.path.join(root, d) for d in dirs)]:
            os.chmod(path, 0o770)
    src = tmp_path / "ckpt"
    write_file(str(src / "model.bin"), os.urandom(100_000))
    run_cli_checked("import", store, src, "p/r/v1")
    packs = [os.path.join(root, f) for root, _d, files in os.walk(os.path.join(store, "packs"))
             for f in files]
    # 0660 less the umask (022 here; the group share asks for 002)
    assert packs and all(stat.S_IMODE(os.stat(p).st_mode) == 0o640 for p in packs)
    for root, dirs, files in os.walk(store):
        for name in [*dirs, *files]:
            assert not os.lstat(os.path.join(root, name)).st_mode & 0o007, name


# -- 3. one name rule, everywhere ----------------------------------------------------------
NFC_E = "\u00e9"         # é, one code point


@pytest.fixture
def small_store(tmp_path):
    store = str(tmp_path / "store")
    run_cli_checked("init", store)
    src = tmp_path / "ckpt"
    write_file(str(src / "model.bin"))
    run_cli_checked("import", store, src, "p/r/v1")
    return store, str(src)


def one_error_line(proc) -> str:
    lines = proc.stderr.decode(errors="replace").strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ckptfs: error: "), lines
    return lines[0]


@pytest.mark.parametrize("label", list(BAD_NAMES))
def test_a_bad_name_is_refused_by_every_command_with_the_rule(label, small_store):
    store, src = small_store
    bad = BAD_NAMES[label]
    calls = [("import", store, src, "--", f"{bad}/r/v2"),
             ("import", store, src, "--", f"p/{bad}/v2"),
             ("import", store, src, "--", f"p/r/{bad}"),
             ("tag", store, "--", "p/r/v1", bad),
             ("ls", store, "--", f"p/{bad}"),
             ("diff", store, "--", f"{bad}/r/v1", "p/r/v1"),
             ("diff", store, "--", "p/r/v1", f"p/r/{bad}"),
             ("retention", "set", store, "--", f"p/{bad}", "keep_last=3")]
    if bad != "*":  # for access and project settings `*` is every project, on purpose
        calls += [("access", "grant", store, "--", bad, "reader", "user:root"),
                  ("config", "set", store, "--", bad, "mode=max")]
    for args, proc in zip(calls, run_cli_many(*calls, rc=None)):
        line = one_error_line(proc)
        assert "names are printable Unicode (NFC)" in line, (args, line)
    tags = run_cli_checked("tags", store, "p/r").stdout.decode()
    assert bad not in tags
    assert run_cli_checked("ls", store).stdout.decode().split() == ["p"]


def test_nfc_and_nfd_twins_are_one_name(small_store):
    store, src = small_store
    run_cli_checked("import", store, src, f"p/{NFC_E}/v1")
    line = one_error_line(run_cli_checked("ls", store, f"p/{NFD_E}", rc=1))
    assert "not in Unicode normal form NFC" in line
    assert run_cli_checked("ls", store, "p").stdout.decode().split() == ["r", NFC_E]


def test_an_argument_that_is_not_utf8_is_one_line_and_records_nothing(small_store):
    store, _src = small_store
    bad = os.fsdecode(b"\xff")
    journal = os.path.join(store, "journal", "journal.jsonl")
    before = read_bytes(journal)
    for args in [("config", "set", store, "p", f"primary_metric={bad}"),
                 ("config", "set", store, "p", f"env_allow=HOME,{bad}"),
                 ("find", store, "--sort", bad),
                 ("find", store, f"a == {bad}")]:
        proc = run_cli_checked(*args, rc=None)
        assert proc.returncode in (1, 2), args
        assert "Traceback" not in proc.stderr.decode(errors="replace")
    assert read_bytes(journal) == before
    assert run_cli_checked("config", "show", store, "p").stdout.decode().strip() == "{}"


def test_a_store_whose_path_is_not_utf8_works(tmp_path):
    """Linux paths are bytes: a store directory whose name is not UTF-8 is a store."""
    store = os.fsdecode(os.fsencode(str(tmp_path)) + b"/st\xff")
    src = tmp_path / "ckpt"
    write_file(str(src / "model.bin"))
    run_cli_checked("init", store)
    run_cli_checked("import", store, src, "p/r/v1")
    assert run_cli_checked("ls", store, "p/r").stdout.decode().split() == ["v1"]


def test_a_weights_file_whose_name_is_not_utf8_is_archived(small_store, tmp_path):
    """File names are bytes on Linux and the manifest keeps them; the metadata that names
    weights files (extracted facts, the pickle scan) must not crash the index."""
    store, _src = small_store
    src = tmp_path / "odd"
    name = os.fsencode(str(src)) + b"/w\xffeights.bin"
    write_file(name, b"not a pickle at all")
    run_cli_checked("import", store, src, "p/r/v2")
    out = tmp_path / "out"
    run_cli_checked("get", store, "p/r/v2", out)
    assert os.listdir(os.fsencode(str(out))) == [b"w\xffeights.bin"]


# -- 4. no tracebacks ----------------------------------------------------------------------
def test_find_with_a_thousand_ands_answers(small_store):
    store, _src = small_store
    every = " and ".join(["project == p"] * 1000)
    out = run_cli_checked("find", store, every, "--format", "paths").stdout.decode()
    assert out.split() == ["projects/p/r/v1"]
    out = run_cli_checked("find", store, "not " * 3001 + "project == p", "--format",
                          "paths").stdout.decode()
    assert out.split() == []   # an odd number of nots


def test_find_nested_too_deeply_says_so_in_one_line(small_store):
    store, _src = small_store
    deep = "(project == p and " * 300 + "project == p" + ")" * 300
    proc = run_cli_checked("find", store, deep, rc=2)
    assert "nested too deeply (more than 100 levels of parentheses)" in proc.stderr.decode()


CONFIG_DAMAGE = [
    ('avg_size = 1048576', 'avg_size = "big"',
     "chunking.avg_size must be a whole number from 256 to 4194304, not 'big'"),
    ('avg_size = 1048576', 'avg_size = 0',
     "chunking.avg_size must be a whole number from 256 to 4194304, not 0"),
    ('min_size = 262144', 'min_size = 2097152',
     "chunking.min_size must be a whole number from 64 to 1048576"),
    ('max_size = 4194304', 'max_size = 4096',
     "chunking.min_size, avg_size, max_size must be in increasing order"),
    ('level = 3', 'level = 99', "compression.level must be a whole number from -7 to 22"),
    ('delta = true', 'delta = "yes"', "compression.delta must be true or false"),
    ('target_size = 134217728', 'target_sise = 134217728',
     "packs.target_sise is not a setting (known: target_size)"),
    ('chunk_id_key = "', 'chunk_id_key = "zz', "secret.chunk_id_key must be 64 hexadecimal"),
    ('chunk_id_key = "', 'chunk_id_key = 42 # "',
     "secret.chunk_id_key must be 64 hexadecimal digits"),
    ('[gc]', '[gc', "is not valid TOML: Expected ']' at the end of a table declaration"),
]


@pytest.mark.parametrize("old,new,message", CONFIG_DAMAGE,
                         ids=[new for _old, new, _m in CONFIG_DAMAGE])
def test_a_bad_setting_is_named_with_its_rule(old, new, message, small_store, tmp_path):
    store, src = small_store
    config = os.path.join(store, "ckptfs.toml")
    text = read_bytes(config).decode()
    assert old in text
    with open(config, "w") as f:
        f.write(text.replace(old, new, 1))
    for args in [("import", store, src, "p/r/v2"), ("ls", store)]:
        line = one_error_line(run_cli_checked(*args, rc=1))
        assert message in line and "ckptfs.toml" in line, line
    with open(config, "w") as f:   # nothing was lost: the right setting makes it whole
        f.write(text)
    assert run_cli_checked("ls", store, "p/r").stdout.decode().split() == ["v1"]


def test_a_run_or_project_that_is_not_there_is_an_error(small_store):
    store, _src = small_store
    calls = {("tags", store, "p/nosuch"): "no run 'p/nosuch' in the store",
             ("tags", store, "nosuch/r"): "no run 'nosuch/r' in the store",
             ("log", store, "nosuch"): "no project 'nosuch' in the store",
             ("log", store, "p/nosuch"): "no run 'p/nosuch' in the store"}
    for args, proc in zip(calls, run_cli_many(*calls, rc=1)):
        assert calls[args] in one_error_line(proc)
    assert "v1" in run_cli_checked("log", store, "p/r", "--oneline").stdout.decode()


def mounted_at(mountpoint: str) -> bool:
    """From /proc/self/mountinfo: a stat of a mount point whose daemon hangs would hang."""
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == os.path.realpath(mountpoint) for line in f)


def mount_expecting_refusal(store: str, mountpoint: str, *options, rc: int):
    """`ckptfs mount` that must be refused. Should it mount all the same (a regression),
    its daemon is killed and the mount detached, so the failing test cannot hang."""
    proc = run_cli_checked("mount", store, mountpoint, *options, rc=None)
    if mounted_at(mountpoint):
        pid = re.search(rb"daemon pid (\d+)", proc.stdout)
        if pid:
            os.kill(int(pid.group(1)), signal.SIGKILL)
        subprocess.run(["fusermount3", "-uz", mountpoint], capture_output=True, check=False)
        raise AssertionError(f"ckptfs mount {store} {mountpoint} {options} was not refused")
    assert proc.returncode == rc, proc
    return proc


def test_a_mount_over_or_inside_the_store_is_refused(small_store, tmp_path):
    """Either would hide the store's files from its own daemon, which then hangs."""
    store, _src = small_store
    inside = os.path.join(store, "packs")
    for mountpoint in (str(tmp_path), inside):
        line = one_error_line(mount_expecting_refusal(store, mountpoint, rc=1))
        assert "choose a mount point outside the store's directory" in line


@pytest.mark.parametrize("value", ["-5", "nan", "inf", "soon"])
def test_a_bad_duration_is_a_usage_error(value, small_store, tmp_path):
    store, _src = small_store
    (tmp_path / "mnt").mkdir()
    proc = mount_expecting_refusal(store, str(tmp_path / "mnt"), "--seal-after", value, rc=2)
    assert "--seal-after" in proc.stderr.decode()
    run_cli_checked("seal", store, "p/r", "--timeout", value, rc=2)


@pytest.mark.parametrize("rule", ["keep_last=99999999999999999999999", "max_age_days=1e300",
                                  "keep_best=99999999999999999999 metric=loss mode=min"])
def test_a_retention_value_too_large_is_refused(rule, small_store):
    store, _src = small_store
    line = one_error_line(run_cli_checked("retention", "set", store, "p", *rule.split(), rc=1))
    assert "must be at most" in line


@pytest.mark.parametrize("args", [
    ("ls", "{missing}"), ("ls", "{file}"), ("stats", "{file}"), ("verify", "{missing}"),
    ("log", "{file}"), ("tags", "{missing}", "p/r"), ("find", "{file}", "a == 1"),
    ("status", "{missing}"), ("gc", "{file}"), ("audit", "verify", "{missing}"),
    ("init", "{file}"), ("import", "{missing}", "{file}", "p/r/v1"),
])
def test_a_store_that_is_missing_or_a_file_is_one_line(args, tmp_path):
    write_file(str(tmp_path / "file"))
    names = {"missing": str(tmp_path / "nosuch"), "file": str(tmp_path / "file")}
    one_error_line(run_cli_checked(*(a.format(**names) for a in args), rc=1))
