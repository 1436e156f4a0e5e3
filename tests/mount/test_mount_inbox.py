"""The writable inbox of a real mount, driven by real tools: what is copied into
`inbox/<p>/<r>/<v>/` is sealed into `projects/<p>/<r>/<v>` exactly, and what does not
belong there is refused with the right errno and a log line, without hurting the daemon."""
import ctypes
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from ckptfs.store import Store
from tests.helpers.cli import run_cli_checked
from tests.helpers.inbox import (
    REF,
    WRITE_BITS,
    a_quiet_period_passes,
    archived,
    assert_daemon_alive,
    assert_left_the_spool,
    assert_same_files,
    assert_sha256sum_checks,
    assert_sidecar_lists,
    copied_in,
    empty_version,
    inbox_state,
    mount_log,
    read,
    sh,
    stats,
    verify_ok,
    wait_sealed,
    write,
)
from tests.helpers.mounts import unmount
from tests.helpers.samples import make_checkpoint, tree_snapshot
from tests.helpers.stores import new_store
from tests.helpers.waiting import wait_for

# -- 1. real tools copy a checkpoint in; it is sealed exactly ------------------------------

def copy_cp_r(src, mnt, tmp_path):
    os.makedirs(f"{mnt}/inbox/p/r")
    return sh(f"cp -r {src} {mnt}/inbox/p/r/v1")


def copy_cp_a(src, mnt, tmp_path):
    os.makedirs(f"{mnt}/inbox/p/r")
    return sh(f"cp -a {src} {mnt}/inbox/p/r/v1")


def copy_rsync_a(src, mnt, tmp_path):
    os.makedirs(f"{mnt}/inbox/p/r")
    return sh(f"rsync -a {src}/ {mnt}/inbox/p/r/v1/")


def copy_tar_x(src, mnt, tmp_path):
    archive = tmp_path / "ckpt.tar"
    made = sh(f"tar -C {os.path.dirname(src)} -cf {archive} v1")
    assert made.returncode == 0, made.stderr
    os.makedirs(f"{mnt}/inbox/p/r")
    return sh(f"tar -C {mnt}/inbox/p/r -xf {archive}")


def copy_copytree(src, mnt, tmp_path):
    shutil.copytree(src, f"{mnt}/inbox/p/r/v1", symlinks=True)
    return subprocess.CompletedProcess("copytree", 0, "", "")


# tool -> (copy function, the mtime resolution it keeps in ns, or None: it keeps none).
# All keep modes: cp -r gives new files the source's mode minus the umask, as the source got.
COPY_TOOLS = {
    "cp -r": (copy_cp_r, None),
    "cp -a": (copy_cp_a, 1),
    "rsync -a": (copy_rsync_a, 1),
    "tar -x": (copy_tar_x, 10**9),  # the default (gnu) tar format keeps seconds
    "shutil.copytree": (copy_copytree, 1),
}


@pytest.mark.parametrize("tool", list(COPY_TOOLS))
def test_a_copied_checkpoint_is_sealed_exactly(tool, source, tmp_path, mount):
    copy, mtime_unit = COPY_TOOLS[tool]
    store = new_store(tmp_path)
    mnt = mount(store, "--seal-after", "1")
    copied = copy(source, mnt, tmp_path)
    assert copied.returncode == 0, copied.stderr
    sealed = wait_sealed(mnt)
    assert_same_files(sealed, source, mtime_unit=mtime_unit)
    if mtime_unit:  # the version directory itself too
        got, expected = os.stat(sealed), os.stat(source)
        assert got.st_mode & 0o777 == expected.st_mode & 0o777 & ~WRITE_BITS
        assert got.st_mtime_ns // mtime_unit == expected.st_mtime_ns // mtime_unit
    assert_sha256sum_checks(sealed, source)
    assert_sidecar_lists(mnt, REF, source)
    assert_left_the_spool(mnt, store)
    assert sorted(os.listdir(f"{mnt}/projects/p/r")) == ["latest", "run.json", "v1", "v1.json"]
    verify_ok(store)


def write_checkpoint_with_python(path):
    """What a training loop does: safetensors.numpy.save_file and json.dump into `path`."""
    from safetensors.numpy import save_file
    os.makedirs(os.path.join(path, "extra"))
    rng = np.random.default_rng(7)
    save_file({"w": rng.standard_normal((300, 200), dtype=np.float32),
               "b": np.arange(200, dtype=np.int64)}, os.path.join(path, "model.safetensors"))
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"hidden": 200, "layers": 1}, f)
    with open(os.path.join(path, "extra", "trainer_state.json"), "w") as f:
        json.dump({"global_step": 5}, f)


def test_save_file_and_json_written_straight_into_the_inbox_are_sealed(tmp_path, mount):
    from safetensors import safe_open
    store = new_store(tmp_path)
    mnt = mount(store, "--seal-after", "1")
    local = str(tmp_path / "local")
    write_checkpoint_with_python(local)
    write_checkpoint_with_python(f"{mnt}/inbox/p/r/v1")
    sealed = wait_sealed(mnt)
    assert_same_files(sealed, local, modes=True, mtime_unit=None)
    assert_sha256sum_checks(sealed, local)
    assert_sidecar_lists(mnt, REF, local)
    assert_left_the_spool(mnt, store)
    with safe_open(os.path.join(sealed, "model.safetensors"), "np") as got, \
            safe_open(os.path.join(local, "model.safetensors"), "np") as want:
        assert sorted(got.keys()) == ["b", "w"]
        for name in want.keys():
            assert np.array_equal(got.get_tensor(name), want.get_tensor(name))
    verify_ok(store)


