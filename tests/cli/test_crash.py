"""A process killed in the middle of an import leaves a consistent store."""
import glob
import os
import signal
import subprocess
import sys
import time

import pytest
from tests.helpers.samples import tree_snapshot

from ckptfs.store import Store


def big_source(path, megabytes=96):
    os.makedirs(path)
    for i in range(4):
        with open(os.path.join(path, f"shard-{i}.bin"), "wb") as f:
            f.write(os.urandom(megabytes // 4 << 20))
    return str(path)


def packs_written(store_path):
    return sum(os.path.getsize(p) for p in glob.glob(os.path.join(store_path, "packs", "*", "*.pack")))


@pytest.mark.parametrize("kill_after_bytes", [1, 40 << 20])
def test_sigkill_mid_import_leaves_no_version_and_a_sound_store(tmp_path, kill_after_bytes, cli):
    store_path = str(tmp_path / "store")
    cli("init", store_path, check=True)
    src = big_source(tmp_path / "src")
    proc = subprocess.Popen([sys.executable, "-m", "ckptfs", "import", store_path, src, "p/r/v"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while packs_written(store_path) < kill_after_bytes and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    if proc.poll() is not None:
        pytest.fail("the import finished before it could be killed: make the source bigger")
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    listing = cli("ls", store_path, "p/r")
    assert listing.returncode == 1 and b"no run" in listing.stderr
    verified = cli("verify", store_path)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert b"unfinished pack" in verified.stdout  # the killed import's residue, not damage
    cli("import", store_path, src, "p/r/v", check=True)
    cli("get", store_path, "p/r/v", tmp_path / "out", check=True)
    assert tree_snapshot(tmp_path / "out") == tree_snapshot(src)
    with Store.open(store_path) as s:
        assert s.verify().ok
