"""What the test_encryption.py files of several levels (cli, mount) share."""
import glob
import json
import os
import struct
import subprocess
from types import SimpleNamespace

import pytest

from tests.helpers.cli import run_cli_checked
from tests.helpers.samples import make_checkpoint

CONFIG_TEXT = b'{"model_type": "bert", "hidden_size": 128}'  # config.json of make_checkpoint


def err(proc) -> str:
    return proc.stderr.decode(errors="replace")


def env_with(**values) -> dict:
    env = dict(os.environ)
    env.pop("CKPTFS_KEY_FILE", None)
    env.update(values)
    return env


def tensor_plane(src: str, name: str, count: int = 64) -> bytes:
    """The low byte of the first `count` float32 elements of tensor `name`: how the
    bytegroup codec lays a tensor block out, so a plain pack holds these bytes in a row."""
    with open(os.path.join(src, "model.safetensors"), "rb") as f:
        data = f.read()
    header_len = struct.unpack("<Q", data[:8])[0]
    start, end = json.loads(data[8:8 + header_len])[name]["data_offsets"]
    tensor = data[8 + header_len + start:8 + header_len + end]
    return tensor[0:4 * count:4]


def grep_packs(store: str, needle: bytes) -> int:
    """`grep -c` of the bytes `needle` over every pack file of the store."""
    packs = sorted(glob.glob(os.path.join(store, "packs", "*", "*.pack")))
    assert packs
    pattern = "".join(f"\\x{b:02x}" for b in needle)
    proc = subprocess.run(["grep", "-H", "-c", "-a", "-P", pattern, *packs], capture_output=True,
                          text=True, env={**os.environ, "LC_ALL": "C"})
    assert proc.returncode in (0, 1), proc.stderr
    return sum(int(line.rsplit(":", 1)[1]) for line in proc.stdout.splitlines())


@pytest.fixture(scope="module")
def enc(tmp_path_factory):
    """An encrypted store made and filled through the CLI: p/r/v1 and p/r/v2 (delta-coded
    against v1), its key in a directory of its own. Tests that break it use a copy."""
    root = tmp_path_factory.mktemp("enc")
    (root / "keys").mkdir()
    key = str(root / "keys" / "store.key")
    store = str(root / "store")
    src1 = make_checkpoint(root / "src" / "v1", step=100)
    src2 = make_checkpoint(root / "src" / "v2", step=200)
    out = run_cli_checked("init", "--encrypt", "--key-file", key, store).stdout.decode()
    assert f"created encrypted store {store}" in out and f"key created in {key}" in out
    run_cli_checked("import", store, src1, "p/r/v1")
    run_cli_checked("import", store, src2, "p/r/v2")
    return SimpleNamespace(root=root, store=store, key=key, src1=src1, src2=src2)
