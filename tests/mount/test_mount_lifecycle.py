"""The mount's life: one daemon per store, a daemon that dies, and what the commands say
about the dead mount it leaves (docs/mount.md, "One mount per store" and "Stopping and
recovery")."""
import os
import signal
import subprocess
import sys

import pytest
from tests.helpers.cli import run_cli_checked
from tests.helpers.mounts import unmount
from tests.helpers.waiting import wait_for

from ckptfs.store import Store


def new_store(tmp_path, name="store") -> str:
    path = str(tmp_path / name)
    Store.init(path).close()
    return path


def in_mountinfo(path: str) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


def stat_errno(path: str) -> int | None:
    try:
        os.stat(path)
        return None
    except OSError as e:
        return e.errno


def write(path, data: bytes):
    with open(path, "wb") as f:
        f.write(data)


def read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def mount_with_pid(store: str, mountpoint, *options) -> int:
    """Mount with the real `ckptfs mount`; the pid of the daemon it says it started."""
    import re
    said = run_cli_checked("mount", store, mountpoint, *options).stdout.decode()
    return int(re.search(r"daemon pid (\d+)", said).group(1))


def stats(mnt: str) -> dict:
    import json
    with open(os.path.join(mnt, ".ckptfs", "stats.json")) as f:
        return json.load(f)


def is_dead(mountpoint: str) -> bool:
    import errno
    return stat_errno(mountpoint) in (errno.ENOTCONN, errno.ECONNABORTED)


@pytest.fixture
def dead_mount(tmp_path):
    """A store whose daemon was SIGKILLed with a checkpoint in its inbox: (store, the dead
    mount point). The dead mount is detached in teardown whatever the test did."""
    store = new_store(tmp_path)
    mnt = str(tmp_path / "dead")
    os.mkdir(mnt)
    pid = mount_with_pid(store, mnt, "--seal-after", "60")
    os.makedirs(f"{mnt}/inbox/p/r/v1")
    write(f"{mnt}/inbox/p/r/v1/model.bin", b"weights" * 1000)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: is_dead(mnt), "the mount to be left dead")
    wait_for(lambda: not os.path.exists(f"/proc/{pid}") or _zombie(pid), "the daemon to die")
    yield store, mnt
    if in_mountinfo(mnt):
        subprocess.run(["umount", "-l", mnt], capture_output=True)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


# -- one daemon per store ----------------------------------------------------------------------

