"""The spool protocol (ckptfs.spool) on a real store directory, and the rule that keeps it
apart from the daemon: neither it nor the CLI's seal, status, umount and mount checks
import pyfuse3 or trio (they run where the daemon's libraries may not load, and must
start fast)."""
import os
import re
import subprocess
import sys
import time

import pytest

from ckptfs.spool import daemon as spool_daemon
from ckptfs.spool import records
from ckptfs.spool.directory import Spool
from ckptfs.spool.layout import REQUESTS
from ckptfs.spool.seal_requests import (
    nothing_waits,
    request_seal,
    spooled_units,
    take_requests,
)
from ckptfs.store import Store

DAEMON_LIBRARIES = ("pyfuse3", "trio")


def spool_a_file(store_path: str, rel: str, data: bytes = b"weights") -> str:
    """A file as a job wrote it into the inbox (what the daemon would have spooled)."""
    path = os.path.join(store_path, "spool", "inbox", rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return path


def run_ckptfs_timing_imports(*args) -> tuple[subprocess.CompletedProcess, set[str]]:
    """`python -X importtime -m ckptfs ARGS`: its result, and the top-level packages it
    imported."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "ckptfs", *args],
                          capture_output=True, text=True, check=False)
    imported = set(re.findall(r"^import time:.*\|\s+([\w]+)", proc.stderr, re.MULTILINE))
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc, imported


def assert_no_daemon_libraries(imported: set[str], what: str):
    loaded = [name for name in DAEMON_LIBRARIES if name in imported]
    assert not loaded, f"{what} imported {loaded}"


# -- what importing costs ----------------------------------------------------------------------
def test_importing_the_spool_protocol_imports_neither_pyfuse3_nor_trio():
    code = ("import sys\n"
            "import ckptfs.spool, ckptfs.spool.layout, ckptfs.spool.directory\n"
            "import ckptfs.spool.records, ckptfs.spool.daemon, ckptfs.spool.seal_requests\n"
            "import ckptfs.cli, ckptfs.fs.offline, ckptfs.fs.mounts, ckptfs.fs.inbox_state\n"
            "loaded = [m for m in ('pyfuse3', 'trio') if m in sys.modules]\n"
            "assert not loaded, loaded\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_status_imports_neither_pyfuse3_nor_trio(store_path):
    Store.init(store_path).close()
    spool_a_file(store_path, "p/r/v1/model.bin")
    proc, imported = run_ckptfs_timing_imports("status", store_path)
    assert proc.returncode == 0, proc.stderr
    assert "p/r/v1: spooled" in proc.stdout, proc.stdout
    assert_no_daemon_libraries(imported, "ckptfs status")


def test_seal_through_a_daemon_imports_neither_and_leaves_a_request(store_path):
    """With a daemon holding the spool (here: this test, holding its lock as one),
    `ckptfs seal` leaves a request for it; the daemon's side reads it back once."""
    Store.init(store_path).close()
    spool_a_file(store_path, "p/r/v1/model.bin")
    with spool_daemon.acquire(store_path, spool_daemon.DAEMON, "/mnt/somewhere"):
        proc, imported = run_ckptfs_timing_imports("seal", store_path, "p/r/v1",
                                                   "--timeout", "0")
        assert proc.returncode == 1, proc.stderr  # nobody answers within 0 s
        assert "was not sealed within 0 s" in proc.stderr, proc.stderr
        assert take_requests(Spool(store_path)) == [("p", "r", "v1")]
        assert take_requests(Spool(store_path)) == []
    assert_no_daemon_libraries(imported, "ckptfs seal (to a daemon)")


def test_seal_with_no_daemon_seals_here_without_pyfuse3(store_path):
    """With no daemon, the seal runs the daemon's sealer here: trio (its scheduler) is
    imported for that alone, pyfuse3 never."""
    Store.init(store_path).close()
    spool_a_file(store_path, "p/r/v1/model.bin")
    proc, imported = run_ckptfs_timing_imports("seal", store_path, "p/r/v1")
    assert proc.returncode == 0, proc.stderr
    assert "sealed p/r/v1" in proc.stdout, proc.stdout
    assert "pyfuse3" not in imported
    with Store.open(store_path) as s:
        assert s.version_record("p", "r", "v1") is not None
    assert not os.path.exists(os.path.join(store_path, "spool", "inbox", "p", "r", "v1"))


def test_seal_with_nothing_waiting_imports_neither(store_path):
    Store.init(store_path).close()
    proc, imported = run_ckptfs_timing_imports("seal", store_path, "p/r/v1")
    assert proc.returncode == 1
    assert "nothing of p/r/v1 waits in the inbox" in proc.stderr, proc.stderr
    assert_no_daemon_libraries(imported, "ckptfs seal (nothing to do)")


def test_mount_and_umount_checks_import_neither(store_path, tmp_path):
    """`ckptfs mount` checks its mount point before it starts a daemon; a refusal (or an
    umount of what is not mounted) never loads the daemon's libraries."""
    Store.init(store_path).close()
    missing = str(tmp_path / "no-such-dir")
    proc, imported = run_ckptfs_timing_imports("mount", store_path, missing)
    assert proc.returncode == 1
    assert f"mount point {missing} is not a directory" in proc.stderr, proc.stderr
    assert_no_daemon_libraries(imported, "ckptfs mount (refused)")
    proc, imported = run_ckptfs_timing_imports("umount", missing)
    assert proc.returncode == 1
    assert_no_daemon_libraries(imported, "ckptfs umount")


# -- the protocol's functions ------------------------------------------------------------------
def test_a_seal_request_round_trip_and_damaged_requests_are_dropped(store_path):
    Store.init(store_path).close()
    request_seal(store_path, "p", "r", "checkpoint-5")
    request_seal(store_path, "p", "r", "")
    spool = Spool(store_path)
    for name, text in (("0.json", "{not json"), ("1.json", '{"project": 5, "run": "r"}')):
        with open(spool.area(REQUESTS, name), "w") as f:
            f.write(text)
    assert take_requests(spool) == [("p", "r", "checkpoint-5"), ("p", "r", "")]
    assert os.listdir(spool.area(REQUESTS)) == []  # each taken once, the damaged too


def test_an_error_file_round_trip(store_path):
    Store.init(store_path).close()
    spool = Spool(store_path)
    before = time.time() - 1
    spool.write_error("p/r/checkpoint-5", "sealing p/r/checkpoint-5 failed: no\nmore")
    spool.write_error("junk", "refused inbox/junk: a file")
    spool.write_error("p/junk", "refused inbox/p/junk: a file")
    assert spool.error_names("p/r") == ["checkpoint-5.error"]
    assert spool.error_line("p/r/checkpoint-5") == "sealing p/r/checkpoint-5 failed: no"
    assert spool.newest_error("p/r", before) == "sealing p/r/checkpoint-5 failed: no"
    assert spool.newest_error("p/r", time.time() + 60) is None
    assert sorted(spool.refusals()) == ["junk", "p/junk"]
    assert spool.clear_error("p/r/checkpoint-5") is True
    assert spool.clear_error("p/r/checkpoint-5") is False
    assert spool.error_names("p/r") == [] and spool.error_line("p/r/checkpoint-5") is None


def test_a_dead_daemon_is_told_from_its_marker_and_its_lock(store_path):
    Store.init(store_path).close()
    assert not spool_daemon.last_daemon_died(store_path)
    with spool_daemon.acquire(store_path, spool_daemon.DAEMON, "/mnt/x"):
        spool_daemon.mark_running(store_path)
        serving = spool_daemon.serving(store_path)
        assert serving["pid"] == os.getpid() and serving["mountpoint"] == "/mnt/x"
        with pytest.raises(spool_daemon.StoreBusy, match="already mounted at /mnt/x"):
            spool_daemon.check_free(store_path)
    # The lock went with its holder, the marker stayed: the daemon died.
    assert spool_daemon.serving(store_path) is None
    assert spool_daemon.last_daemon_died(store_path)
    proc, _imported = run_ckptfs_timing_imports("status", store_path)
    assert "not mounted; its last daemon died" in proc.stdout, proc.stdout
    spool_daemon.mark_stopped(store_path)
    assert not spool_daemon.last_daemon_died(store_path)
    spool_daemon.check_free(store_path)


def test_a_seal_holds_the_lock_as_a_seal_not_as_a_daemon(store_path):
    Store.init(store_path).close()
    with spool_daemon.acquire(store_path, spool_daemon.SEAL):
        assert spool_daemon.serving(store_path) is None
        lock, holder = spool_daemon.try_acquire(store_path, spool_daemon.DAEMON, "/mnt/x")
        assert lock is None and holder["role"] == spool_daemon.SEAL
        assert "`ckptfs seal`" in spool_daemon.busy_message(store_path, holder)


def test_provenance_annotation_intent_and_staged_pack_records(store_path):
    Store.init(store_path).close()
    spool = Spool(store_path)
    assert records.load_provenance(spool, "p", "r", "ckpt") == \
        {"writer": None, "others": [], "seen": []}
    record = {"writer": {"pid": 7, "via": "mount"}, "others": [{"pid": 8}], "seen": [7, 8]}
    records.save_provenance(spool, "p", "r", "ckpt", record)
    assert records.load_provenance(spool, "p", "r", "ckpt") == record
    assert records.provenance_of_record(record) == \
        {"pid": 7, "via": "mount", "other_writers": [{"pid": 8}]}
    records.drop_provenance(spool, "p", "r", "ckpt")
    assert records.load_provenance(spool, "p", "r", "ckpt")["writer"] is None

    records.save_annotations(spool, "p", "r", "ckpt/x", {"metrics": {"loss": 1.5}})
    assert records.load_annotations(spool, "p", "r", "ckpt/x") == {"metrics": {"loss": 1.5}}
    records.drop_annotations(spool, "p", "r", "ckpt/x")
    assert records.load_annotations(spool, "p", "r", "ckpt/x") is None

    whole = {"project": "p", "run": "r", "version": "v1", "unit": "v1", "shape": "dir",
             "kind": "checkpoint", "source": spool.run_dir("p", "r"),
             "staged": {"files": {}, "links": {}}, "batch": None}
    path = records.write_intent(spool, whole)
    with open(records.write_intent(spool, whole)[:-5] + "x.json", "w") as f:
        f.write('{"project": "p"')  # cut short
    found = dict(records.interrupted_intents(spool))
    assert found[path] == whole
    assert sorted(v is None for v in found.values()) == [False, False, True]
    records.drop_intent(path)
    assert path not in dict(records.interrupted_intents(spool))

    assert records.staged_packs(spool) is None
    records.note_staged_pack(spool, 0x1f)
    records.note_staged_pack(spool, 0x20)
    assert records.staged_packs(spool) == [0x1f, 0x20]
    records.forget_staged_packs(spool)
    assert records.staged_packs(spool) is None


def test_what_waits_as_seal_and_status_see_it(store_path):
    with Store.init(store_path) as s:
        spool_a_file(store_path, "p/r/checkpoint-5/model.bin")
        assert spooled_units(s) == [{"version": "p/r/checkpoint-5", "kind": "checkpoint",
                                     "state": "spooled", "age_seconds": None, "error": None}]
        assert nothing_waits(s, "p", "r", "checkpoint-5") is None
        assert nothing_waits(s, "p", "r", "") is None
        assert nothing_waits(s, "p", "r", "checkpoint-6") == \
            "nothing of p/r/checkpoint-6 waits in the inbox"
