"""Encryption at rest: `ckptfs init --encrypt --key-file PATH`, through the real CLI and a
real mount. The packs of an encrypted store hold no plaintext (while a plain store's do,
so the check can fail); without the right key every command stops with a clear error;
damage in an encrypted record is reported, never served."""
import glob
import os
import re
import struct
import tomllib

import pytest
import xxhash

from ckptfs.store import Store
from ckptfs.store.pack import CHECKED_HEADER_BYTES, FLAG_ENCRYPTED, RECORD_HEADER
from tests.helpers import encryption as helpers
from tests.helpers.cli import run_cli_checked, run_cli_many
from tests.helpers.encryption import (
    CONFIG_TEXT,
    env_with,
    err,
    grep_packs,
    tensor_plane,
)
from tests.helpers.samples import tree_snapshot
from tests.helpers.stores import copy_store

enc = helpers.enc  # a fixture (tests/helpers/encryption.py)


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