def second_daemon(store: str, where) -> subprocess.CompletedProcess:
    """Start a foreground daemon for `store` at `where` and wait until it exits or mounts
    (then it is unmounted, and the test fails: it should have been refused)."""
    proc = subprocess.Popen([sys.executable, "-m", "ckptfs", "mount", "-f", store, str(where)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(lambda: proc.poll() is not None or in_mountinfo(str(where)),
             "the second daemon to exit or mount")
    if proc.poll() is None:
        unmount(str(where))
        proc.wait()
        pytest.fail(f"a second daemon mounted {store} at {where}")
    out, err = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_a_second_mount_of_a_store_is_refused_naming_the_first_mount_point(tmp_path, mount):
    store = new_store(tmp_path)
    first = mount(store)
    second = tmp_path / "second"
    second.mkdir()
    refused = run_cli_checked("mount", store, second, rc=None)
    if in_mountinfo(str(second)):
        unmount(str(second))
        pytest.fail("the second mount of the store succeeded")
    said = refused.stderr.decode()
    assert refused.returncode == 1, said
    assert said.startswith("ckptfs: error: ") and said.count("\n") == 1, said
    assert f"already mounted at {first}" in said, said
    # The first mount is untouched and still serves.
    os.makedirs(f"{first}/inbox/p/r/v1")
    write(f"{first}/inbox/p/r/v1/a.bin", b"a")
    assert read(f"{first}/inbox/p/r/v1/a.bin") == b"a"


def test_a_second_foreground_daemon_is_refused_before_it_touches_the_spool(tmp_path, mount):
    """Not only the command's early check: the daemon itself holds the lock, and a second
    one stops before it recovers anything (it would clear the first one's staging)."""
    store = new_store(tmp_path)
    first = mount(store)
    staging = os.path.join(store, "spool", "staging", "keep")
    os.makedirs(staging)  # what a live daemon's seal reads
    second = tmp_path / "second"
    second.mkdir()
    from ckptfs.spool import daemon as daemonlock
    with pytest.raises(daemonlock.StoreBusy) as refused:
        daemonlock.acquire(store, "daemon", str(second))
    assert f"already mounted at {first}" in str(refused.value)
    said = second_daemon(store, second)
    assert said.returncode == 1 and b"Traceback" not in said.stderr, said.stderr
    assert f"already mounted at {first}".encode() in said.stderr, said.stderr
    assert os.path.isdir(staging)


def test_the_lock_of_a_killed_daemon_is_free_and_the_store_mounts_again(dead_mount, tmp_path,
                                                                       mount):
    store, dead = dead_mount
    run_cli_checked("umount", dead)
    again = mount(store, "--seal-after", "60")
    assert read(f"{again}/inbox/p/r/v1/model.bin") == b"weights" * 1000


def test_ckptfs_seal_seals_here_when_a_dead_daemons_pid_was_given_to_another(tmp_path):
    """`ckptfs seal` decides by the lock, not by a pid file: a stale `daemon.running` whose
    pid is alive (pid reuse) does not send the request to a daemon that is not there."""
    store = new_store(tmp_path)
    spooled = os.path.join(store, "spool", "inbox", "p", "r", "v1")
    os.makedirs(spooled)
    write(f"{spooled}/model.bin", b"w" * 100)
    with open(os.path.join(store, "spool", "daemon.running"), "w") as f:
        f.write(str(os.getpid()))  # a dead daemon's marker; its pid now someone else's
    sealed = run_cli_checked("seal", store, "p/r/v1", "--timeout", "20").stdout.decode()
    assert "sealed p/r" in sealed, sealed
    with Store.open(store) as s:
        assert s.version_record("p", "r", "v1") is not None


def test_status_of_a_store_names_the_mount_point_of_its_daemon(tmp_path, mount):
    store = new_store(tmp_path)
    mnt = str(tmp_path / "mnt")
    os.mkdir(mnt)
    pid = mount_with_pid(store, mnt)
    try:
        out = run_cli_checked("status", store).stdout.decode()
        assert f"mounted at {mnt} by daemon pid {pid}" in out, out
    finally:
        unmount(mnt)


# -- a daemon that died --------------------------------------------------------------------

def test_status_of_a_dead_mount_says_the_daemon_died_and_how_to_recover(dead_mount):
    store, mnt = dead_mount
    said = run_cli_checked("status", mnt, rc=1).stderr.decode()
    assert "daemon" in said and "died" in said and f"ckptfs umount {mnt}" in said, said
    assert said.count("\n") == 1, said
    store_said = run_cli_checked("status", store).stdout.decode()
    assert f"a dead mount of it is left at {mnt}" in store_said, store_said
    assert "p/r/v1" in store_said, store_said


def test_umount_of_a_dead_mount_detaches_it(dead_mount):
    _store, mnt = dead_mount
    out = run_cli_checked("umount", mnt).stdout.decode()
    assert "detached" in out and mnt in out, out
    assert not in_mountinfo(mnt)
    assert os.path.isdir(mnt) and os.listdir(mnt) == []
    assert run_cli_checked("umount", mnt, rc=1).stderr.decode() == \
        f"ckptfs: error: {mnt} is not mounted\n"


def test_mount_onto_the_dead_mount_of_the_same_store_detaches_it_and_mounts(dead_mount):
    store, mnt = dead_mount
    out = run_cli_checked("mount", store, mnt, "--seal-after", "60").stdout.decode()
    try:
        assert "detached the dead mount" in out and f"mounted {store} at {mnt}" in out, out
        assert read(f"{mnt}/inbox/p/r/v1/model.bin") == b"weights" * 1000
        status = run_cli_checked("status", mnt).stdout.decode()
        assert "p/r/v1: held" in status, status
    finally:
        unmount(mnt)


def test_mount_onto_a_dead_mount_of_another_store_is_refused(dead_mount, tmp_path):
    _store, mnt = dead_mount
    other = new_store(tmp_path, "other")
    said = run_cli_checked("mount", other, mnt, rc=1).stderr.decode()
    assert f"ckptfs umount {mnt}" in said and "dead" in said, said
    assert is_dead(mnt)  # left as it was: not ours to detach


def test_an_offline_seal_holds_the_store_against_a_mount_and_another_seal(tmp_path):
    """`ckptfs seal` with no daemon seals in its own process: while it does, a daemon
    starting would recover (clear, discard) what it is using, so the mount waits its turn."""
    from ckptfs.spool import daemon as daemonlock
    store = new_store(tmp_path)
    spooled = os.path.join(store, "spool", "inbox", "p", "r", "v1")
    os.makedirs(spooled)
    write(f"{spooled}/model.bin", b"w" * 100)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with daemonlock.acquire(store, daemonlock.SEAL):  # what `ckptfs seal` holds
        said = run_cli_checked("mount", store, mnt, rc=1).stderr.decode()
        assert "is busy: `ckptfs seal`" in said and said.count("\n") == 1, said
        assert not in_mountinfo(str(mnt))
        said = run_cli_checked("seal", store, "p/r/v1", rc=1).stderr.decode()
        assert "is busy: `ckptfs seal`" in said, said
    assert "sealed p/r" in run_cli_checked("seal", store, "p/r/v1").stdout.decode()


def test_ckptfs_seal_waiting_on_a_daemon_that_dies_says_so(tmp_path):
    """`ckptfs seal` handed its request to the daemon; the daemon dies before taking it:
    the seal says so rather than waiting out its timeout."""
    store = new_store(tmp_path)
    mnt = str(tmp_path / "mnt")
    os.mkdir(mnt)
    pid = mount_with_pid(store, mnt, "--seal-after", "60")
    seal = None
    try:
        os.makedirs(f"{mnt}/inbox/p/r/v1")
        write(f"{mnt}/inbox/p/r/v1/model.bin", b"w" * 100)
        # Stopped idle, not in the middle of preparing the file (the store's locks free).
        wait_for(lambda: stats(mnt)["files_prepared"] == 1, "the file prepared ahead")
        os.kill(pid, signal.SIGSTOP)  # alive, holding its lock, taking no request
        seal = subprocess.Popen([sys.executable, "-m", "ckptfs", "seal", store, "p/r/v1",
                                 "--timeout", "3600"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        requests = os.path.join(store, "spool", "requests")
        wait_for(lambda: os.path.isdir(requests) and os.listdir(requests) or seal.poll() is not None,
                 "the request to the daemon")
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: seal.poll() is not None, "ckptfs seal to give up")
        said = seal.stderr.read().decode()
        assert seal.returncode == 1 and "Traceback" not in said, said
        assert "the mount daemon stopped before it sealed p/r/v1" in said, said
    finally:
        if seal is not None and seal.poll() is None:
            seal.kill()
            seal.wait()
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        wait_for(lambda: _zombie(pid) or not os.path.exists(f"/proc/{pid}"), "the daemon's end")
        subprocess.run(["umount", "-l", mnt], capture_output=True)


@pytest.mark.parametrize("intent", [b'{"project": "p"}', b"[1, 2]", b'{"project": "p", "run'])
def test_a_damaged_seal_intent_does_not_stop_the_daemon_from_starting(tmp_path, mount, intent):
    """spool/sealing/ holds what a dead daemon's seal was doing; a damaged record there
    must not keep the store from mounting (the unit it names stays in the inbox, held)."""
    store = new_store(tmp_path)
    spooled = os.path.join(store, "spool", "inbox", "p", "r", "v1")
    os.makedirs(spooled)
    write(f"{spooled}/model.bin", b"w" * 100)
    os.makedirs(os.path.join(store, "spool", "sealing"))
    write(os.path.join(store, "spool", "sealing", "1.json"), intent)
    open(os.path.join(store, "spool", "daemon.running"), "w").close()  # it died
    mnt = mount(store, "--seal-after", "60")
    assert read(f"{mnt}/inbox/p/r/v1/model.bin") == b"w" * 100
    assert "p/r/v1: held" in run_cli_checked("status", mnt).stdout.decode()
    assert os.listdir(os.path.join(store, "spool", "sealing")) == []


def test_the_daemon_loads_the_chunk_decoders_before_the_first_read(tmp_path, mount):
    """numpy (the decoders) is imported lazily by the CLI, but a daemon will read chunks:
    it loads them at start, so the first read of a freshly mounted store does not pay
    for the import (with a cold page cache it cost a 91 MB cold read 40 % of its speed)."""
    from ckptfs.spool import daemon as spool_daemon
    store = new_store(tmp_path)
    mount(store)
    pid = spool_daemon.serving(store)["pid"]
    with open(f"/proc/{pid}/maps") as f:
        mapped = f.read()
    assert "numpy/_core/_multiarray_umath" in mapped or "numpy/core/_multiarray_umath" in mapped
