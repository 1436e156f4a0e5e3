"""Retention: policies and their validation, the plan (pure functions over catalog
documents), and the catalog side of deletions on a real store: `ckptfs retention`,
`ckptfs gc --dry-run`, `ckptfs delete`, tombstones, names never reused, lineage, log and
audit of deleted versions, and a rebuilt index that agrees. Space reclaim is test_gc.py."""
from datetime import timedelta

import pytest

from ckptfs.store import RetentionError
from ckptfs.store.retention import effective_policy, make_policy, plan_retention
from tests.helpers.retention import NOW


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
