"""Encryption at rest: `ckptfs init --encrypt --key-file PATH`, through the real CLI and a
real mount. The packs of an encrypted store hold no plaintext (while a plain store's do,
so the check can fail); without the right key every command stops with a clear error;
damage in an encrypted record is reported, never served."""
import glob
import json
import os
import re
import struct
import subprocess
import tomllib
from types import SimpleNamespace

import pytest
import xxhash
from conftest import copy_store, run_cli_checked, run_cli_many, unmount
from samples import make_checkpoint, tree_snapshot

from ckptfs.store import Store
from ckptfs.store.pack import CHECKED_HEADER_BYTES, FLAG_ENCRYPTED, RECORD_HEADER

CONFIG_TEXT = b'{"model_type": "bert", "hidden_size": 128}'  # config.json of make_checkpoint
MISSING = "is encrypted and its key file"


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


# -- setting up -------------------------------------------------------------------------------

def test_init_writes_a_private_key_file_and_records_it(enc):
    assert os.stat(enc.key).st_mode & 0o777 == 0o600
    lines = [line for line in open(enc.key).read().splitlines() if not line.startswith("#")]
    assert len(lines) == 1 and re.fullmatch(r"[0-9a-f]{64}", lines[0])
    with open(os.path.join(enc.store, "ckptfs.toml"), "rb") as f:
        config = tomllib.load(f)
    assert config["format"] == 2  # an older ckptfs refuses it instead of serving ciphertext
    section = config["encryption"]
    assert section["cipher"] == "aes-256-gcm" and section["key_file"] == enc.key
    assert re.fullmatch(r"[0-9a-f]{64}", section["key_check"]) and lines[0] not in section["key_check"]
    assert lines[0] not in open(os.path.join(enc.store, "ckptfs.toml")).read()


def test_init_options_and_key_file_rules(enc, tmp_path):
    store = str(tmp_path / "s")
    usage = run_cli_checked("init", "--key-file", tmp_path / "k", store, rc=2)
    assert "--key-file goes with --encrypt" in err(usage)
    usage = run_cli_checked("init", "--encrypt", store, rc=2)
    assert "--encrypt needs --key-file" in err(usage)
    no_dir = run_cli_checked("init", "--encrypt", "--key-file", tmp_path / "nodir" / "k", store, rc=1)
    assert f"directory {tmp_path / 'nodir'} does not exist" in err(no_dir)
    (tmp_path / "bad.key").write_text("not a key\n")
    bad = run_cli_checked("init", "--encrypt", "--key-file", tmp_path / "bad.key", store, rc=1)
    assert "is not a ckptfs key file" in err(bad) and "64 hex digits" in err(bad)
    assert not os.path.exists(store)  # nothing was created by the failed attempts
    # An existing key file is read, not replaced: a second store under the same key.
    before = open(enc.key).read()
    out = run_cli_checked("init", "--encrypt", "--key-file", enc.key, store).stdout.decode()
    assert f"key read from {enc.key}" in out and open(enc.key).read() == before
    checks = [tomllib.load(open(os.path.join(s, "ckptfs.toml"), "rb"))["encryption"]["key_check"]
              for s in (enc.store, store)]
    assert checks[0] == checks[1]
    # init uses the key it was given, whatever CKPTFS_KEY_FILE names (another store's key).
    third = str(tmp_path / "third")
    run_cli_checked("init", "--encrypt", "--key-file", tmp_path / "third.key", third,
                    env=env_with(CKPTFS_KEY_FILE=enc.key))
    assert run_cli_checked("ls", third, env=env_with()).stdout == b""
    plain = str(tmp_path / "plain")
    assert run_cli_checked("init", plain).stdout.decode() == f"created store {plain}\n"
    assert "encryption" not in tomllib.load(open(os.path.join(plain, "ckptfs.toml"), "rb"))


# -- using it ---------------------------------------------------------------------------------

def test_every_command_works_on_an_encrypted_store(enc, tmp_path):
    ls, cat, verify = run_cli_many(("ls", enc.store, "p/r"),
                                   ("cat", enc.store, "p/r/v2/config.json"),
                                   ("verify", enc.store))
    assert ls.stdout.decode().split() == ["v1", "v2"]
    assert cat.stdout == CONFIG_TEXT
    assert verify.stdout.decode().startswith("ok: ") and "2 versions, 12 files" in verify.stdout.decode()
    run_cli_checked("get", enc.store, "p/r/v2", tmp_path / "out")
    assert tree_snapshot(tmp_path / "out") == tree_snapshot(enc.src2)
    copy = copy_store(enc.store, tmp_path / "store-copy")
    assert "2 versions" in run_cli_checked("rebuild-index", copy).stdout.decode()
    run_cli_checked("get", copy, "p/r/v1", tmp_path / "out1")
    assert tree_snapshot(tmp_path / "out1") == tree_snapshot(enc.src1)


