"""Damage a read through a real mount found is healed by an import while the store is
mounted. The rest of recovery: tests/cli/test_recovery.py."""
import os
import subprocess

from tests.helpers.recovery import flip_payload_byte, ok, read_bytes, two_versions


def test_damage_a_mount_read_found_is_healed_by_an_import_while_mounted(tmp_path, store_path, mount):
    """The mount's read fails with EIO and records the chunk as damaged; an import of the
    original files then stores a fresh copy, and the same mount serves the file whole.
    Reproduced: the import deduplicated against the damaged chunk; reads kept failing."""
    src1, _ = two_versions(tmp_path, store_path)
    flip_payload_byte(store_path, "v1", "optimizer.pt")
    mnt = mount(store_path)
    path = os.path.join(mnt, "projects", "p", "r", "v1", "optimizer.pt")
    first = subprocess.run(["cat", path], capture_output=True, check=False)
    assert first.returncode != 0 and b"Input/output error" in first.stderr
    ok("import", store_path, src1, "p/r/v1-again")
    again = subprocess.run(["cat", path], capture_output=True, check=False)
    assert again.returncode == 0, again.stderr
    assert again.stdout == read_bytes(os.path.join(src1, "optimizer.pt"))
