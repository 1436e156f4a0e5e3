"""Nothing leaked, nothing crashes: a store is private to its owner, sidecars keep no
secrets, every name follows one rule, and no user error ends in a traceback (issue #13)."""
import errno
import os
import stat
import time

import pytest
from conftest import run_cli_checked, run_cli_many

from ckptfs.store import Store


def wait_for(predicate, what: str, timeout: float = 60.0):
    """Poll until `predicate()` is true; fail after a generous deadline."""
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)
    return result


def write_file(path, data: bytes = b"x" * 1000):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


@pytest.fixture
def open_umask():
    """The usual umask (022): whatever a process creates is world-readable unless it
    asks otherwise, so a test can see that the store asks."""
    old = os.umask(0o022)
    yield
    os.umask(old)


# -- 1. a store is private ---------------------------------------------------------------
def readable_by_others(store: str) -> list[str]:
    """Paths under `store` with any group or world permission bit, except below
    spool/inbox/, which keeps the modes writers asked for (the mount shows them)."""
    inbox = os.path.join(store, "spool", "inbox")
    found = []
    for root, dirs, files in os.walk(store):
        for name in [*dirs, *files]:
            path = os.path.join(root, name)
            if path.startswith(inbox + os.sep):
                continue
            if stat.S_IMODE(os.lstat(path).st_mode) & 0o077:
                found.append(f"{oct(stat.S_IMODE(os.lstat(path).st_mode))} {path}")
    if stat.S_IMODE(os.lstat(store).st_mode) & 0o077:
        found.append(store)
    return found


def test_a_store_is_private_whatever_the_umask(tmp_path, mount, open_umask):
    store = str(tmp_path / "store")
    run_cli_checked("init", store)
    src = tmp_path / "ckpt"
    write_file(str(src / "model.bin"), os.urandom(300_000))
    run_cli_checked("import", store, src, "p/r/v1")
    run_cli_checked("import", store, src, "p/r/v2")
    mnt = mount(store, "--seal-after", "3600")
    write_file(f"{mnt}/inbox/p/r2/step-1/model.bin", os.urandom(200_000))
    run_cli_checked("seal", store, "p/r2/step-1")
    wait_for(lambda: os.path.isdir(f"{mnt}/projects/p/r2/step-1"), "the seal to show")
    run_cli_checked("delete", store, "p/r/v1", "--reason", "test")
    run_cli_checked("gc", store)
    assert readable_by_others(store) == []


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
NFD_E = "e\u0301"        # é, e + combining acute: looks the same, is not the same bytes
BAD_NAMES = {
    "not UTF-8": os.fsdecode(b"r\xff"),           # how Python hands over the byte 0xff
    "bidi override": "model\u202egpj.exe",
    "zero-width space": "a\u200bb",
    "not NFC": NFD_E,
    "star": "*",
    "leading dash": "-rf",
    "leading space": " run",
    "trailing space": "run ",
    "line separator": "a\u2028b",
}


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


@pytest.mark.parametrize("label", ["not UTF-8", "bidi override", "not NFC", "star",
                                   "leading dash", "trailing space"])
def test_the_inbox_refuses_a_bad_name_with_einval_and_a_log_line(label, tmp_path, mount):
    store = str(tmp_path / "store")
    run_cli_checked("init", store)
    mnt = mount(store, "--seal-after", "3600")
    bad = os.fsencode(BAD_NAMES[label])
    # (below inbox/p/r/ is the job's own output: its names become version names through
    # the layout, which falls back to a valid one; docs/mount.md)
    for parent in (b"", b"p/"):
        if parent:
            os.makedirs(os.path.join(mnt, "inbox", os.fsdecode(parent)), exist_ok=True)
        with pytest.raises(OSError) as refused:
            os.mkdir(os.path.join(os.fsencode(mnt), b"inbox/" + parent + bad))
        assert refused.value.errno == errno.EINVAL, (parent, refused.value)

    def logged():
        with open(os.path.join(store, "logs", "mount.log"), errors="replace") as f:
            return f.read().count("names are printable Unicode (NFC)") >= 2
    wait_for(logged, "the refusals in the mount log")
    assert sorted(os.listdir(f"{mnt}/inbox")) == ["p"]