# -- 2. when a version is sealed -----------------------------------------------------------

def test_a_file_held_open_keeps_its_version_in_the_inbox(tmp_path, mount):
    store, mnt, version = empty_version(tmp_path, mount, "1")
    write(f"{version}/done.bin", b"complete\n")
    first, second = os.urandom(300_000), os.urandom(200_000)
    f = open(f"{version}/weights.bin", "wb")
    try:
        f.write(first)
        f.flush()
        a_quiet_period_passes(mnt, tmp_path, "c1")
        assert os.path.isdir(version)
        assert not os.path.exists(f"{mnt}/projects/p/r/v1")
        status = run_cli_checked("status", mnt).stdout.decode()
        assert "p/r/v1: writing" in status, status
        f.write(second)
    finally:
        f.close()
    sealed = wait_sealed(mnt)
    assert read(f"{sealed}/weights.bin") == first + second
    assert read(f"{sealed}/done.bin") == b"complete\n"


def test_a_seal_marker_seals_at_once_and_is_not_archived(source, tmp_path, mount):
    store, mnt = copied_in(tmp_path, mount, "60",
                           f"mkdir -p {{mnt}}/inbox/p/r && cp -r {source} {{mnt}}/inbox/p/r/v1")
    status = run_cli_checked("status", mnt).stdout.decode()
    assert "p/r/v1: quiet" in status, status
    pending = stats(mnt)["pending_inbox_versions"]
    assert [(p["version"], p["state"]) for p in pending] == [("p/r/v1", "quiet")]
    of_mount, of_store = (json.loads(run_cli_checked("status", where, "--json").stdout)
                          for where in (mnt, store))
    assert (of_mount["mounted"], of_mount["mountpoint"]) == (True, mnt)
    assert [p["version"] for p in of_mount["pending_inbox_versions"]] == ["p/r/v1"]
    assert of_mount["stats"]["seal_failures"] == 0
    assert (of_store["mounted"], of_store["mountpoint"]) == (True, mnt)
    assert of_store["daemon_pid"] > 0 and of_store["dead_mounts"] == []
    open(f"{mnt}/inbox/p/r/v1/.seal", "w").close()
    sealed = wait_sealed(mnt, timeout=45)  # not the 60 s quiet period
    assert ".seal" not in os.listdir(sealed)
    assert_same_files(sealed, source, mtime_unit=None)
    assert_sidecar_lists(mnt, REF, source)  # lists no .seal either
    counters = stats(mnt)
    source_bytes = sum(len(info[3]) for info in tree_snapshot(source).values()
                       if info[0] == "file")
    assert counters["versions_sealed"] == 1 and counters["seal_failures"] == 0
    assert counters["bytes_in"] == source_bytes
    assert counters["pending_inbox_versions"] == []
    assert "nothing waits in the inbox" in run_cli_checked("status", mnt).stdout.decode()
    assert "sealed p/r/v1" in mount_log(store)


def test_ckptfs_seal_seals_a_version_while_mounted(source, tmp_path, mount):
    store, mnt = copied_in(tmp_path, mount, "60",
                           f"mkdir -p {{mnt}}/inbox/p/r && cp -a {source} {{mnt}}/inbox/p/r/v1")
    out = run_cli_checked("seal", store, REF, "--timeout", "20").stdout.decode()
    assert "sealed p/r/v1" in out
    sealed = wait_sealed(mnt, timeout=45)
    assert_same_files(sealed, source)
    assert_sha256sum_checks(sealed, source)
    again = run_cli_checked("seal", store, REF, rc=1)
    assert b"already sealed" in again.stderr
    verify_ok(store)


# -- 3. changes within a version before it is sealed ---------------------------------------

EDITS = r"""
set -e
mkdir -p a/b/c
printf hello > a/b/c/f.txt
printf 0123456789 > t.bin
truncate -s 4 t.bin
truncate -s 3000 grow.bin
printf abc > grow2.bin
truncate -s 10 grow2.bin
printf x > old
printf ' appended' >> old
mv old new
mkdir d1
printf y > d1/z
mv d1 d2
printf gone > gone
rm gone
mkdir empty
rmdir empty
mkdir -p tree/deep
printf z > tree/deep/f
rm -r tree
printf 'long content' > w
printf short > w
ln -s a/b/c/f.txt link
ln -s missing dangling
printf over1 > o1
printf over2 > o2
mv -f o1 o2
printf keep1 > n1
printf keep2 > n2
mv -n n1 n2
chmod 600 a/b/c/f.txt
chmod 750 a
chmod 755 t.bin
touch -d '2020-01-02 03:04:05.123456789' a/b/c/f.txt
"""


