"""What the test_faults.py files of several levels (cli, mount) share."""
import glob
import os

import pytest

from tests.helpers.cli import run_cli_checked

ck = run_cli_checked


def out(proc) -> str:
    return proc.stdout.decode(errors="replace")


def err(proc) -> str:
    return proc.stderr.decode(errors="replace")


def pack_files(store) -> list[str]:
    return sorted(glob.glob(os.path.join(store, "packs", "*", "*.pack")))


def assert_no_version(store):
    """`ckptfs ls` shows no project at all, and the run the test used does not exist."""
    assert out(ck("ls", store)) == ""
    proc = ck("ls", store, "p/r", rc=1)
    assert "no run 'p/r'" in err(proc)


def assert_verifies(store, versions: int):
    text = out(ck("verify", store))
    assert text.startswith("ok: ") and f" {versions} versions," in text, text


def file_bytes(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture
def store(tmp_path):
    path = str(tmp_path / "store")
    ck("init", path)
    return path
