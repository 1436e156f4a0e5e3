import os
import subprocess
import sys

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


def run_cli(*args, check=False, input=None, env=None, **kw):
    """Run the real `ckptfs` command in a subprocess; returns CompletedProcess (bytes)."""
    proc = subprocess.run([sys.executable, "-m", "ckptfs", *map(str, args)],
                          capture_output=True, input=input, env=env, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"ckptfs {' '.join(map(str, args))} failed ({proc.returncode}):\n"
                             f"{proc.stderr.decode(errors='replace')}")
    return proc


@pytest.fixture
def cli():
    return run_cli