def test_edits_within_a_version_are_sealed_as_their_final_state(tmp_path, mount):
    store = new_store(tmp_path)
    mnt = mount(store, "--seal-after", "60")
    local = tmp_path / "local"
    local.mkdir()
    version = f"{mnt}/inbox/p/r/v1"
    os.makedirs(version)
    for where in (local, version):
        done = sh(EDITS, cwd=where)
        assert done.returncode == 0, f"in {where}: {done.stderr}"
    assert archived(tree_snapshot(version), mtime_unit=None) == \
        archived(tree_snapshot(local), mtime_unit=None)
    open(f"{version}/.seal", "w").close()
    sealed = wait_sealed(mnt, timeout=45)
    assert_same_files(sealed, str(local), mtime_unit=None)
    got = tree_snapshot(sealed)
    assert got["new"][3] == b"x appended" and got["t.bin"][3] == b"0123"
    assert got["grow.bin"][3] == bytes(3000) and got["grow2.bin"][3] == b"abc" + bytes(7)
    assert got["o2"][3] == b"over1" and got["n1"][3] == b"keep1" and got["n2"][3] == b"keep2"
    assert got["w"][3] == b"short" and not any(path.startswith("tree") for path in got)
    assert got["d2/z"][3] == b"y" and "d1" not in got and "gone" not in got and "old" not in got
    assert got["link"] == ("symlink", "a/b/c/f.txt") and got["dangling"] == ("symlink", "missing")
    assert got["a/b/c/f.txt"][1] & 0o777 == 0o400 and got["a"][1] & 0o777 == 0o550
    touched = tree_snapshot(local)["a/b/c/f.txt"][2]  # touch -d: kept to the nanosecond
    assert touched % 10**9 == 123456789 and got["a/b/c/f.txt"][2] == touched
    verify_ok(store)


def refuse_step_100(store: str, tmp_path):
    """A project schema the sample checkpoints (step 100) do not satisfy."""
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"properties": {"step": {"type": "integer", "minimum": 1000}}}))
    run_cli_checked("schema", "set", store, "p", schema)


def test_a_seal_that_fails_leaves_the_version_in_the_inbox_with_an_error_file(
        source, tmp_path, mount):
    store, mnt = copied_in(tmp_path, mount, "60",
                           f"mkdir -p {{mnt}}/inbox/p/r && cp -r {source} {{mnt}}/inbox/p/r/v1")
    refuse_step_100(store, tmp_path)
    open(f"{mnt}/inbox/p/r/v1/.seal", "w").close()
    error_file = f"{mnt}/inbox/p/r/v1.error"
    wait_for(lambda: os.path.exists(error_file), "the .error file")
    text = read(error_file).decode()
    assert text.startswith("sealing p/r/v1 failed: version p/r/v1 does not satisfy the "
                           "schema of project p"), text
    assert "sealing p/r/v1 failed" in mount_log(store)
    a_quiet_period_passes(mnt, tmp_path, "c1", marked=True)  # the sealer passes it again
    status = run_cli_checked("status", mnt).stdout.decode()
    assert "p/r/v1: failed" in status and "does not satisfy the schema" in status, status
    assert "failed unexpectedly" not in mount_log(store)
    assert stats(mnt)["seal_failures"] == 1 and stats(mnt)["versions_sealed"] == 1  # the canary
    assert_same_files(f"{mnt}/inbox/p/r/v1", source, mtime_unit=None)  # intact, marker gone
    assert os.listdir(f"{mnt}/projects") == ["canary"]
    assert_daemon_alive(mnt)
    # The failed unit is not tried again by itself: the next rounds of the sealer (it wakes
    # at least once a second) find nothing due. A second try used to trip over the marker
    # the first had removed.
    rounds = stats(mnt)["sealer_rounds"]
    wait_for(lambda: stats(mnt)["sealer_rounds"] >= rounds + 3, "three sealer rounds")
    assert "unexpectedly" not in mount_log(store)
    assert stats(mnt)["seal_failures"] == 1
    assert "does not satisfy the schema" in run_cli_checked("status", mnt).stdout.decode()
    # The job gives up on it: removing a version that cannot be sealed lets it go.
    assert sh(f"rm -r {mnt}/inbox/p/r/v1").returncode == 0
    assert os.listdir(f"{mnt}/inbox/p/r") == []  # its .error file went with it
    assert os.listdir(f"{mnt}/projects") == ["canary"]
    assert "nothing waits in the inbox" in run_cli_checked("status", mnt).stdout.decode()
    verify_ok(store)


def test_a_name_taken_meanwhile_gets_the_next_free_name(source, tmp_path, mount):
    store, mnt = copied_in(tmp_path, mount, "60",
                           f"mkdir -p {{mnt}}/inbox/p/r && cp -r {source} {{mnt}}/inbox/p/r/v1")
    other = make_checkpoint(tmp_path / "other" / "v1", step=200, seed=1)
    run_cli_checked("import", store, other, REF)  # the same name, taken outside the mount
    out = run_cli_checked("seal", store, REF, "--timeout", "20").stdout.decode()
    assert "sealed p/r/v1~2" in out
    assert_same_files(f"{mnt}/projects/p/r/v1~2", source, mtime_unit=None)
    assert_same_files(f"{mnt}/projects/p/r/v1", other, mtime_unit=None)  # not overwritten
    # The job finds what it wrote where it wrote it: the newest version written there.
    assert inbox_state(mnt, REF) == {"state": "sealed", "version": "p/r/v1~2"}
    assert_same_files(f"{mnt}/inbox/p/r/v1", source, mtime_unit=None)
    verify_ok(store)


def test_ckptfs_seal_reports_a_seal_that_failed(source, tmp_path, mount):
    store, mnt = copied_in(tmp_path, mount, "60",
                           f"mkdir -p {{mnt}}/inbox/p/r && cp -r {source} {{mnt}}/inbox/p/r/v1")
    refuse_step_100(store, tmp_path)
    sealing = run_cli_checked("seal", store, REF, "--timeout", "10", rc=None)
    assert os.path.isdir(f"{store}/spool/inbox/p/r/v1")  # the inbox copy was not sealed...
    assert sealing.returncode == 1, sealing.stdout  # ...and the command must say so
    assert b"does not satisfy the schema" in sealing.stderr