def test_packs_hold_no_plaintext_unlike_a_plain_store(enc, tmp_path):
    needles = [CONFIG_TEXT, tensor_plane(enc.src1, "embed.weight"),
               tensor_plane(enc.src1, "layer.0.weight")]
    assert [grep_packs(enc.store, n) for n in needles] == [0, 0, 0]
    with Store.open(enc.store) as s:  # every record is marked encrypted
        flags = {s.packs.read(*loc[:3]).flags for loc in
                 (s.index_location(bytes.fromhex(c)) for e in s.walk("p", "r", "v1")
                  if e["type"] == "file" for c, _ in e["chunks"])}
    assert flags == {FLAG_ENCRYPTED}
    plain = str(tmp_path / "plain")
    with Store.init(plain) as s:  # the same sources, unencrypted: the needles are found
        s.import_directory(enc.src1, "p", "r", "v1")
        s.import_directory(enc.src2, "p", "r", "v2")
    assert all(grep_packs(plain, n) >= 1 for n in needles)


# -- without the right key --------------------------------------------------------------------

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


def test_a_wrong_key_is_refused(enc, tmp_path, monkeypatch):
    other_key = str(tmp_path / "other.key")
    run_cli_checked("init", "--encrypt", "--key-file", other_key, tmp_path / "other")
    monkeypatch.setenv("CKPTFS_KEY_FILE", other_key)
    for proc in run_cli_many(("ls", enc.store), ("cat", enc.store, "p/r/v1/config.json"),
                             ("verify", enc.store), rc=1):
        assert err(proc) == (f"ckptfs: error: key file {other_key} (named by CKPTFS_KEY_FILE) "
                             f"does not hold the key of store {enc.store}: use the key file "
                             "the store was created with\n")
        assert proc.stdout == b""
    monkeypatch.setenv("CKPTFS_KEY_FILE", str(tmp_path / "other"))  # a directory
    assert "is a directory, not a key file" in err(run_cli_checked("ls", enc.store, rc=1))


# -- damage -----------------------------------------------------------------------------------

def config_record(store: str):
    """(pack path, record offset, record length) of config.json's only chunk in p/r/v1."""
    with Store.open(store) as s:
        chunks = s.entry("p", "r", "v1", "config.json")["chunks"]
        assert len(chunks) == 1
        loc = s.index_location(bytes.fromhex(chunks[0][0]))
    path = glob.glob(os.path.join(store, "packs", "*", f"{loc.pack_id:08x}.pack"))[0]
    return path, loc.offset, loc.length


def flip_byte(path: str, at: int):
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0x40]))


def fix_checksum(path: str, offset: int, length: int):
    """Recompute a record's xxh3 so only the cipher's authentication can catch a change."""
    with open(path, "r+b") as f:
        f.seek(offset)
        record = f.read(length)
        checksum = xxhash.xxh3_64(record[:CHECKED_HEADER_BYTES] + record[RECORD_HEADER.size:])
        f.seek(offset + CHECKED_HEADER_BYTES)
        f.write(struct.pack("<Q", checksum.intdigest()))


@pytest.mark.parametrize("checksum_fixed", [False, True], ids=["checksum", "authentication"])
def test_a_flipped_byte_in_an_encrypted_record_is_damage_not_garbage(enc, tmp_path, checksum_fixed):
    store = copy_store(enc.store, tmp_path / "store-copy")
    path, offset, length = config_record(store)
    flip_byte(path, offset + RECORD_HEADER.size + 20)  # inside the ciphertext
    if checksum_fixed:
        fix_checksum(path, offset, length)
    verify, cat = run_cli_many(("verify", store), ("cat", store, "p/r/v1/config.json"), rc=3)
    report = verify.stdout.decode()
    assert "damaged file p/r/v1/config.json" in report and "verify found damage" in err(verify)
    assert cat.stdout == b""  # nothing of the record is served
    why = "failed authentication (AES-GCM)" if checksum_fixed else "checksum mismatch"
    assert why in report and why in err(cat), (report, err(cat))
    pack_id = os.path.basename(path)[:-5]
    assert f"damaged pack {pack_id}" in report and f"pack {pack_id}" in err(cat)
    # The other files of the version still restore, checked.
    get = run_cli_checked("get", store, "p/r/v1", tmp_path / "out", rc=3)
    assert "config.json" in err(get) and not os.path.exists(tmp_path / "out" / "config.json")
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == \
        open(os.path.join(enc.src1, "model.safetensors"), "rb").read()


# -- through the mount ------------------------------------------------------------------------

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
