"""Retention through the real CLI: `ckptfs retention set/show/clear`, `ckptfs gc
--dry-run` saying what would go and why, and `ckptfs delete` by hand with its rules and
tombstone. The policies and the plan themselves: tests/unit/test_retention.py."""
import json
import os

import pytest

from ckptfs.store import (
    AliasError,
    DeletionRefusedError,
    RetentionError,
    Store,
    VersionDeletedError,
)
from tests.helpers import retention as helpers
from tests.helpers.cli import run_cli_checked, run_cli_many
from tests.helpers.samples import make_hf_checkpoint

catalog_store = helpers.catalog_store  # a fixture (tests/helpers/retention.py)
store_copy = helpers.store_copy  # a fixture (tests/helpers/retention.py)


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