# -- 5. reading back before sealing ----------------------------------------------------------

def test_files_read_back_from_the_inbox_before_sealing(tmp_path, mount):
    store = new_store(tmp_path)
    mnt = mount(store, "--seal-after", "60")
    version = f"{mnt}/inbox/p/r/v1"
    os.makedirs(f"{version}/sub")
    data = os.urandom(1_000_003)
    write(f"{version}/sub/blob.bin", data)
    cat = subprocess.run(["cat", f"{version}/sub/blob.bin"], capture_output=True)
    assert cat.returncode == 0 and cat.stdout == data
    head = subprocess.run(["head", "-c", "1000", f"{version}/sub/blob.bin"], capture_output=True)
    assert head.stdout == data[:1000]
    tail = subprocess.run(["tail", "-c", "777", f"{version}/sub/blob.bin"], capture_output=True)
    assert tail.stdout == data[-777:]
    # a writer that still has the file open, and one that reads through the same handle
    with open(f"{version}/log.txt", "w+b") as f:
        f.write(b"line 1\n")
        f.flush()
        assert read(f"{version}/log.txt") == b"line 1\n"
        f.write(b"line 2\n")
        f.flush()
        f.seek(0)
        assert f.read() == b"line 1\nline 2\n"
        assert subprocess.run(["cat", f"{version}/log.txt"], capture_output=True).stdout \
            == b"line 1\nline 2\n"
    os.truncate(f"{version}/sub/blob.bin", 10)
    assert read(f"{version}/sub/blob.bin") == data[:10]
    assert os.stat(f"{version}/sub/blob.bin").st_size == 10
    assert sorted(os.listdir(version)) == ["log.txt", "sub"]


# -- 4 and 8. refusals, and the daemon survives them -----------------------------------------

@pytest.mark.parametrize("where", ["", "p"])
def test_a_file_above_the_run_directory_is_refused_with_eperm(where, tmp_path, mount, source):
    store = new_store(tmp_path)
    mnt = mount(store, "--seal-after", "1")
    parent = os.path.join(mnt, "inbox", where)
    os.makedirs(parent, exist_ok=True)
    touch = sh(f"touch {parent}/stray")
    assert touch.returncode != 0 and "Operation not permitted" in touch.stderr, touch.stderr
    cp = sh(f"cp {source}/config.json {parent}/")
    assert cp.returncode != 0 and "Operation not permitted" in cp.stderr, cp.stderr
    link = sh(f"ln -s somewhere {parent}/link")
    assert link.returncode != 0 and "Operation not permitted" in link.stderr, link.stderr
    with pytest.raises(OSError) as e:
        write(f"{parent}/by-python", b"x")
    assert e.value.errno == errno.EPERM
    shown = f"inbox/{where}" if where else "inbox"
    log = mount_log(store)
    names = ("stray", "config.json", "link", "by-python")
    for name in names:
        assert f"refused {shown}/{name}: a file cannot be written directly in {shown}" in log, log
    # Each refusal leaves an error file beside the refused path, saying why.
    assert sorted(os.listdir(parent)) == sorted(f"{name}.error" for name in names)
    assert "inbox/<project>/<run>/" in read(f"{parent}/stray.error").decode()
    status = run_cli_checked("status", mnt).stdout.decode()
    assert f"{where}/stray: refused".lstrip("/") in status, status
    for name in names:
        os.unlink(f"{parent}/{name}.error")
    assert os.listdir(parent) == []
    assert os.listdir(os.path.join(mnt, "projects")) == []
    assert_daemon_alive(mnt)


@pytest.mark.parametrize("level", ["project", "run"])
def test_a_directory_with_a_bad_name_is_refused_with_einval(level, tmp_path, mount):
    store = new_store(tmp_path)
    mnt = mount(store, "--seal-after", "1")
    parent = os.path.join(mnt, "inbox", {"project": "", "run": "p"}[level])
    os.makedirs(parent, exist_ok=True)
    control = sh(f"mkdir {parent}/\"$(printf 'bad\\001name')\"")
    assert control.returncode != 0 and "Invalid argument" in control.stderr, control.stderr
    for name in ("tab\there", "new\nline"):
        with pytest.raises(OSError) as e:
            os.mkdir(os.path.join(parent, name))
        assert e.value.errno == errno.EINVAL, (name, e.value)
    with pytest.raises(OSError) as e:  # over NAME_MAX: what any file system says
        os.mkdir(os.path.join(parent, "x" * 256))
    assert e.value.errno == errno.ENAMETOOLONG
    log = mount_log(store)
    for name in ("bad\x01name", "tab\there", "new\nline"):
        assert f"{level} {name!r} must not contain control characters" in log, log
    assert "the name is 256 bytes long; the limit is 255 bytes" in log
    ok = "x" * 255  # the longest allowed name is taken
    os.mkdir(os.path.join(parent, ok))
    assert os.listdir(parent) == [ok]
    os.rmdir(os.path.join(parent, ok))
    assert_daemon_alive(mnt)


