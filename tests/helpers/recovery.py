"""What the test_recovery.py files of several levels (cli, mount) share."""
import os

from ckptfs.store import Store
from tests.helpers.cli import run_cli_checked
from tests.helpers.samples import make_checkpoint


def ok(*args, rc=0):
    return run_cli_checked(*args, rc=rc)


def read_bytes(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def two_versions(tmp_path, store_path) -> tuple[str, str]:
    """A store with p/r/v1 and p/r/v2 (different data, each in its own packs)."""
    src1 = make_checkpoint(tmp_path / "src1", step=100, seed=1)
    src2 = make_checkpoint(tmp_path / "src2", step=200, seed=2)
    ok("init", store_path)
    ok("import", store_path, src1, "p/r/v1")
    ok("import", store_path, src2, "p/r/v2")
    return src1, src2


def chunk_location(store_path, version: str, path: str, index: int = 0):
    """(pack file, record offset, chunk id) of a file's `index`-th chunk."""
    with Store.open(store_path) as s:
        entry = s.entry("p", "r", version, path)
        chunk_id = bytes.fromhex(entry["chunks"][index][0])
        loc = s.index_location(chunk_id)
    sub = f"{loc.pack_id >> 8:06x}"
    return os.path.join(store_path, "packs", sub, f"{loc.pack_id:08x}.pack"), loc, chunk_id


def flip_payload_byte(store_path, version: str, path: str, index: int = 0):
    """Damage one byte in the payload of a file's chunk record (the record's checksum
    then fails)."""
    pack, loc, chunk_id = chunk_location(store_path, version, path, index)
    with open(pack, "r+b") as f:
        f.seek(loc.offset + 56 + loc.length // 2 - 28)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    return chunk_id
