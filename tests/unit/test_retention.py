"""Retention: policies and their validation, the plan (pure functions over catalog
documents), and the catalog side of deletions on a real store: `ckptfs retention`,
`ckptfs gc --dry-run`, `ckptfs delete`, tombstones, names never reused, lineage, log and
audit of deleted versions, and a rebuilt index that agrees. Space reclaim is test_gc.py."""
import json
import os
import shutil
from datetime import datetime, timedelta, timezone

import pytest
from conftest import run_cli_checked, run_cli_many
from samples import make_hf_checkpoint

from ckptfs.meta.seal import archive_directory
from ckptfs.store import (AliasError, DeletionRefusedError, RetentionError, Store,
                          VersionDeletedError)
from ckptfs.store.retention import effective_policy, make_policy, plan_retention

NOW = datetime(2025, 6, 1, tzinfo=timezone.utc)


def doc(version, seq, eval_loss=None, days_old=0, aliases=(), parent=None, run="r", project="p"):
    """A catalog document as planning sees it."""
    lineage = {"parent": {**parent, "source": "explicit"}} if parent else {}
    return {"project": project, "run": run, "version": version, "seq": seq,
            "digest": f"d{seq}", "aliases": list(aliases), "lineage": lineage,
            "metrics": {} if eval_loss is None else {"eval_loss": eval_loss},
            "sealed_at": (NOW - timedelta(days=days_old)).isoformat().replace("+00:00", "Z")}


def run_docs():
    """Six versions of p/r sealed a day apart, v6 newest (latest); v4 has no metric."""
    losses = {1: 0.50, 2: 0.20, 3: 0.40, 4: None, 5: 0.30, 6: 0.60}
    return [doc(f"v{i}", i, losses[i], days_old=7 - i, aliases=["latest"] if i == 6 else [])
            for i in range(1, 7)]


def kept(plan) -> list[str]:
    return [d.version for d in plan.kept]


def reasons(plan) -> dict[str, str]:
    return {d.version: d.reason for d in plan.deletions}


# -- policies --------------------------------------------------------------------------------
def test_policy_rules_are_typed_and_metric_mode_come_from_the_project():
    assert make_policy({"keep_last": "3", "max_age_days": "1.5"}) == {"keep_last": 3,
                                                                      "max_age_days": 1.5}
    assert make_policy({"keep_best": "2"}, "eval_loss", "min") == {
        "keep_best": 2, "metric": "eval_loss", "mode": "min"}
    assert make_policy({"keep_best": "2", "metric": "eval_loss"}, "eval_loss", None)["mode"] == "min"
    assert make_policy({"keep_best": "1", "metric": "acc", "mode": "max"}, "eval_loss", "min") == {
        "keep_best": 1, "metric": "acc", "mode": "max"}


@pytest.mark.parametrize("rules, primary, message", [
    ({}, None, "at least one of keep_last"),
    ({"keep_last": "0"}, None, "at least 1"),
    ({"keep_last": "2.5"}, None, "whole number"),
    ({"keep_best": "-1"}, "loss", "at least 1"),
    ({"max_age_days": "0"}, None, "above 0"),
    ({"max_age_days": "soon"}, None, "number of days"),
    ({"keep_lats": "3"}, None, "unknown retention rule 'keep_lats'"),
    ({"keep_best": "2"}, None, "keep_best needs a metric"),
    ({"keep_best": "2", "metric": "acc"}, "loss", "needs mode=min or mode=max"),
    ({"keep_best": "2", "mode": "up"}, "loss", "'min' or 'max'"),
    ({"keep_last": "2", "metric": "loss"}, "loss", "only apply to keep_best"),
])
def test_bad_policies_are_refused_with_the_rule(rules, primary, message):
    with pytest.raises(RetentionError, match=message):
        make_policy(rules, primary, None)


def test_the_most_specific_policy_applies_whole():
    policies = {"*": {"keep_last": 9}, "p": {"keep_last": 5}, "p/r": {"max_age_days": 3}}
    assert effective_policy("p", "r", policies) == ({"max_age_days": 3}, "p/r")
    assert effective_policy("p", "other", policies) == ({"keep_last": 5}, "p")
    assert effective_policy("q", "r", policies) == ({"keep_last": 9}, "*")
    assert effective_policy("q", "r", {"p": {"keep_last": 1}}) is None


