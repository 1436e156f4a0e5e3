"""A full disk (a real, small tmpfs, mounted for the test) under an import through the
real `ckptfs` command: nothing is committed, a retry succeeds, and a disk filling up at
any step fails cleanly. The other faults: tests/cli/test_faults.py.

Every command's stderr is checked for "Traceback": faults must come out as one
`ckptfs: error: ...` line and an exit code."""
import os
import re
import shutil
import subprocess

import pytest

from tests.helpers import faults as helpers
from tests.helpers.cli import run_cli
from tests.helpers.faults import (
    assert_no_version,
    assert_verifies,
    ck,
    err,
    file_bytes,
    out,
    pack_files,
)
from tests.helpers.samples import make_checkpoint

store = helpers.store  # a fixture (tests/helpers/faults.py)


# -- a full disk -------------------------------------------------------------------------------
@pytest.fixture
def tmpfs(tmp_path):
    """mount(size) -> the path of a fresh tmpfs of that size; unmounted at teardown."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = []

    def mount(size: str) -> str:
        mnt = tmp_path / f"tmpfs{len(mounted)}"
        mnt.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                       check=True)
        mounted.append(str(mnt))
        return str(mnt)

    yield mount
    for mnt in mounted:
        if subprocess.run(["umount", mnt]).returncode != 0:
            subprocess.run(["umount", "-l", mnt], check=True)


def test_disk_full_commits_nothing_and_a_retry_succeeds(tmpfs, tmp_path):
    small_tmpfs = tmpfs("3m")
    store = os.path.join(small_tmpfs, "store")
    ck("init", store)
    src = make_checkpoint(tmp_path / "src")
    big = os.path.join(src, "big.bin")
    with open(big, "wb") as f:
        f.write(os.urandom(6 << 20))      # incompressible, twice the size of the disk

    proc = ck("import", store, src, "p/r/v", rc=1)
    assert "no space left" in err(proc), err(proc)
    assert out(proc) == ""
    assert_no_version(store)
    assert_verifies(store, 0)
    assert pack_files(store) == [], "the failed import left pack files on the full disk"
    free = shutil.disk_usage(small_tmpfs).free
    assert free > 2 << 20, f"only {free} bytes free after the failed import"

    subprocess.run(["mount", "-o", "remount,size=64m", small_tmpfs], check=True)
    proc = ck("import", store, src, "p/r/v")
    assert out(proc).startswith("imported p/r/v: 7 files")
    assert_verifies(store, 1)
    assert ck("cat", store, "p/r/v/big.bin").stdout == file_bytes(big)


PAGE = 4096


def test_disk_filling_up_at_any_step_of_an_import_fails_cleanly(tmpfs, tmp_path):
    """Leave the disk room for the new pack plus 0, 1, 2, ... pages, so the disk fills up
    at each step of the commit in turn (pack, journal, index), until the import fits."""
    disk = tmpfs("8m")
    store = os.path.join(disk, "store")
    ck("init", store)
    ck("import", store, make_checkpoint(tmp_path / "s1", step=100), "p/r/v1")
    src2 = make_checkpoint(tmp_path / "s2", step=200)
    # how big v2's pack will be: import it into a copy of the store on the ordinary disk
    scratch = str(tmp_path / "scratch")
    shutil.copytree(store, scratch)
    ck("import", scratch, src2, "p/r/v2")
    (new_pack,) = set(pack_files(scratch)) - {p.replace(store, scratch) for p in pack_files(store)}
    need = -(-os.path.getsize(new_pack) // PAGE) * PAGE

    journal = os.path.join(store, "journal", "journal.jsonl")
    journal_v1, packs_v1 = file_bytes(journal), pack_files(store)
    filler = os.path.join(disk, "filler")
    failures = []
    for extra_pages in range(-1, 24):
        with open(filler, "wb") as f:
            f.write(b"\0" * (shutil.disk_usage(disk).free - need - extra_pages * PAGE))
        proc = run_cli("import", store, src2, "p/r/v2")
        os.unlink(filler)
        if proc.returncode == 0:
            break
        failures.append((extra_pages, proc.returncode, err(proc)))
        # nothing of the failed import may stay behind
        assert file_bytes(journal) == journal_v1, f"{extra_pages} pages: journal changed"
        assert pack_files(store) == packs_v1, f"{extra_pages} pages: packs left behind"
    else:
        pytest.fail("the import never fitted")
    assert failures and failures[0][0] == -1, "the sweep did not start with a pack too big"
    for extra_pages, code, error in failures:
        assert "Traceback" not in error, f"disk full with {extra_pages} spare pages:\n{error}"
        assert code == 1 and re.search(r"no space left", error, re.I), (extra_pages, error)
    assert out(ck("ls", store, "p/r")) == "v1\nv2\n"
    assert_verifies(store, 2)
