"""Encryption at rest through a real mount: an encrypted store serves and seals through
it, and a missing key file stops every command, the mount included, with a clear error.
The CLI: tests/cli/test_encryption.py."""
import json
import os
import subprocess

from tests.helpers import encryption as helpers
from tests.helpers.cli import run_cli_checked, run_cli_many
from tests.helpers.encryption import (
    CONFIG_TEXT,
    env_with,
    err,
    grep_packs,
    tensor_plane,
)
from tests.helpers.mounts import unmount
from tests.helpers.samples import make_checkpoint

enc = helpers.enc  # a fixture (tests/helpers/encryption.py)


MISSING = "is encrypted and its key file"


def test_a_missing_key_file_stops_every_command_with_a_clear_error(enc, tmp_path, monkeypatch):
    monkeypatch.delenv("CKPTFS_KEY_FILE", raising=False)
    moved = str(tmp_path / "moved.key")
    os.rename(enc.key, moved)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    try:
        procs = run_cli_many(("ls", enc.store), ("cat", enc.store, "p/r/v1/config.json"),
                             ("get", enc.store, "p/r/v1", tmp_path / "out"),
                             ("mount", enc.store, mountpoint), rc=1)
        for proc in procs:
            assert err(proc).startswith(f"ckptfs: error: store {enc.store} {MISSING} "
                                        f"{enc.key} is missing"), err(proc)
            assert "CKPTFS_KEY_FILE" in err(proc) and proc.stdout == b""
        assert not os.path.ismount(mountpoint) and not os.path.exists(tmp_path / "out")
        # A key moved elsewhere: CKPTFS_KEY_FILE names it.
        ls = run_cli_checked("ls", enc.store, "p/r", env=env_with(CKPTFS_KEY_FILE=moved))
        assert ls.stdout.decode().split() == ["v1", "v2"]
        gone = run_cli_checked("ls", enc.store, rc=1,
                               env=env_with(CKPTFS_KEY_FILE=str(tmp_path / "nowhere")))
        assert f"{MISSING} {tmp_path / 'nowhere'} (named by CKPTFS_KEY_FILE) is missing" in err(gone)
    finally:
        os.rename(moved, enc.key)
        unmount(str(mountpoint))


def sha256sums(directory) -> str:
    files = sorted(os.path.relpath(os.path.join(d, name), directory)
                   for d, _, names in os.walk(directory) for name in names
                   if not os.path.islink(os.path.join(d, name)))
    proc = subprocess.run(["sha256sum", *files], cwd=directory, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_an_encrypted_store_through_a_real_mount(tmp_path, mount):
    keys = tmp_path / "keys"
    keys.mkdir()
    store = str(tmp_path / "store")
    run_cli_checked("init", "--encrypt", "--key-file", keys / "k", store)
    src = make_checkpoint(tmp_path / "src" / "v1", step=100)
    mnt = mount(store, "--seal-after", "60")
    os.makedirs(f"{mnt}/inbox/p/r")
    copy = subprocess.run(["cp", "-r", src, f"{mnt}/inbox/p/r/v1"], capture_output=True, text=True)
    assert copy.returncode == 0, copy.stderr
    assert "sealed p/r/v1" in run_cli_checked("seal", store, "p/r/v1", "--timeout", "30").stdout.decode()
    sealed = f"{mnt}/projects/p/r/v1"
    assert sha256sums(sealed) == sha256sums(src)
    sidecar = json.load(open(f"{mnt}/projects/p/r/v1.json"))
    assert sidecar["extracted"] and sidecar["signature"] is None
    assert grep_packs(store, CONFIG_TEXT) == 0
    assert grep_packs(store, tensor_plane(src, "embed.weight")) == 0