def test_a_sealed_checkpoint_stays_read_only_where_it_was_written(source, tmp_path, mount):
    store, mnt = copied_in(tmp_path, mount, "1",
                           f"mkdir -p {{mnt}}/inbox/p/r && cp -r {source} {{mnt}}/inbox/p/r/v1")
    sealed = wait_sealed(mnt)
    sidecar = read(f"{sealed}.json")
    mkdir = sh(f"mkdir {mnt}/inbox/p/r/v1")
    assert mkdir.returncode != 0 and "File exists" in mkdir.stderr, mkdir.stderr
    with pytest.raises(FileExistsError):
        os.mkdir(f"{mnt}/inbox/p/r/v1")
    os.makedirs(f"{mnt}/inbox/p/r/v1", exist_ok=True)  # what jobs do: fine
    other = make_checkpoint(tmp_path / "other" / "v1", step=200, seed=1)
    cp = sh(f"cp -r {other} {mnt}/inbox/p/r/v1")  # into it, as into a local directory
    assert cp.returncode != 0 and "Read-only file system" in cp.stderr, cp.stderr
    with pytest.raises(OSError) as e:
        write(f"{mnt}/inbox/p/r/v1/config.json", b"{}")
    assert e.value.errno == errno.EROFS
    assert "is sealed (version v1)" in mount_log(store)
    assert sorted(os.listdir(f"{mnt}/inbox/p/r")) == ["v1"]
    assert_same_files(f"{mnt}/inbox/p/r/v1", source, mtime_unit=None)
    a_quiet_period_passes(mnt, tmp_path, "c1")  # nothing new gets sealed
    assert read(f"{sealed}.json") == sidecar
    assert sorted(os.listdir(f"{mnt}/projects/p/r")) == ["latest", "run.json", "v1", "v1.json"]
    assert_daemon_alive(mnt)
    verify_ok(store)


def test_rm_of_a_sealed_checkpoint_only_hides_it_from_the_inbox(source, tmp_path, mount):
    store, mnt = copied_in(tmp_path, mount, "1",
                           f"mkdir -p {{mnt}}/inbox/p/r && cp -r {source} {{mnt}}/inbox/p/r/v1")
    sealed = wait_sealed(mnt)
    shutil.rmtree(f"{mnt}/inbox/p/r/v1")  # what Trainer's rotation does
    assert os.listdir(f"{mnt}/inbox/p/r") == []
    assert_same_files(sealed, source, mtime_unit=None)  # the archive keeps it
    os.makedirs(f"{mnt}/inbox/p/r/v1")  # the name is free again in the working directory
    write(f"{mnt}/inbox/p/r/v1/model.safetensors", read(f"{source}/model.safetensors"))
    open(f"{mnt}/inbox/p/r/v1/.seal", "w").close()
    wait_for(lambda: os.path.isdir(f"{mnt}/projects/p/r/v1~2"), "the second v1")
    assert inbox_state(mnt, REF) == {"state": "sealed", "version": "p/r/v1~2"}
    assert os.listdir(f"{mnt}/inbox/p/r/v1") == ["model.safetensors"]
    remount = run_cli_checked("umount", mnt)
    assert remount.returncode == 0
    mnt = mount(store, "--seal-after", "1")  # hiding lasts
    assert os.listdir(f"{mnt}/inbox/p/r/v1") == ["model.safetensors"]
    verify_ok(store)


def test_mv_within_a_run_renames_and_across_runs_falls_back_to_copy(tmp_path, mount):
    store = new_store(tmp_path)
    mnt = mount(store, "--seal-after", "60")
    run = f"{mnt}/inbox/p/r"
    os.makedirs(f"{run}/v1/sub")
    os.makedirs(f"{run}/v2")
    os.makedirs(f"{mnt}/inbox/p/other")
    moved, stays, there = os.urandom(200_000), b"stays\n", b"there\n"
    write(f"{run}/v1/sub/moved.bin", moved)
    write(f"{run}/v1/stays.txt", stays)
    write(f"{run}/v2/there.txt", there)
    os.rename(f"{run}/v1/sub/moved.bin", f"{run}/v2/moved.bin")  # a local directory's rename
    assert read(f"{run}/v2/moved.bin") == moved and not os.path.exists(f"{run}/v1/sub/moved.bin")
    with pytest.raises(OSError) as e:  # rename(2) itself: across runs is cross-device
        os.rename(f"{run}/v1/stays.txt", f"{mnt}/inbox/p/other/stays.txt")
    assert e.value.errno == errno.EXDEV
    mv = sh(f"mv {run}/v1/stays.txt {mnt}/inbox/p/other/stays.txt")
    assert mv.returncode == 0, mv.stderr
    assert read(f"{mnt}/inbox/p/other/stays.txt") == stays
    # a whole checkpoint directory to a new name (Trainer's tmp-checkpoint-N once did this)
    os.rename(f"{run}/v1", f"{run}/v3")
    assert sorted(os.listdir(run)) == ["v2", "v3"]
    for v in ("v2", "v3"):
        open(f"{run}/{v}/.seal", "w").close()
    v2, v3 = wait_sealed(mnt, "p/r/v2", 15), wait_sealed(mnt, "p/r/v3", 15)
    assert tree_snapshot(v2).keys() == {"moved.bin", "there.txt"}
    assert read(f"{v2}/moved.bin") == moved and read(f"{v2}/there.txt") == there
    assert tree_snapshot(v3).keys() == {"sub"}
    assert not os.path.exists(f"{mnt}/projects/p/r/v1")
    assert_daemon_alive(mnt)
    run_cli_checked("umount", mnt)  # p/other still prepares stays.txt: its packs go
    verify_ok(store)


def test_hard_links_in_a_version_are_refused(tmp_path, mount):
    """(FIFOs, sockets and device files are kept, never sealed: test_mount_posix.py.)"""
    store, mnt, version = empty_version(tmp_path, mount, "60")
    write(f"{version}/a", b"a")
    ln = sh(f"ln {version}/a {version}/hard")
    assert ln.returncode != 0 and "Operation not permitted" in ln.stderr, ln.stderr
    assert os.listdir(version) == ["a"]
    assert_daemon_alive(mnt)


