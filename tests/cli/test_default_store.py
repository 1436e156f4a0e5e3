"""CKPTFS_STORE names the store when the command line does not (like restic's
RESTIC_REPOSITORY); an explicit STORE still wins."""
import os

import pytest

from tests.helpers.cli import run_cli_checked
from tests.helpers.samples import make_checkpoint


@pytest.fixture
def two_stores(tmp_path):
    paths = []
    for name, version in (("default", "v-default"), ("other", "v-other")):
        path = str(tmp_path / name)
        run_cli_checked("init", path)
        src = make_checkpoint(tmp_path / "src" / name, step=1)
        run_cli_checked("import", path, src, f"p/r/{version}")
        paths.append(path)
    return paths


def with_store_env(store):
    return {**os.environ, "CKPTFS_STORE": store}


def test_commands_leave_store_out(two_stores):
    default, _other = two_stores
    env = with_store_env(default)
    assert "v-default" in run_cli_checked("ls", "p/r", env=env).stdout.decode()
    assert "v-default" in run_cli_checked("show", "p/r/v-default", env=env).stdout.decode()
    assert "versions" in run_cli_checked("stats", env=env).stdout.decode()
    assert "hash chain intact" in run_cli_checked("audit", "verify", env=env).stdout.decode()
    assert "version.sealed" in run_cli_checked("audit", env=env).stdout.decode()
    assert "user:" in run_cli_checked("access", "show", env=env).stdout.decode()


def test_an_explicit_store_wins(two_stores):
    default, other = two_stores
    env = with_store_env(default)
    listing = run_cli_checked("ls", other, "p/r", env=env).stdout.decode()
    assert "v-other" in listing and "v-default" not in listing
    assert "hash chain intact" in run_cli_checked("audit", "verify", other, env=env).stdout.decode()


def test_without_the_variable_store_is_required(two_stores):
    env = {k: v for k, v in os.environ.items() if k != "CKPTFS_STORE"}
    proc = run_cli_checked("stats", env=env, rc=2)
    assert "STORE" in proc.stderr.decode()


def test_a_variable_naming_no_store_says_so(tmp_path):
    env = with_store_env(str(tmp_path / "nothing"))
    proc = run_cli_checked("stats", env=env, rc=1)
    assert "nothing" in proc.stderr.decode() and "no such store" in proc.stderr.decode()
