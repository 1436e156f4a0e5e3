"""The pickle scan through a real mount: a checkpoint whose optimizer.pt calls os.system
is sealed with `scan.status` unsafe under `unsafe_pickles=warn`, and kept in the inbox
with the finding in its `.error` file under `refuse`, also when zip flags and names hide
the pickle. The scan itself: tests/unit/test_scan.py.

Nothing here ever loads a pickle it made: creating one whose __reduce__ names os.system
does not run it."""
import json
import os
from types import SimpleNamespace

import pytest

from tests.helpers.cli import run_cli_checked
from tests.helpers.inbox import sh, stats, stats_once_counted, wait_sealed
from tests.helpers.mounts import unmount
from tests.helpers.samples import make_checkpoint, make_hf_checkpoint
from tests.helpers.scan import evil_checkpoint, evil_state, write, zip_variants
from tests.helpers.stores import new_store
from tests.helpers.waiting import wait_for


@pytest.fixture(scope="module")
def mounted(tmp_path_factory):
    """One store and mount for the mount tests of this module (seal after 0.5 s quiet)."""
    if not os.path.exists("/dev/fuse"):
        pytest.skip("/dev/fuse is missing: FUSE tests need it (they run in CI as root)")
    root = tmp_path_factory.mktemp("scan")
    store = new_store(root)
    mnt = str(root / "mnt")
    os.mkdir(mnt)
    run_cli_checked("mount", store, mnt, "--seal-after", "0.5")
    yield SimpleNamespace(store=store, mnt=mnt, root=root)
    unmount(mnt)


def sidecar_of(mnt: str, ref: str) -> dict:
    with open(os.path.join(mnt, "projects", ref + ".json")) as f:
        return json.load(f)


def test_mount_warns_and_seals_a_checkpoint_whose_optimizer_calls_os_system(mounted):
    src = mounted.root / "warn"
    evil_checkpoint(src / "v1")
    make_hf_checkpoint(src / "v2", 20)
    make_checkpoint(src / "v3")
    inbox = f"{mounted.mnt}/inbox/warned/r"
    copy = sh(f"mkdir -p {inbox} && cp -r {src}/v1 {src}/v2 {src}/v3 {inbox}/")
    assert copy.returncode == 0, copy.stderr
    for version in ("v1", "v2", "v3"):
        wait_sealed(mounted.mnt, f"warned/r/{version}")
    doc = sidecar_of(mounted.mnt, "warned/r/v1")
    assert doc["scan"]["status"] == "unsafe"
    assert doc["scan"]["findings"] == [{"file": "optimizer.pt", "pickle": "optimizer/data.pkl",
                                        "global": "posix.system"}]
    assert doc["scan"]["files"] == {"model.safetensors": "safe format", "optimizer.pt": "unsafe",
                                    "rng_state.pth": "clean", "scheduler.pt": "clean"}
    assert doc["warnings"] == ["unsafe pickle: optimizer.pt [optimizer/data.pkl] imports "
                               "posix.system (not on the safe list: loading it may run code)"]
    assert list(doc).index("scan") == list(doc).index("warnings") - 1
    # greppable: which sealed versions hold unsafe pickles, and what they import
    found = sh(f"grep -l '\"status\": \"unsafe\"' {mounted.mnt}/projects/warned/r/*.json")
    assert found.stdout.split() == [f"{mounted.mnt}/projects/warned/r/v1.json"]
    found = sh(f"grep -rh '\"global\":' {mounted.mnt}/projects/warned/r/")
    assert found.stdout.strip() == '"global": "posix.system",'
    assert sidecar_of(mounted.mnt, "warned/r/v2")["scan"]["status"] == "clean"
    assert sidecar_of(mounted.mnt, "warned/r/v2")["warnings"] == []
    raw = sidecar_of(mounted.mnt, "warned/r/v3")["scan"]
    assert raw["status"] == "clean" and raw["findings"] == []  # raw bytes: no pickle
    assert raw["files"]["optimizer.pt"].startswith("not a pickle (")
    # the bytes sealed are those copied: the scan only reads
    same = sh(f"cmp {src}/v1/optimizer.pt {mounted.mnt}/projects/warned/r/v1/optimizer.pt")
    assert same.returncode == 0, same.stdout
    found = run_cli_checked("find", mounted.store, 'scan.status = "unsafe"').stdout.decode()
    assert "projects/warned/r/v1 " in found and "warned/r/v2" not in found


