import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from ckptfs.store import Store  # noqa: E402
from samples import make_checkpoint  # noqa: E402


@pytest.fixture
def store_path(tmp_path):
    return str(tmp_path / "store")


@pytest.fixture
def store(store_path):
    s = Store.init(store_path)
    yield s
    s.close()


@pytest.fixture
def checkpoint(tmp_path):
    """A sample checkpoint directory (see samples.make_checkpoint)."""
    return make_checkpoint(tmp_path / "src" / "step-100", step=100)


def copy_store(src: str, dest) -> str:
    """A copy of the store at `src` in `dest` (a test may then damage or change it)."""
    shutil.copytree(src, str(dest))
    return str(dest)


def run_cli(*args, check=False, input=None, env=None, **kw):
    """Run the real `ckptfs` command in a subprocess; returns CompletedProcess (bytes)."""
    proc = subprocess.run([sys.executable, "-m", "ckptfs", *map(str, args)],
                          capture_output=True, input=input, env=env, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"ckptfs {' '.join(map(str, args))} failed ({proc.returncode}):\n"
                             f"{proc.stderr.decode(errors='replace')}")
    return proc


def run_cli_checked(*args, rc=0, **kw):
    """run_cli, checking the exit code (rc=None: any) and that no traceback escaped: an
    error a user can cause must come out as one `ckptfs: error: ...` line."""
    proc = run_cli(*args, **kw)
    error = proc.stderr.decode(errors="replace")
    assert "Traceback" not in error, f"ckptfs {args} crashed:\n{error}"
    if rc is not None:
        assert proc.returncode == rc, (
            f"ckptfs {args}: exit {proc.returncode}, expected {rc}\nstdout: "
            f"{proc.stdout.decode(errors='replace')}\nstderr: {error}")
    return proc


def run_cli_many(*calls, rc=0):
    """Several read-only commands, two at a time (most of each run is Python starting up);
    results in the order given."""
    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(lambda args: run_cli_checked(*args, rc=rc), calls))


@pytest.fixture
def cli():
    return run_cli


def is_mounted(mountpoint: str) -> bool:
    """Listed in the mount table: live, or dead (its daemon killed: os.path.ismount says
    False then, as every stat of it fails with ENOTCONN)."""
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == os.path.abspath(mountpoint) for line in f)


def unmount(mountpoint: str):
    """Unmount, lazily if a process still holds it, so no test leaves a stale mount (nor
    a dead one)."""
    if is_mounted(mountpoint):
        if subprocess.run(["fusermount3", "-u", mountpoint], capture_output=True).returncode:
            subprocess.run(["fusermount3", "-uz", mountpoint], capture_output=True)


@pytest.fixture
def mount(tmp_path):
    """mount(store_path, *options) -> mount point, via the real `ckptfs mount`; every mount
    is unmounted in teardown, even after a failure."""
    if not os.path.exists("/dev/fuse"):
        pytest.skip("/dev/fuse is missing: FUSE tests need it (they run in CI as root)")
    mounted = []

    def do_mount(store_path, *options):
        mountpoint = tmp_path / f"mnt{len(mounted)}"
        mountpoint.mkdir()
        mounted.append(str(mountpoint))
        run_cli_checked("mount", store_path, mountpoint, *options)
        return str(mountpoint)
    yield do_mount
    for mountpoint in mounted:
        unmount(mountpoint)


def wait_for(predicate, what: str = "a condition", timeout: float = 60.0):
    """Poll `predicate` until it returns something true, and return that. The deadline
    only catches a hang: every wait in the tests is on an event, never on a time."""
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)
    return result
