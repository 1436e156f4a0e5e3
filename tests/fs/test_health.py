"""What the running mount daemon adds to a store's health (ckptfs.spool.health): its
counters and pending units reach another process through the spool
(`spool/daemon-stats.json`, rewritten by `CkptfsOperations.keep_counters_file`), and a
killed daemon's units are then read from the spool itself. The daemon's parts run
in-process over a real store (tests/fs/driver.py); every wait polls for the report."""
import errno
import os

import pytest
import trio

from ckptfs.spool.health import health
from ckptfs.store import Store
from tests.fs.driver import QUIET, errno_of, poll, serving
from tests.helpers.faults import pack_files
from tests.helpers.samples import make_checkpoint

pytestmark = pytest.mark.trio

RUN = "inbox/p/r"
SCHEMA = {"type": "object", "required": ["metrics"],
          "properties": {"metrics": {"type": "object", "required": ["accuracy"]}}}
COUNTERS_EVERY = 0.05  # seconds: the daemon's 5 s, shortened for the test


async def health_when(store, done, what: str) -> dict:
    """Poll health(store) until `done(report)`; that report."""
    async def check():
        report = health(store)
        return report if done(report) else None
    return await poll(check, what)


def pending(report: dict, version: str) -> dict | None:
    return next((p for p in report["pending_inbox"] if p["version"] == version), None)


async def test_pending_units_and_seal_failures_come_from_the_running_daemon(
        fs, daemon, nursery, tmp_path):
    nursery.start_soon(daemon.ops.keep_counters_file, COUNTERS_EVERY)
    await fs.copy_in(make_checkpoint(tmp_path / "v2", step=200), f"{RUN}/v2")
    report = await health_when(daemon.store, lambda r: pending(r, "p/r/v2"),
                               "p/r/v2 pending in the daemon's report")
    assert report["daemon"]["running"] and report["daemon"]["pid"] == os.getpid()
    assert report["daemon"]["mountpoint"] == daemon.mountpoint
    assert pending(report, "p/r/v2")["state"] in ("writing", "quiet")
    assert report["oldest_pending_age_seconds"] >= pending(report, "p/r/v2")["age_seconds"] >= 0
    assert report["seal_failures"] == [] and report["daemon"]["seal_failures"] == 0

    daemon.store.set_project_schema("p", SCHEMA)
    await fs.setxattr(f"{RUN}/v2", b"user.ckptfs.seal")
    report = await health_when(daemon.store, lambda r: r["daemon"]["seal_failures"] == 1,
                               "the daemon's count of seal failures")
    assert [(f["path"], f["project"]) for f in report["seal_failures"]] == [("p/r/v2", "p")]
    assert "does not satisfy the schema of project p" in report["seal_failures"][0]["error"]
    assert pending(report, "p/r/v2")["state"] == "failed"

    # The health page shows the same, in words: the failure with why, the unit waiting.
    from ckptfs.web.app import build_app
    page = build_app(daemon.store, daemon.store.path).test_client().get("/health").text
    failures = page.split('id="seal-failure-list"', 1)[1].split("</table>", 1)[0]
    assert "<td>p/r/v2</td>" in failures and "does not satisfy the schema of project p" in failures
    waiting = page.split('id="pending-list"', 1)[1].split("</table>", 1)[0]
    assert "<td>p/r/v2</td>" in waiting and "<td>failed</td>" in waiting
    assert "None" not in failures + waiting


async def test_failed_reads_are_counted_by_the_daemon(fs, daemon, nursery):
    nursery.start_soon(daemon.ops.keep_counters_file, COUNTERS_EVERY)
    for pack in pack_files(daemon.store.path):   # a byte flipped in every record's middle
        with open(pack, "r+b") as f:
            data = bytearray(f.read())
            for at in range(64, len(data), 4096):
                data[at] ^= 0xFF
            f.seek(0)
            f.write(data)
    failed = 0
    for name in ("model.safetensors", "optimizer.pt", "tokenizer/vocab.txt"):
        failed += await errno_of(fs.read(f"projects/p/r/v1/{name}")) == errno.EIO
    assert failed >= 1
    report = await health_when(daemon.store, lambda r: r["read_errors"]["since_mount"],
                               "the daemon's count of failed reads")
    assert report["read_errors"]["since_mount"] == failed


async def test_a_killed_daemons_units_are_read_from_the_spool_as_held(daemon, tmp_path):
    async with trio.open_nursery() as nursery:
        fs = serving(daemon, nursery, QUIET)
        await fs.copy_in(make_checkpoint(tmp_path / "v2", step=200), f"{RUN}/v2")
        nursery.cancel_scope.cancel()
    daemon.stop(clean=False)
    with Store.open(daemon.store_path) as store:
        report = health(store)
    assert report["daemon"]["running"] is False
    assert report["daemon"]["seal_failures"] is None   # no daemon: no counters
    unit = pending(report, "p/r/v2")
    assert unit["state"] == "held (its daemon died)" and unit["age_seconds"] >= 0