def test_mount_refuses_it_with_the_finding_in_the_error_file(mounted):
    run_cli_checked("config", "set", mounted.store, "guarded", "unsafe_pickles=refuse")
    src = evil_checkpoint(mounted.root / "refuse" / "v1")
    inbox = f"{mounted.mnt}/inbox/guarded/r"
    copy = sh(f"mkdir -p {inbox} && cp -r {src} {inbox}/")
    assert copy.returncode == 0, copy.stderr
    error_file = wait_for(lambda: os.path.exists(f"{inbox}/v1.error") and f"{inbox}/v1.error",
                          "guarded/r/v1.error")
    with open(error_file) as f:
        error = f.read()
    assert error.startswith("sealing guarded/r/v1 failed: version guarded/r/v1 refused: unsafe "
                            "pickles: optimizer.pt [optimizer/data.pkl] imports posix.system "
                            "(project guarded has unsafe_pickles=refuse). ")
    assert sh(f"grep -c 'imports posix.system' {error_file}").stdout == "1\n"
    assert sorted(os.listdir(inbox)) == ["v1", "v1.error"]
    assert not os.path.exists(f"{mounted.mnt}/projects/guarded/r/v1")
    status = run_cli_checked("status", mounted.mnt).stdout.decode()
    assert "guarded/r/v1: failed" in status and "posix.system" in status

    # the fix: a clean optimizer.pt copied over the unsafe one, through the mount; the
    # other files, prepared before the refusal, are not read again
    before = stats(mounted.mnt)
    clean = make_hf_checkpoint(mounted.root / "refuse" / "clean", 10)
    copy = sh(f"cp {clean}/optimizer.pt {inbox}/v1/optimizer.pt")
    assert copy.returncode == 0, copy.stderr
    wait_sealed(mounted.mnt, "guarded/r/v1")
    after = stats_once_counted(mounted.mnt, before["versions_sealed"] + 1)
    assert after["files_reused_at_seal"] - before["files_reused_at_seal"] >= 8  # of 9
    assert sorted(os.listdir(inbox)) == ["v1"]  # sealed, where it was written
    doc = sidecar_of(mounted.mnt, "guarded/r/v1")
    assert doc["scan"]["status"] == "clean" and doc["warnings"] == []
    same = sh(f"cmp {clean}/optimizer.pt {mounted.mnt}/projects/guarded/r/v1/optimizer.pt")
    assert same.returncode == 0, same.stdout


def test_mount_refuses_a_pickle_hidden_by_zip_flags_and_names(mounted):
    run_cli_checked("config", "set", mounted.store, "flags", "unsafe_pickles=refuse")
    src = make_hf_checkpoint(mounted.root / "flags" / "v1", 10)
    write(os.path.join(src, "optimizer.pt"), zip_variants(evil_state())["encrypted flag"])
    write(os.path.join(src, "extra.dat"), evil_state(4))
    inbox = f"{mounted.mnt}/inbox/flags/r"
    copy = sh(f"mkdir -p {inbox} && cp -r {src} {inbox}/")
    assert copy.returncode == 0, copy.stderr
    error_file = wait_for(lambda: os.path.exists(f"{inbox}/v1.error") and f"{inbox}/v1.error",
                          "flags/r/v1.error")
    with open(error_file) as f:
        error = f.read()
    assert "extra.dat imports posix.system" in error, error
    assert "optimizer.pt [archive/data.pkl] imports posix.system" in error, error
    assert not os.path.exists(f"{mounted.mnt}/projects/flags/r/v1")
