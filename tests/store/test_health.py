"""The health and storage figures of a store (ckptfs.meta.health, ckptfs.spool.health)
on real stores built through the API: what they say is checked against the index, the
journal, the packs and the garbage collector's own dry run. What a running daemon adds
(pending units, its counters) is in tests/fs/test_health.py."""
import os
from datetime import timedelta

import pytest

from ckptfs.meta.health import audit_log, parse_time
from ckptfs.meta.seal import archive_directory
from ckptfs.spool.directory import Spool
from ckptfs.spool.health import health, storage
from ckptfs.store import AccessDeniedError
from tests.helpers import health as helpers
from tests.helpers.faults import pack_files
from tests.helpers.health import ACCURACY_SCHEMA, NOBODY
from tests.helpers.samples import make_checkpoint

template, s = helpers.template, helpers.s  # fixtures (tests/helpers/health.py)


def sealed_time(s):
    return max(parse_time(r["sealed_at"]) for r in s.all_versions())


def test_versions_sealed_are_binned_by_hour_and_counted_per_project_deleted_ones_too(s):
    s.delete_version("nlp", "run-1", "step-100", reason="test")
    now = sealed_time(s) + timedelta(minutes=1)
    report = health(s, now=now)
    bins = report["sealed_per_hour"]
    assert len(bins) == 48 and bins[-1]["hour"] == now.strftime("%Y-%m-%dT%H:00:00Z")
    assert sum(b["versions"] for b in bins) == 5
    records = s.all_versions() + [t["record"] for t in s.tombstones()]
    assert sum(b["logical_bytes"] for b in bins) == sum(r["logical_bytes"] for r in records)
    assert report["versions_sealed"]["nlp"]["versions"] == 4   # the deleted one counts
    assert report["versions_sealed"]["cv"] == {
        "versions": 1, "logical_bytes": s.version_record("cv", "r", "step-50")["logical_bytes"],
        "stored_bytes": s.version_record("cv", "r", "step-50")["new_stored_bytes"]}
    later = health(s, now=now + timedelta(hours=48))
    assert sum(b["versions"] for b in later["sealed_per_hour"]) == 0
    assert later["versions_sealed"] == report["versions_sealed"]   # a counter: never less


def seal_random_files(s, tmp_path, run: str, names: list[str]):
    """Versions of a file of random bytes each (nothing in common: their own packs)."""
    for name in names:
        src = tmp_path / run / name
        src.mkdir(parents=True)
        (src / "blob.bin").write_bytes(os.urandom(1 << 20))
        archive_directory(s, str(src), "cv", run, name)


def test_storage_per_project_and_run_agrees_with_the_index_and_gc_dry_run(s, tmp_path):
    s.delete_version("nlp", "run-1", "step-100", reason="test")
    seal_random_files(s, tmp_path, "junk", ["a", "b"])
    s.delete_version("cv", "junk", "a", reason="test")   # its pack is all dead now
    space = storage(s)
    versions = s.all_versions()
    assert sorted(space["runs"]) == ["cv/junk", "cv/r", "nlp/run-1", "nlp/run-2"]
    assert space["projects"]["nlp"]["versions"] == 3
    for project in ("nlp", "cv"):
        mine = [v for v in versions if v["project"] == project]
        figures = space["projects"][project]
        assert figures["logical_bytes"] == sum(v["logical_bytes"] for v in mine)
        assert figures["stored_bytes"] == sum(v["new_stored_bytes"] for v in mine)
    nlp = space["projects"]["nlp"]
    assert nlp["dedup_ratio"] == round(nlp["logical_bytes"] / nlp["unique_bytes"], 3)
    assert space["timeline"][-1]["logical_bytes"] == sum(v["logical_bytes"] for v in versions)
    assert space["store"]["versions"] == 5 and space["store"]["deleted_versions"] == 2
    dry = s.collect_garbage(dry_run=True)
    assert space["gc"]["available"] and dry.freed_bytes >= 1 << 20
    assert space["gc"]["freed_bytes"] == dry.freed_bytes
    assert space["gc"]["reclaimed_bytes"] == dry.pack_bytes_before - dry.pack_bytes_after