# -- planning ----------------------------------------------------------------------------------
def test_keep_last_keeps_the_newest_by_seal_order():
    plan = plan_retention(run_docs(), {"p": {"keep_last": 2}}, NOW)
    assert kept(plan) == ["v5", "v6"]
    assert reasons(plan)["v1"] == "not among the newest 2"
    assert [d.version for d in plan.deletions] == ["v1", "v2", "v3", "v4"]
    assert plan.deletions[0].policy == {"rules": {"keep_last": 2}, "scope": "p"}


def test_keep_best_min_and_max_skip_versions_without_the_metric():
    by_min = plan_retention(run_docs(), {"p": {"keep_best": 2, "metric": "eval_loss", "mode": "min"}}, NOW)
    assert kept(by_min) == ["v2", "v5", "v6"]       # 0.20, 0.30 and latest
    assert reasons(by_min)["v4"] == "no eval_loss value, so not among the best 2 by eval_loss (min)"
    assert reasons(by_min)["v3"] == "not among the best 2 by eval_loss (min)"
    by_max = plan_retention(run_docs(), {"p": {"keep_best": 2, "metric": "eval_loss", "mode": "max"}}, NOW)
    assert kept(by_max) == ["v1", "v6"]             # 0.60 (latest anyway) and 0.50
    by_more = plan_retention(run_docs(), {"p": {"keep_best": 9, "metric": "eval_loss", "mode": "min"}}, NOW)
    assert [d.version for d in by_more.deletions] == ["v4"]


def test_max_age_days_counts_from_now_and_any_rule_keeps():
    policy = {"p": {"keep_last": 1, "max_age_days": 3}}
    plan = plan_retention(run_docs(), policy, NOW)
    assert kept(plan) == ["v4", "v5", "v6"]         # sealed 3, 2 and 1 days ago
    assert reasons(plan)["v3"] == "not among the newest 1; older than 3 days (sealed 4 days ago)"
    later = plan_retention(run_docs(), policy, NOW + timedelta(days=30))
    assert kept(later) == ["v6"]


def test_aliases_are_always_kept_and_say_so():
    docs = run_docs()
    docs[0]["aliases"] = ["production"]
    docs[2]["aliases"] = ["best"]
    plan = plan_retention(docs, {"p": {"keep_last": 1}}, NOW)
    assert kept(plan) == ["v1", "v3", "v6"]
    assert plan.decisions["p/r/v1"].reasons == ["alias production"]
    assert plan.decisions["p/r/v6"].reasons == ["among the newest 1", "alias latest"]


def test_explicit_parents_are_kept_across_runs_to_a_fixed_point():
    docs = run_docs() + [
        # a fine-tune of v2, and a fine-tune of that one in a third run
        doc("ft1", 7, parent={"project": "p", "run": "r", "version": "v2"}, run="ft",
            aliases=["latest"]),
        doc("x1", 8, parent={"project": "p", "run": "ft", "version": "ft1"}, run="x",
            project="q", aliases=["latest"]),
        doc("ft0", 9, parent={"project": "p", "run": "r", "version": "v3"}, run="ft"),
    ]
    docs[6]["aliases"] = []          # ft0, newer, is ft's latest; ft1 is kept by x1 only
    docs[8]["aliases"] = ["latest"]
    plan = plan_retention(docs, {"p": {"keep_last": 1}}, NOW)
    assert plan.decisions["p/ft/ft1"].keep and \
        plan.decisions["p/ft/ft1"].reasons == ["explicit parent of q/x/x1"]
    assert plan.decisions["p/r/v2"].reasons == ["explicit parent of p/ft/ft1"]
    assert plan.decisions["p/r/v3"].reasons == ["explicit parent of p/ft/ft0"]
    assert [d.ref for d in plan.deletions] == ["p/r/v1", "p/r/v4", "p/r/v5"]


def test_a_run_without_a_policy_keeps_everything():
    plan = plan_retention(run_docs(), {"other": {"keep_last": 1}}, NOW)
    assert plan.deletions == []
    assert plan.decisions["p/r/v1"].reasons == ["no retention policy applies to its run"]