# -- 6. a daemon that dies, and one that stops cleanly -------------------------------------

WRITER = r"""
import os
import sys
path, chunk = sys.argv[1], 1 << 20
written = 0
with open(path, "wb") as f:
    for i in range(4096):
        f.write(i.to_bytes(4, "little") * (chunk // 4))
        f.flush()
        os.fsync(f.fileno())  # with the writeback cache, bytes not synced live in the kernel
        written += chunk
        print(written, flush=True)
"""


def pattern_prefix_ok(data: bytes) -> bool:
    """`data` is a prefix of what WRITER writes."""
    chunk = 1 << 20
    for start in range(0, len(data), chunk):
        piece = data[start:start + chunk]
        expected = (start // chunk).to_bytes(4, "little") * (chunk // 4)
        if piece != expected[:len(piece)]:
            return False
    return True


def force_unmount(mountpoint: str):
    with open("/proc/mounts") as f:
        mounted = any(line.split()[1] == mountpoint for line in f)
    if mounted:
        if subprocess.run(["fusermount3", "-u", mountpoint], capture_output=True).returncode:
            subprocess.run(["fusermount3", "-uz", mountpoint], capture_output=True)


def test_after_the_daemon_is_killed_the_inbox_keeps_complete_files_and_holds_the_version(
        tmp_path, mount, source):
    store = new_store(tmp_path)
    crash_mnt = str(tmp_path / "crash-mnt")
    os.mkdir(crash_mnt)
    with open(tmp_path / "daemon.out", "wb") as out:
        daemon = subprocess.Popen([sys.executable, "-m", "ckptfs", "mount", "-f", store, crash_mnt,
                                   "--seal-after", "1"], stdout=out, stderr=out)
    writer = None
    try:
        wait_for(lambda: os.path.ismount(crash_mnt) or daemon.poll() is not None, "the mount")
        assert daemon.poll() is None, read(tmp_path / "daemon.out").decode()
        version = f"{crash_mnt}/inbox/p/r/v1"
        os.makedirs(version)
        complete = ["model.safetensors", "optimizer.pt", "config.json"]
        for name in complete:
            shutil.copyfile(f"{source}/{name}", f"{version}/{name}")
        writer = subprocess.Popen([sys.executable, "-c", WRITER, f"{version}/big.bin"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for line in writer.stdout:  # mid-write: a few MB in, far from the end
            if int(line) >= 8 << 20:
                break
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(10)
        _, writer_err = writer.communicate(timeout=20)
        assert writer.returncode != 0  # its writes failed once the daemon was gone
        assert "Transport endpoint is not connected" in writer_err or \
            "Software caused connection abort" in writer_err, writer_err
    finally:
        if writer and writer.poll() is None:
            writer.kill()
            writer.wait()
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        force_unmount(crash_mnt)
    with open("/proc/mounts") as f:
        assert not any(line.split()[1] == crash_mnt for line in f)

    mnt = mount(store, "--seal-after", "1")
    version = f"{mnt}/inbox/p/r/v1"
    for name in complete:
        assert read(f"{version}/{name}") == read(f"{source}/{name}"), name
    partial = read(f"{version}/big.bin")
    assert len(partial) >= 8 << 20 and pattern_prefix_ok(partial)
    assert "inbox p/r/v1 was left by a daemon that died" in mount_log(store)
    a_quiet_period_passes(mnt, tmp_path, "c1")  # a held version is not sealed
    assert os.path.isdir(version) and not os.path.exists(f"{mnt}/projects/p/r/v1")
    status = run_cli_checked("status", mnt).stdout.decode()
    assert "p/r/v1: held" in status, status
    assert "p/r/v1" in run_cli_checked("status", store).stdout.decode()

    assert "sealed p/r/v1" in run_cli_checked("seal", store, REF, "--timeout", "20").stdout.decode()
    sealed = wait_sealed(mnt)
    for name in complete:
        assert read(f"{sealed}/{name}") == read(f"{source}/{name}"), name
    assert read(f"{sealed}/big.bin") == partial
    verify_ok(store)


def test_a_quiet_version_left_by_a_clean_unmount_is_sealed_after_remounting(
        source, tmp_path, mount):
    store, mnt = copied_in(tmp_path, mount, "60",
                           f"mkdir -p {{mnt}}/inbox/p/r && cp -a {source} {{mnt}}/inbox/p/r/v1")
    assert "unmounted" in run_cli_checked("umount", mnt).stdout.decode()
    assert not os.path.ismount(mnt)
    marker = os.path.join(store, "spool", "daemon.running")
    wait_for(lambda: not os.path.exists(marker), "the daemon to finish")
    assert not os.path.exists(f"{store}/projects")  # nothing sealed by the unmount itself
    with Store.open(store) as s:
        assert s.version_record("p", "r", "v1") is None
    assert os.path.isdir(f"{store}/spool/inbox/p/r/v1")

    mnt = mount(store, "--seal-after", "1")
    sealed = wait_sealed(mnt)
    assert_same_files(sealed, source)
    assert "left by a daemon that died" not in mount_log(store)
    verify_ok(store)


# -- 7. the store's disk fills up -------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """An 8 MB tmpfs for a store; FUSE mounts of stores on it are unmounted before it."""
    where = str(tmp_path / "small")
    os.mkdir(where)
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", where],
                          capture_output=True, text=True)
    if made.returncode:
        pytest.skip(f"cannot mount a tmpfs: {made.stderr}")
    yield where
    with open("/proc/mounts") as f:
        fuse_mounts = [line.split()[1] for line in f
                       if line.split()[0].startswith(f"ckptfs:{where}/")]
    for mountpoint in fuse_mounts:
        unmount(mountpoint)
    deadline = time.monotonic() + 10
    while subprocess.run(["umount", where], capture_output=True).returncode:
        if time.monotonic() > deadline:  # a daemon still holds files open: detach it
            subprocess.run(["umount", "-l", where], capture_output=True)
            break
        time.sleep(0.1)


def fill_the_disk(mnt: str, tmp_path):
    """Write more than the disk holds into the inbox with cp and with Python; both get
    ENOSPC: at a write, or already at the create of Python's file if cp's left no room
    for what the daemon records with a new file (which it is depends on how much the
    daemon had prepared meanwhile: both must be fine)."""
    version = f"{mnt}/inbox/p/r/v1"
    os.makedirs(version, exist_ok=True)
    big = tmp_path / "big.bin"
    write(big, os.urandom(12 << 20))
    cp = sh(f"cp {big} {version}/big.bin")
    assert cp.returncode != 0 and "No space left on device" in cp.stderr, cp.stderr
    with pytest.raises(OSError) as e:
        with open(f"{version}/more.bin", "wb") as f:
            for _ in range(12):
                f.write(os.urandom(1 << 20))
    assert e.value.errno == errno.ENOSPC
    return version


def fill_the_rest(disk: str) -> str:
    """Take the last free bytes of the disk (from outside the mount): the next create in
    the inbox cannot record anything. Returns the filler's path (it may not exist: the
    disk may be too full to create it)."""
    filler = os.path.join(disk, "filler")
    try:
        with open(filler, "wb") as f:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
    except OSError as e:
        assert e.errno == errno.ENOSPC
    return filler


def seal_a_small_version(mnt: str, tmp_path, name: str):
    src = make_checkpoint(tmp_path / "small-src" / name, step=300, scale=1)
    copied = sh(f"cp -a {src} {mnt}/inbox/p/r/{name}")
    assert copied.returncode == 0, copied.stderr
    open(f"{mnt}/inbox/p/r/{name}/.seal", "w").close()
    sealed = wait_sealed(mnt, f"p/r/{name}")
    assert_same_files(sealed, src)


@pytest.mark.parametrize("fails_at", ["write", "create"])
def test_writing_past_a_full_disk_gives_enospc_and_the_daemon_carries_on(
        small_disk, tmp_path, mount, fails_at):
    store = os.path.join(small_disk, "store")
    Store.init(store).close()
    mnt = mount(store, "--seal-after", "60")
    os.makedirs(f"{mnt}/inbox/p/r")
    seal_a_small_version(mnt, tmp_path, "v0")
    os.makedirs(f"{mnt}/inbox/p/r/v1")
    write(f"{mnt}/inbox/p/r/v1/early.txt", b"written before the disk filled")
    version = fill_the_disk(mnt, tmp_path)
    if fails_at == "create":
        # A new writer: the daemon must record it at the create, with no room left.
        filler = fill_the_rest(small_disk)
        late = sh(f"{sys.executable} -c \"open('{version}/late.bin', 'wb').write(b'x' * 65536)\"")
        assert late.returncode != 0 and "No space left on device" in late.stderr, late.stderr
        if os.path.exists(filler):
            os.unlink(filler)
    assert_daemon_alive(mnt)
    assert sorted(os.listdir(f"{mnt}/projects/p/r")) == ["latest", "run.json", "v0", "v0.json"]
    assert read(f"{version}/early.txt") == b"written before the disk filled"
    rm = sh(f"rm -f {version}/big.bin {version}/more.bin {version}/late.bin")
    assert rm.returncode == 0, rm.stderr
    assert sorted(os.listdir(f"{mnt}/inbox/p/r")) == ["v0", "v1"]
    assert os.listdir(version) == ["early.txt"]
    leftovers = [p for p in sh(f"find {store}/spool -name '*.tmp*'").stdout.split()]
    assert leftovers == [], leftovers  # a record the full disk cut short is not left behind
    seal_a_small_version(mnt, tmp_path, "v2")
    assert sorted(os.listdir(f"{mnt}/projects/p/r")) == [
        "latest", "run.json", "v0", "v0.json", "v2", "v2.json"]
    assert read(f"{version}/early.txt") == b"written before the disk filled"
    run_cli_checked("umount", mnt)  # packs filled ahead of v1's seal go with the daemon
    wait_for(lambda: not os.path.exists(f"{store}/spool/daemon.running"), "the daemon to stop")
    verify_ok(store)


def test_a_version_cut_short_by_a_full_disk_is_held_not_sealed(small_disk, tmp_path, mount):
    store = os.path.join(small_disk, "store")
    Store.init(store).close()
    mnt = mount(store, "--seal-after", "1")
    version = fill_the_disk(mnt, tmp_path)

    def held():  # v1/big.bin, or v1 if more.bin got written too
        status = run_cli_checked("status", mnt).stdout.decode()
        return re.search(r"p/r/v1\S*: held", status)
    wait_for(held, "the cut-short version to be held")
    assert_daemon_alive(mnt)
    assert os.listdir(f"{mnt}/projects") == []
    assert sh(f"rm -r {version}").returncode == 0  # the job gives up on it: it goes
    assert "nothing waits in the inbox" in run_cli_checked("status", mnt).stdout.decode()
    seal_a_small_version(mnt, tmp_path, "v2")
    verify_ok(store)


# -- bugs found along the way ------------------------------------------------------------------

def test_rename_exchange_swaps_two_files_or_is_refused(tmp_path, mount):
    store, mnt, version = empty_version(tmp_path, mount, "60")
    write(f"{version}/a", b"AAA")
    write(f"{version}/b", b"BBB")
    libc = ctypes.CDLL(None, use_errno=True)
    rename_exchange = 2
    result = libc.renameat2(-100, f"{version}/a".encode(), -100, f"{version}/b".encode(),
                            rename_exchange)
    # What the daemon holds, read from its spool (not through the kernel's cached names)
    spool = os.path.join(store, "spool", "inbox", "p", "r", "v1")
    held = {name: read(os.path.join(spool, name)) for name in os.listdir(spool)}
    if result == 0:
        assert held == {"a": b"BBB", "b": b"AAA"}
    else:
        assert ctypes.get_errno() in (errno.EINVAL, errno.ENOTSUP, errno.ENOSYS)
        assert held == {"a": b"AAA", "b": b"BBB"}


@pytest.mark.parametrize("name, version", [("latest", "latest~2"), ("v1.json", "v1.json_")])
def test_a_directory_named_like_latest_or_a_sidecar_gets_a_version_name_of_its_own(
        name, version, tmp_path, mount):
    store = new_store(tmp_path)
    mnt = mount(store, "--seal-after", "60")
    run = f"{mnt}/inbox/p/r"
    os.makedirs(f"{run}/v1")
    write(f"{run}/v1/f", b"one")
    run_cli_checked("seal", store, REF, "--timeout", "20")
    wait_sealed(mnt, timeout=45)
    os.mkdir(f"{run}/{name}")
    write(f"{run}/{name}/f", b"two")
    out = run_cli_checked("seal", store, f"p/r/{name}", "--timeout", "20").stdout.decode()
    assert f"sealed p/r/{version}" in out
    listing = os.listdir(f"{mnt}/projects/p/r")
    assert len(listing) == len(set(listing)), listing
    assert read(f"{mnt}/projects/p/r/{version}/f") == b"two"
    assert read(f"{run}/{name}/f") == b"two"  # where the job wrote it
    assert read(f"{mnt}/projects/p/r/v1/f") == b"one"
    assert json.loads(read(f"{mnt}/projects/p/r/v1.json"))["version"] == "v1"


def test_a_renamed_file_or_directory_is_usable_at_once_under_its_new_name(tmp_path, mount):
    store, mnt, version = empty_version(tmp_path, mount, "60")
    done = sh("set -e; printf x > a; mv a b; cat b; chmod 600 b; printf more >> b; "
              "mkdir d1; mv d1 d2; printf y > d2/z; mv d2 d3; ls d3", cwd=version)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "xz\n"
    open(f"{version}/.seal", "w").close()
    sealed = wait_sealed(mnt, timeout=45)
    got = tree_snapshot(sealed)
    assert got["b"][1] & 0o777 == 0o400 and got["b"][3] == b"xmore"
    assert got["d3/z"][3] == b"y" and sorted(got) == ["b", "d3", "d3/z"]


def test_new_files_get_the_writers_mode_whatever_the_daemons_umask(tmp_path, mount):
    store = new_store(tmp_path)
    old = os.umask(0o077)  # the user who runs `ckptfs mount` has a strict umask
    try:
        mnt = mount(store, "--seal-after", "60")
    finally:
        os.umask(old)
    made = sh(f"umask 022 && mkdir -p {mnt}/inbox/p/r/v1/sub && printf x > {mnt}/inbox/p/r/v1/f")
    assert made.returncode == 0, made.stderr
    version = f"{mnt}/inbox/p/r/v1"
    modes = {name: os.stat(f"{version}/{name}").st_mode & 0o777 for name in ("sub", "f")}
    assert modes == {"sub": 0o755, "f": 0o644}


def test_seal_of_a_folder_seals_every_unit_below_it(tmp_path, mount):
    """`ckptfs seal P/R/DIR` where DIR is no unit itself (a folder holding a checkpoint
    file, and logs): every unit below DIR is sealed; it used to wait for its timeout."""
    store = new_store(tmp_path)
    mnt = mount(store, "--seal-after", "600")
    os.makedirs(f"{mnt}/inbox/p/r/out/logs")
    with open(f"{mnt}/inbox/p/r/out/model.pt", "wb") as f:
        f.write(os.urandom(4096))
    with open(f"{mnt}/inbox/p/r/out/logs/train.log", "w") as f:
        f.write("step 1\n")
    out = run_cli_checked("seal", store, "p/r/out", "--timeout", "20").stdout.decode()
    assert out.startswith("sealed "), out
    versions = set(os.listdir(f"{mnt}/projects/p/r"))
    assert {"model", "out"} <= versions, versions  # out: the folder holding the logs
    assert "nothing waits in the inbox" in run_cli_checked("status", mnt).stdout.decode()
    unmount(mnt)
    # Without a daemon, the same request is served here.
    os.makedirs(tmp_path / "again")
    offline = new_store(tmp_path / "again")
    mnt = mount(offline, "--seal-after", "600")
    os.makedirs(f"{mnt}/inbox/p/r/out")
    with open(f"{mnt}/inbox/p/r/out/model.pt", "wb") as f:
        f.write(os.urandom(4096))
    unmount(mnt)
    out = run_cli_checked("seal", offline, "p/r/out").stdout.decode()
    assert "sealed p/r/out/model.pt" in out, out