def test_a_verify_is_recorded_and_packs_written_after_it_are_unverified(s, tmp_path):
    before = health(s)["verify"]
    assert before["last"] is None
    assert before["unverified_packs"] == before["packs"] == len(pack_files(s.path)) > 0
    assert before["oldest_unverified_pack_age_seconds"] >= 0
    s.verify()
    after = health(s)["verify"]
    assert after["last"]["ok"] is True and after["last"]["versions"] == 5
    assert after["unverified_packs"] == 0 and after["oldest_unverified_pack_age_seconds"] is None
    archive_directory(s, make_checkpoint(tmp_path / "new", step=999, seed=7), "cv", "r", "new")
    newer = health(s)["verify"]
    assert 0 < newer["unverified_packs"] < newer["packs"]


def test_a_verify_that_finds_damage_is_recorded_as_failed(s):
    pack = max(pack_files(s.path), key=os.path.getsize)
    with open(pack, "r+b") as f:
        f.seek(os.path.getsize(pack) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert not s.verify().ok
    report = health(s)
    assert report["verify"]["last"]["ok"] is False
    assert report["verify"]["last"]["damaged_chunks"] >= 1
    assert report["read_errors"]["damaged_versions"]  # recorded in the index by verify


def test_access_changes_and_refusals_are_counted_from_the_journal(s):
    first = health(s)["access"]
    s.grant("nlp", "user:nobody", "reader")
    s.revoke("nlp", "user:nobody")
    s.set_enforcement(True)
    with pytest.raises(AccessDeniedError):
        s.authorize(NOBODY, "cv", "reader", "read versions")
    counts = health(s)["access"]
    assert counts["nlp"] == {"changes": 2, "refusals": 0}
    assert counts["*"]["changes"] == first["*"]["changes"] + 1   # enforcement turned on
    assert counts["cv"] == {"changes": 0, "refusals": 1}
    s.grant("cv", "user:nobody", "reader")   # read again from where it stopped
    assert health(s)["access"]["cv"] == {"changes": 1, "refusals": 1}


def test_versions_that_do_not_satisfy_the_current_schema_are_listed(s):
    assert health(s)["missing_required_metadata"] == []
    s.set_project_schema("nlp", ACCURACY_SCHEMA)
    missing = health(s)["missing_required_metadata"]
    assert [m["version"] for m in missing] == ["nlp/run-1/step-100", "nlp/run-1/step-200",
                                               "nlp/run-2/step-100"]
    assert missing[0]["failures"] == ["metrics.accuracy: missing (rule: required)"]
    s.set_project_schema("nlp", None)
    assert health(s)["missing_required_metadata"] == []


def test_seal_failures_are_the_spools_error_files(s):
    spool = Spool(s.path)
    spool.write_error("nlp/run-1/checkpoint-9", "sealing nlp/run-1/checkpoint-9 failed: "
                      "it does not satisfy the schema\nmore")
    spool.write_error("stray.bin", "files go into inbox/<project>/<run>/")
    failures = health(s)["seal_failures"]
    assert [(f["path"], f["project"]) for f in failures] in (
        [("nlp/run-1/checkpoint-9", "nlp"), ("stray.bin", None)],
        [("stray.bin", None), ("nlp/run-1/checkpoint-9", "nlp")])
    assert failures[[f["project"] for f in failures].index("nlp")]["error"] == \
        "sealing nlp/run-1/checkpoint-9 failed: it does not satisfy the schema"
    spool.clear_error("nlp/run-1/checkpoint-9")
    assert [f["path"] for f in health(s)["seal_failures"]] == ["stray.bin"]


def test_a_user_sees_only_the_projects_it_may_read(s):
    s.grant("cv", "user:nobody", "reader")
    s.set_enforcement(True)
    Spool(s.path).write_error("nlp/run-1/checkpoint-9", "sealing failed")
    Spool(s.path).write_error("cv/r/checkpoint-9", "sealing failed")
    report = health(s, actor=NOBODY)
    assert list(report["versions_sealed"]) == ["cv"]
    assert list(report["access"]) == ["cv"]       # neither nlp's nor the store-wide ones
    assert [f["project"] for f in report["seal_failures"]] == ["cv"]
    space = storage(s, actor=NOBODY)
    assert list(space["projects"]) == ["cv"] and list(space["runs"]) == ["cv/r"]
    assert set(space["timeline"][-1]["projects"]) == {"cv"}
    everything = health(s)   # this process created the store: admin on every project
    assert list(everything["versions_sealed"]) == ["cv", "nlp"]


def test_the_audit_log_is_filtered_by_project_user_and_event_newest_first(s):
    s.grant("nlp", "user:nobody", "reader")
    s.grant("cv", "user:nobody", "writer")
    s.revoke("cv", "user:nobody")
    me = s.journal_entries().__next__()["user"]
    cv = audit_log(s, project="cv")
    assert [e["type"] for e in cv] == ["access.revoked", "access.granted", "version.sealed"]
    assert [e["type"] for e in audit_log(s, event="access.")][:3] == [
        "access.revoked", "access.granted", "access.granted"]
    assert [e["project"] for e in audit_log(s, event="access.granted", limit=2)] == ["cv", "nlp"]
    assert len(audit_log(s, user=me)) == len(list(s.journal_entries()))
    assert audit_log(s, user="somebody-else") == []
    s.set_enforcement(True)
    s.grant("nlp", "user:nobody", "reader")   # nobody reads nlp only
    seen = audit_log(s, actor=NOBODY, limit=1000)
    assert seen and {e.get("project") for e in seen} == {"nlp"}


def test_what_gc_would_reclaim_is_for_maintainers_and_asking_journals_nothing(s):
    s.set_retention_policy("nlp", "run-1", {"keep_last": 1})
    s.grant("nlp", "user:nobody", "reader")
    s.set_enforcement(True)
    assert storage(s)["gc"]["versions_deleted"] == ["nlp/run-1/step-100", "nlp/run-1/step-200"]
    entries = len(list(s.journal_entries()))
    refused = storage(s, actor=NOBODY)["gc"]
    assert refused["available"] is False and "maintainer" in refused["reason"]
    assert len(list(s.journal_entries())) == entries   # a page view is not a refusal


def test_the_gc_refusal_names_no_project_the_viewer_may_not_read(s):
    s.set_retention_policy("nlp", "run-1", {"keep_last": 1})
    s.grant("cv", "user:nobody", "reader")   # nobody reads cv, not nlp
    s.set_enforcement(True)
    refused = storage(s, actor=NOBODY)["gc"]
    assert refused["available"] is False
    assert "nlp" not in refused["reason"] and "may not read" in refused["reason"]


def test_the_health_page_says_the_last_verify_and_the_versions_missing_metadata(s):
    from ckptfs.web.app import build_app
    client = build_app(s, s.path).test_client()
    assert "never: run <code>ckptfs verify " in client.get("/health").text
    s.verify()
    s.set_project_schema("nlp", ACCURACY_SCHEMA)
    page = client.get("/health").text
    verify = page.split('id="last-verify"', 1)[1].split("</dd>", 1)[0]
    assert "no damage" in verify and "5 versions" in verify and "{" not in verify
    missing = page.split('id="missing-metadata"', 1)[1].split("</table>", 1)[0]
    assert ">nlp/run-1/step-100</a>" in missing and "nlp/run-1/step-300" not in missing
    assert "accuracy" in missing
