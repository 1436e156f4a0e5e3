"""A real mount daemon's figures reach another process's health report
(ckptfs.spool.health) through the spool's daemon-stats.json, which the daemon rewrites
every few seconds: what waits in its inbox, and what it sealed. The same parts
in-process, with the file's interval shortened: tests/fs/test_health.py."""
from ckptfs.spool.health import health
from ckptfs.store import Store
from tests.helpers.inbox import copied_in, wait_sealed
from tests.helpers.waiting import wait_for


def report_when(store: str, done, what: str) -> dict:
    def check():
        with Store.open(store) as s:
            report = health(s)
        return report if done(report) else None
    return wait_for(check, what)


def pending(report: dict, version: str) -> dict | None:
    return next((p for p in report["pending_inbox"] if p["version"] == version), None)


def test_a_mounts_pending_unit_and_its_seal_reach_health_through_the_spool(
        tmp_path, mount, source):
    store, mnt = copied_in(tmp_path, mount, "3600",
                           f"mkdir -p {{mnt}}/inbox/p/r && cp -r {source} {{mnt}}/inbox/p/r/v1")
    report = report_when(store, lambda r: pending(r, "p/r/v1"), "p/r/v1 pending in health")
    assert report["daemon"]["running"] and report["daemon"]["mountpoint"] == mnt
    assert pending(report, "p/r/v1")["state"] in ("quiet", "writing")
    assert report["daemon"]["versions_sealed"] == 0
    open(f"{mnt}/inbox/p/r/v1/.seal", "w").close()
    wait_sealed(mnt)
    report = report_when(store, lambda r: r["daemon"]["versions_sealed"] == 1,
                         "the daemon's count of seals")
    assert pending(report, "p/r/v1") is None
    assert report["versions_sealed"]["p"]["versions"] == 1