# -- a real store ----------------------------------------------------------------------------
# ref -> (eval_loss, explicit parent)
VERSIONS = {
    "nlp/base/s1": (0.50, None), "nlp/base/s2": (0.20, None), "nlp/base/s3": (0.40, None),
    "nlp/base/s4": (0.45, None), "nlp/base/s5": (0.60, None),
    "nlp/ft/f1": (0.30, "nlp/base/s3"),
    "cv/r/c1": (0.90, None), "cv/r/c2": (0.80, None),
}


@pytest.fixture(scope="module")
def catalog_store(tmp_path_factory) -> str:
    """Eight versions in three runs; nlp/ft/f1 is a fine-tune of nlp/base/s3; alias
    production on nlp/base/s1; nlp's primary metric eval_loss (min)."""
    root = tmp_path_factory.mktemp("retention")
    path = str(root / "store")
    with Store.init(path) as store:
        for i, (ref, (loss, parent)) in enumerate(VERSIONS.items()):
            p, r, v = ref.split("/")
            user = {"lineage": {"parent": dict(zip(("project", "run", "version"),
                                                   parent.split("/")))}} if parent else None
            src = make_hf_checkpoint(root / "src" / ref, 10 * (i + 1), seed=i, eval_loss=loss,
                                     user=user)
            archive_directory(store, src, p, r, v)
        store.set_alias("nlp", "base", "production", "s1")
        store.update_project_settings("nlp", {"primary_metric": "eval_loss", "mode": "min"})
    return path


@pytest.fixture
def store_copy(catalog_store, tmp_path) -> str:
    path = str(tmp_path / "store")
    shutil.copytree(catalog_store, path)
    return path


def out(proc) -> str:
    return proc.stdout.decode()


def test_retention_set_show_clear(store_copy):
    ck = run_cli_checked
    text = out(ck("retention", "set", store_copy, "nlp", "keep_best=1", "keep_last=2"))
    assert text.startswith("retention of project nlp: keep_last=2 keep_best=1 metric=eval_loss "
                           "mode=min\n")
    with Store.open(store_copy) as store:
        store.set_retention_policy("*", None, {"max_age_days": 30})
        store.set_retention_policy("nlp", "ft", {"keep_last": 5})
        with pytest.raises(RetentionError, match="a run belongs to one project"):
            store.set_retention_policy("*", "r", {"keep_last": 1})
    replaced = out(ck("retention", "set", store_copy, "nlp/ft", "keep_last=3"))
    assert replaced.startswith("retention of run nlp/ft: keep_last=3 (replaces keep_last=5)\n")
    shown, ft = run_cli_many(("retention", "show", store_copy),
                             ("retention", "show", store_copy, "nlp/ft", "--json"))
    shown = out(shown)
    assert shown == (
        "policies set:\n"
        "  the default for every project (*): max_age_days=30\n"
        "  project nlp: keep_last=2 keep_best=1 metric=eval_loss mode=min\n"
        "  run nlp/ft: keep_last=3\n"
        "in force:\n"
        "  cv/r      max_age_days=30  (from the default for every project (*))\n"
        "  nlp/base  keep_last=2 keep_best=1 metric=eval_loss mode=min  (from project nlp)\n"
        "  nlp/ft    keep_last=3  (from run nlp/ft)\n")
    as_json = json.loads(out(ft))
    assert as_json["runs"] == [{"project": "nlp", "run": "ft", "policy": {"keep_last": 3},
                                "from": "nlp/ft"}]
    cleared = out(ck("retention", "clear", store_copy, "nlp/ft"))
    assert cleared == "retention of run nlp/ft cleared (was keep_last=3)\n"
    assert "nlp/ft    keep_last=2 keep_best=1" in out(ck("retention", "show", store_copy, "nlp"))
    again, bad = run_cli_many(("retention", "clear", store_copy, "nlp/ft"),
                              ("retention", "set", store_copy, "nlp", "keep_last=three"), rc=1)
    assert again.stderr.decode() == "ckptfs: error: no retention policy is set on run nlp/ft\n"
    assert bad.stderr.decode() == "ckptfs: error: keep_last must be a whole number, not 'three'\n"
    events = [e for e in journal(store_copy) if e["type"] == "retention.set"]
    assert [(e["project"], e["run"], e["policy"]) for e in events][-1] == ("nlp", "ft", None)


def journal(store: str) -> list[dict]:
    with open(os.path.join(store, "journal", "journal.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_dry_run_says_what_would_go_and_why(store_copy):
    with Store.open(store_copy) as store:
        store.set_retention_policy("nlp", None, {"keep_last": 1, "keep_best": 1})
        store.set_retention_policy("cv", "r", {"max_age_days": 10})
    before = journal(store_copy)
    dry, later, as_json = run_cli_many(
        ("gc", store_copy, "--dry-run"), ("gc", store_copy, "--dry-run", "--as-of", "2999-01-01"),
        ("gc", store_copy, "--dry-run", "--json"))
    dry, later, as_json = out(dry), out(later), json.loads(out(as_json))
    policy = "[keep_last=1 keep_best=1 metric=eval_loss mode=min, from project nlp]"
    # s1: alias production; s2: best; s3: explicit parent of nlp/ft/f1; s5: latest
    assert dry.splitlines()[:2] == [
        f"would delete nlp/base/s4: not among the newest 1; not among the best 1 by "
        f"eval_loss (min)  {policy}",
        "1 version(s) would be deleted by retention policy"]
    assert "would be reclaimed" in dry and "(estimated)" in dry
    assert "would delete cv/r/c1: older than 10 days (sealed " in later
    assert "cv/r/c2" not in later            # latest
    assert journal(store_copy) == before     # a dry run changes nothing
    assert [d["ref"] for d in as_json["deletions"]] == ["nlp/base/s4"]
    assert as_json["freed_bytes"] > 0 and as_json["dry_run"] is True
    refused = run_cli_checked("gc", store_copy, "--as-of", "2999-01-01", rc=2)
    assert b"only goes with --dry-run" in refused.stderr


def test_delete_by_hand_follows_the_rules_and_leaves_a_tombstone(store_copy, tmp_path):
    cases = {"nlp/base/s5": "is the newest version of its run (latest)",
             "nlp/base/s2": "is the best version of its run by the project's primary metric",
             "nlp/base/s1": "has the alias(es) production",
             "nlp/base/s3": "is the explicit parent of nlp/ft/f1"}
    refused = run_cli_many(*[("delete", store_copy, ref, "--reason", "cleanup") for ref in cases],
                           rc=1)
    for (ref, why), proc in zip(cases.items(), refused):
        assert proc.stderr.decode().startswith(f"ckptfs: error: {ref} {why}"), proc.stderr
    done = out(run_cli_checked("delete", store_copy, "nlp/base/s4", "--reason",
                               "bad data (ticket 12)"))
    assert done.startswith("deleted nlp/base/s4 (bad data (ticket 12)); its sidecar stays under "
                           ".ckptfs/deleted/nlp/base/s4.json; its space is reclaimed by the next")
    ls, find, log, show, lineage, audit = run_cli_many(
        ("ls", store_copy, "nlp/base"), ("find", store_copy, "--format", "paths"),
        ("log", store_copy, "nlp/base", "--deleted", "--oneline"),
        ("show", store_copy, "nlp/base/s4"), ("lineage", store_copy, "nlp/base/s5"),
        ("audit", store_copy))
    assert out(ls).split() == ["s1", "s2", "s3", "s5"]
    assert "projects/nlp/base/s4" not in out(find) and "projects/nlp/base/s3" in out(find)
    assert [line.split()[1] for line in out(log).splitlines()] == [
        "nlp/base/s5", "nlp/base/s4", "nlp/base/s3", "nlp/base/s2", "nlp/base/s1"]
    assert "nlp/base/s4 [deleted " in out(log)
    tomb = json.loads(show.stdout)
    assert tomb["deletion"] == {"reason": "bad data (ticket 12)", "policy": None, "manual": True,
                                "uid": os.getuid(), "user": tomb["deletion"]["user"]}
    assert tomb["deleted_at"].endswith("Z") and tomb["metrics"]["eval_loss"] == 0.45
    assert {f["path"] for f in tomb["files"]} >= {"model.safetensors", "config.json"}
    assert all(len(f["sha256"]) == 64 for f in tomb["files"])
    assert "  nlp/base/s4 (deleted " in out(lineage)        # its chain is not broken
    assert "version.deleted  nlp/base/s4  by hand: bad data (ticket 12)" in out(audit)
    # gone from what `ls`, `get` and aliases see; the name is never reused
    src = make_hf_checkpoint(tmp_path / "again", 99)
    got, reuse = run_cli_many(("get", store_copy, "nlp/base/s4", tmp_path / "out"),
                              ("import", store_copy, src, "nlp/base/s4"), rc=1)
    assert b"was deleted on " in got.stderr and b"(bad data (ticket 12))" in got.stderr
    assert b"version names are never reused" in reuse.stderr
    with Store.open(store_copy) as store:
        with pytest.raises(DeletionRefusedError, match="already deleted"):
            store.delete_version("nlp", "base", "s4", "again")
        with pytest.raises(DeletionRefusedError, match="needs a reason"):
            store.delete_version("nlp", "base", "s3", " ")
        with pytest.raises(AliasError, match="never reused"):
            store.set_alias("nlp", "base", "s4", "s1")
        with pytest.raises(VersionDeletedError):
            store.begin_ingest("nlp", "base", "s4")
        assert store.aliases("nlp", "base")["latest"] == "s5"
        assert store.stats()["deleted_versions"] == 1


def test_deletions_by_policy_and_rebuilt_index_agree(store_copy):
    with Store.open(store_copy) as store:
        store.set_retention_policy("nlp", None, {"keep_last": "1"})
        store.set_retention_policy("cv", None, {"keep_last": "1"})
        gone = store.apply_retention(NOW + timedelta(days=1))
        assert [d.ref for d in gone] == ["nlp/base/s4", "cv/r/c1"]   # s2 is best, s3 a parent
        with pytest.raises(DeletionRefusedError, match="already deleted"):
            store.delete_version("cv", "r", "c1", "x")
        assert store.aliases("nlp", "base") == {"latest": "s5", "best": "s2",
                                                "production": "s1"}
        assert [d["version"] for d in store.catalog_documents("nlp", "base")] == [
            "s1", "s2", "s3", "s5"]
        before = {k: v for k, v in store.index.dump().items() if k != "meta"}
        assert len(before["deleted"]) == 2
        store.rebuild_index()
        after = {k: v for k, v in store.index.dump().items() if k != "meta"}
    assert after == before


def test_a_parent_that_was_deleted_is_named_so_at_seal(store_copy, tmp_path):
    with Store.open(store_copy) as store:
        store.delete_version("cv", "r", "c1", "obsolete")
        src = make_hf_checkpoint(tmp_path / "child", 5, user={
            "lineage": {"parent": {"project": "cv", "run": "r", "version": "c1"}}})
        archive_directory(store, src, "cv", "child", "k1")
        warnings = store.catalog_document("cv", "child", "k1")["warnings"]
    assert any("lineage.parent cv/r/c1 was deleted on " in w for w in warnings)


def test_keep_last_counts_logs_apart_from_checkpoints():
    """A run whose job sealed its logs (kind files) after its checkpoints: keep_last=1
    keeps its newest checkpoint and its newest logs, not the logs alone."""
    from datetime import datetime, timezone
    from ckptfs.store.retention import plan_retention
    docs = [{"project": "p", "run": "r", "version": v, "digest": "d", "seq": seq,
             "sealed_at": "2026-12-01T00:00:00Z", "aliases": [], "metrics": {}, **extra}
            for seq, (v, extra) in enumerate([("ckpt-1", {}), ("ckpt-2", {}),
                                              ("runs", {"kind": "files"}),
                                              ("runs~2", {"kind": "files"})])]
    plan = plan_retention(docs, {"p": {"keep_last": 1}}, datetime.now(timezone.utc))
    assert sorted(d.version for d in plan.kept) == ["ckpt-2", "runs~2"]
    assert sorted(d.version for d in plan.deletions) == ["ckpt-1", "runs"]
