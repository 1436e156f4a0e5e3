"""The catalog at store level (no mount): aliases, project settings and schemas, what
survives an index rebuild, a journal replay and an index upgrade, and the rules that
keep aliases apart from versions. Real packs, real LMDB, real journal."""
import errno
import json
import os
import re
import shutil

import orjson
import pytest

from ckptfs.meta.seal import archive_directory
from ckptfs.store import (
    AliasError,
    InvalidNameError,
    NotFoundError,
    ReservedAliasError,
    SettingError,
    Store,
    VersionExistsError,
)
from ckptfs.store.index import INDEX_FORMAT
from tests.helpers.samples import make_hf_checkpoint

SCHEMA = {"type": "object", "required": ["metrics"],
          "properties": {"metrics": {"type": "object", "required": ["eval_loss"]}}}


# (project, run, version, eval_loss, explicit parent)
VERSIONS = [
    ("p1", "r1", "v1", 0.40, None),
    ("p1", "r1", "v2", 0.20, None),
    ("p1", "r1", "v3", 0.20, None),   # ties with v2 on eval_loss
    ("p1", "r2", "w1", 0.30, None),
    ("p2", "r1", "x1", 0.50, "p1/r1/v2"),
]


def journal_entries(store_path: str) -> list[dict]:
    with open(os.path.join(store_path, "journal", "journal.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def seal(store, tmp_path, project, run, version, eval_loss, parent=None, step=None):
    user = {"lineage": {"parent": parent}} if parent else None
    src = make_hf_checkpoint(tmp_path / "src" / project / run / version,
                             step or 10 * (len(store.all_versions()) + 1), eval_loss=eval_loss,
                             user=user)
    return archive_directory(store, src, project, run, version)


@pytest.fixture
def catalog_path(tmp_path) -> str:
    """A store with five versions in two projects, aliases that were set, moved and removed,
    settings of p1 and of `*`, and a schema on p2 (set after its version was sealed)."""
    path = str(tmp_path / "store")
    with Store.init(path) as store:
        for project, run, version, eval_loss, parent in VERSIONS:
            seal(store, tmp_path, project, run, version, eval_loss, parent)
        store.set_alias("p1", "r1", "production", "v1")
        store.set_alias("p1", "r1", "staging", "v3")
        store.set_alias("p1", "r1", "production", "v2")       # moved
        store.remove_alias("p1", "r1", "staging")            # removed
        store.set_alias("p1", "r2", "candidate", "w1")
        store.update_project_settings("p1", {"primary_metric": "eval_loss", "mode": "min"})
        store.update_project_settings("*", {"env_allow": ["SLURM_*", "MY_VAR"]})
        store.set_project_schema("p2", SCHEMA)
    return path


@pytest.fixture
def catalog(catalog_path):
    with Store.open(catalog_path) as store:
        yield store


def snapshot(store) -> dict:
    """Everything the catalog answers, and every sub-database of the index."""
    dump = store.index.dump()
    return {
        "documents": store.catalog_documents(),
        "aliases": {(p, r): store.aliases(p, r) for p, r in
                    (("p1", "r1"), ("p1", "r2"), ("p2", "r1"))},
        "settings": {p: (store.project_settings(p), store.project_settings(p, inherited=False))
                     for p in ("p1", "p2", "*")},
        "schemas": {p: (store.project_schema(p), store.project_schema(p, inherited=False))
                    for p in ("p1", "p2", "*")},
        "index": {name: dump[name] for name in ("chunks", "manifests", "versions", "entries",
                                                 "search", "aliases", "settings")},
        # column values are JSON objects whose key order depends on insertion: compare parsed
        "columns": {key: orjson.loads(value) for key, value in dump["columns"].items()},
        "journal_seq": dump["meta"][b"journal_seq"],
        "format": dump["meta"][b"format"],
    }


EXPECTED_ALIASES = {
    ("p1", "r1"): {"production": "v2", "latest": "v3", "best": "v2"},
    ("p1", "r2"): {"candidate": "w1", "latest": "w1", "best": "w1"},
    ("p2", "r1"): {"latest": "x1"},
}


def test_the_fixture_catalog_is_what_was_done(catalog):
    state = snapshot(catalog)
    assert state["aliases"] == EXPECTED_ALIASES
    tags = {(d["project"], d["run"], d["version"]): d["tags"] for d in state["documents"]}
    assert tags == {("p1", "r1", "v1"): [], ("p1", "r1", "v2"): ["best", "production"],
                    ("p1", "r1", "v3"): ["latest"], ("p1", "r2", "w1"): ["best", "candidate", "latest"],
                    ("p2", "r1", "x1"): ["latest"]}
    assert state["settings"]["p1"] == ({"env_allow": ["SLURM_*", "MY_VAR"], "primary_metric": "eval_loss",
                                        "mode": "min"},
                                       {"primary_metric": "eval_loss", "mode": "min"})
    assert state["settings"]["p2"] == ({"env_allow": ["SLURM_*", "MY_VAR"]}, {})
    assert state["schemas"] == {"p1": (None, None), "p2": (SCHEMA, SCHEMA), "*": (None, None)}
    parent = {d["version"]: (d.get("lineage") or {}).get("parent") for d in state["documents"]}
    assert parent["x1"] == {"project": "p1", "run": "r1", "version": "v2", "source": "explicit"}
    assert parent["v3"] == {"project": "p1", "run": "r1", "version": "v2", "source": "previous"}
    assert parent["v1"] is None and parent["w1"] is None
    kinds = [(e["type"], e.get("alias"), e.get("version"), e.get("previous"))
             for e in journal_entries(catalog.path) if e["type"].startswith("alias.")]
    assert kinds == [("alias.set", "production", "v1", None), ("alias.set", "staging", "v3", None),
                     ("alias.set", "production", "v2", "v1"), ("alias.removed", "staging", "v3", None),
                     ("alias.set", "candidate", "w1", None)]


def test_rebuild_index_keeps_aliases_settings_and_schema(catalog):
    before = snapshot(catalog)
    summary = catalog.rebuild_index()
    assert summary["versions"] == len(VERSIONS)
    assert snapshot(catalog) == before


def test_journal_replay_after_the_index_is_deleted(catalog_path):
    """The LMDB files gone (the directory kept): opening replays the whole journal."""
    with Store.open(catalog_path) as store:
        before = snapshot(store)
    index = os.path.join(catalog_path, "index")
    for name in os.listdir(index):
        os.unlink(os.path.join(index, name))
    with Store.open(catalog_path) as store:
        assert snapshot(store) == before


def test_an_index_that_missed_the_catalog_events_catches_up(tmp_path):
    """An index saved after the seals, before any alias, setting or schema was set (as if
    the process died between journal and index): opening applies the rest."""
    path = str(tmp_path / "store")
    saved = str(tmp_path / "saved-index")
    with Store.init(path) as store:
        for project, run, version, eval_loss, parent in VERSIONS:
            seal(store, tmp_path, project, run, version, eval_loss, parent)
    shutil.copytree(os.path.join(path, "index"), saved)
    with Store.open(path) as store:
        store.set_alias("p1", "r1", "production", "v1")
        store.set_alias("p1", "r1", "production", "v2")
        store.set_alias("p1", "r2", "candidate", "w1")
        store.update_project_settings("p1", {"primary_metric": "eval_loss", "mode": "min"})
        store.update_project_settings("*", {"env_allow": ["SLURM_*", "MY_VAR"]})
        store.set_project_schema("p2", SCHEMA)
        before = snapshot(store)
    shutil.rmtree(os.path.join(path, "index"))
    shutil.copytree(saved, os.path.join(path, "index"))
    with Store.open(path) as store:
        assert snapshot(store) == before
        assert before["aliases"] == EXPECTED_ALIASES


def test_rebuild_index_when_the_index_directory_is_gone(catalog_path):
    with Store.open(catalog_path) as store:
        before = snapshot(store)
    shutil.rmtree(os.path.join(catalog_path, "index"))
    with Store.open(catalog_path) as store:
        store.rebuild_index()
        assert snapshot(store) == before


def test_an_old_index_is_upgraded_on_open(catalog_path):
    """An index written before the catalog existed: no format key, and no search, columns,
    aliases or settings contents. Opening the store replays the journal into them."""
    with Store.open(catalog_path) as store:
        before = snapshot(store)

        def make_old(txn):
            txn.delete(b"format", db=store.index.meta)
            for db in (store.index.search, store.index.columns, store.index.aliases,
                       store.index.settings):
                txn.drop(db, delete=False)
        store.index.commit(make_old)
        old = store.index.dump()
    assert b"format" not in old["meta"]
    assert old["search"] == old["columns"] == old["aliases"] == old["settings"] == {}
    assert len(old["versions"]) == len(VERSIONS)  # the versions themselves are there
    with Store.open(catalog_path) as store:
        after = snapshot(store)
    assert after["format"] == str(INDEX_FORMAT).encode()
    assert after == before


def test_catalog_documents_limited_to_fields(catalog):
    docs = catalog.catalog_documents(fields=[("metrics",)])
    assert [(d["project"], d["run"], d["version"]) for d in docs] == \
        [(p, r, v) for p, r, v, _, _ in VERSIONS]  # sealing order
    for doc, (_p, _r, _v, eval_loss, _parent) in zip(docs, VERSIONS):
        assert set(doc) == {"project", "run", "version", "seq", "metrics"}
        assert doc["metrics"] == {"eval_accuracy": 0.75, "eval_loss": eval_loss, "loss": 1.0}
    assert [d["seq"] for d in docs] == sorted(d["seq"] for d in docs)
    one_member = catalog.catalog_documents("p1", "r1", fields=[("lineage", "parent")])
    for doc in one_member:
        assert set(doc) <= {"project", "run", "version", "seq", "lineage"}
        assert set(doc.get("lineage", {})) <= {"parent"}
    with_tags = catalog.catalog_documents("p1", fields=[("tags",)])
    assert {d["version"]: d["tags"] for d in with_tags} == {
        "v1": [], "v2": ["best", "production"], "v3": ["latest"], "w1": ["best", "candidate", "latest"]}


def test_best_ties_pick_the_earliest_version(catalog, tmp_path):
    for version, eval_loss in (("t1", 0.7), ("t2", 0.9), ("t3", 0.9), ("t4", 0.7)):
        seal(catalog, tmp_path, "ties", "r", version, eval_loss)
    seal(catalog, tmp_path, "ties", "r", "t5-no-metric", 0.1)
    catalog.update_project_settings("ties", {"primary_metric": "eval_loss", "mode": "min"})
    assert catalog.aliases("ties", "r")["best"] == "t5-no-metric"
    catalog.update_project_settings("ties", {"primary_metric": "eval_accuracy", "mode": "max"})
    assert catalog.aliases("ties", "r")["best"] == "t1"  # all 0.75: the earliest
    catalog.update_project_settings("ties", {"primary_metric": "eval_loss", "mode": "max"})
    assert catalog.aliases("ties", "r")["best"] == "t2"  # t2 and t3 tie at 0.9
    catalog.update_project_settings("ties", {"primary_metric": "nosuch_metric"})
    assert "best" not in catalog.aliases("ties", "r")  # no version has it: no best
    catalog.update_project_settings("ties", {}, unset=["primary_metric", "mode"])
    assert catalog.aliases("ties", "r") == {"latest": "t5-no-metric"}


def test_best_follows_a_default_primary_metric_of_every_project(catalog):
    catalog.update_project_settings("*", {"primary_metric": "eval_loss", "mode": "max"})
    assert catalog.aliases("p2", "r1")["best"] == "x1"
    assert catalog.aliases("p1", "r1")["best"] == "v2"  # p1's own mode=min wins over *'s


def test_without_a_primary_metric_best_follows_what_the_training_job_chose(catalog, tmp_path):
    """A Trainer's metric_for_best_model (recorded at the seal as best_by) makes `best`
    in a project that names no primary metric; the newest checkpoint's choice counts, and
    a project's own primary metric wins over it."""
    def seal_trainer(version, eval_loss, chosen):
        user = {"lineage": {"hyperparameters": chosen}}
        src = make_hf_checkpoint(tmp_path / "src" / "job" / version, 10, eval_loss=eval_loss,
                                 user=user)
        return archive_directory(catalog, src, "job", "r", version)
    seal_trainer("c1", 0.5, {})
    assert "best" not in catalog.aliases("job", "r")
    seal_trainer("c2", 0.3, {"metric_for_best_model": "loss"})  # loss: lower is better
    seal_trainer("c3", 0.4, {"metric_for_best_model": "eval_loss"})
    assert catalog.catalog_document("job", "r", "c3")["best_by"] == {
        "metric": "eval_loss", "mode": "min", "source": "TrainingArguments.metric_for_best_model"}
    assert catalog.aliases("job", "r")["best"] == "c2"
    whole = {d["version"]: d["aliases"] for d in catalog.catalog_documents("job", "r")}
    assert whole["c2"] == ["best"]  # whole documents and limited ones agree
    seal_trainer("c4", 0.45, {"metric_for_best_model": "eval_loss", "greater_is_better": True})
    assert catalog.aliases("job", "r")["best"] == "c1"  # the newest choice: highest eval_loss
    catalog.update_project_settings("job", {"primary_metric": "eval_loss", "mode": "min"})
    assert catalog.aliases("job", "r")["best"] == "c2"


@pytest.mark.parametrize("name, error, text", [
    ("latest", ReservedAliasError, "maintained by ckptfs"),
    ("best", ReservedAliasError, "primary_metric"),
    ("run.json", AliasError, "clash with the run directory"),
    ("prod.json", AliasError, "clash with the run directory"),
    ("prod.error", AliasError, "clash with the run directory"),
    ("v1", AliasError, "has a version named 'v1'"),
    ("a/b", InvalidNameError, "must not contain '/'"),
    ("", InvalidNameError, "must not be empty"),
    ("..", InvalidNameError, "reserved"),
    ("tab\there", InvalidNameError, "control characters"),
])
def test_alias_name_rules(catalog, name, error, text):
    seq = catalog.journal.last_seq()
    with pytest.raises(error, match=re.escape(text)) as caught:
        catalog.set_alias("p1", "r1", name, "v1")
    assert caught.value.errno == (errno.EPERM if error is ReservedAliasError else errno.EINVAL)
    assert catalog.journal.last_seq() == seq  # nothing journaled


def test_alias_targets(catalog):
    with pytest.raises(AliasError, match="has no version 'nosuch'"):
        catalog.set_alias("p1", "r1", "x", "nosuch")
    with pytest.raises(AliasError, match="has no version 'w1'"):  # another run's version
        catalog.set_alias("p1", "r1", "x", "w1")
    event = catalog.set_alias("p1", "r1", "x", "production")  # an alias resolves to its version
    assert (event["version"], event["previous"]) == ("v2", None)
    event = catalog.set_alias("p1", "r1", "y", "v1/")
    assert event["version"] == "v1"
    seq = catalog.journal.last_seq()
    assert catalog.set_alias("p1", "r1", "x", "v2") is None  # already so: no event
    assert catalog.journal.last_seq() == seq
    catalog.rename_alias("p1", "r1", "x", "z")
    assert catalog.aliases("p1", "r1") == {**EXPECTED_ALIASES[("p1", "r1")], "y": "v1", "z": "v2"}
    assert [(e["type"], e["alias"], e["version"]) for e in journal_entries(catalog.path)[-2:]] == \
        [("alias.set", "z", "v2"), ("alias.removed", "x", "v2")]


def test_removing_aliases(catalog):
    with pytest.raises(NotFoundError, match="p1/r1 has no alias 'staging'"):
        catalog.remove_alias("p1", "r1", "staging")
    with pytest.raises(NotFoundError):
        catalog.remove_alias("p1", "nosuch-run", "production")
    with pytest.raises(NotFoundError):
        catalog.rename_alias("p1", "r1", "staging", "other")
    for reserved in ("latest", "best"):
        with pytest.raises(ReservedAliasError) as caught:
            catalog.remove_alias("p1", "r1", reserved)
        assert caught.value.errno == errno.EPERM
    event = catalog.remove_alias("p1", "r1", "production")
    assert (event["type"], event["version"]) == ("alias.removed", "v2")
    assert "production" not in catalog.aliases("p1", "r1")


def test_a_version_cannot_take_an_alias_name(catalog, tmp_path):
    with pytest.raises(VersionExistsError, match="has an alias named 'production'"):
        seal(catalog, tmp_path, "p1", "r1", "production", 0.1)
    with pytest.raises(VersionExistsError, match="has an alias named 'best'"):
        seal(catalog, tmp_path, "p1", "r1", "best", 0.1)
    seal(catalog, tmp_path, "p1", "r2", "production", 0.1)  # another run: free there
    assert catalog.version_record("p1", "r2", "production") is not None
    assert catalog.version_record("p1", "r1", "production") is None


@pytest.mark.parametrize("changes, unset, text", [
    ({"colour": "blue"}, (), "unknown setting 'colour'"),
    ({"mode": "sideways"}, (), "setting 'mode' must be 'min' or 'max', not 'sideways'"),
    ({"primary_metric": ""}, (), "setting 'primary_metric' must be a metric name"),
    ({"primary_metric": 3}, (), "must be a metric name"),
    ({"env_allow": "SLURM_*"}, (), "setting 'env_allow' must be a list"),
    ({"env_allow": ["OK", ""]}, (), "setting 'env_allow' must be a list"),
    ({}, ("colour",), "unknown setting 'colour'"),
])
def test_settings_validation(catalog, changes, unset, text):
    seq = catalog.journal.last_seq()
    with pytest.raises(SettingError, match=re.escape(text)) as caught:
        catalog.update_project_settings("p1", changes, unset=unset)
    assert caught.value.errno == errno.EINVAL
    assert catalog.journal.last_seq() == seq
    assert catalog.project_settings("p1", inherited=False) == {"primary_metric": "eval_loss", "mode": "min"}


def test_settings_of_a_bad_project_name(catalog):
    with pytest.raises(InvalidNameError):
        catalog.update_project_settings("a/b", {"mode": "max"})
    with pytest.raises(InvalidNameError):
        catalog.set_project_schema("..", SCHEMA)


def test_settings_update_and_unset(catalog):
    assert catalog.update_project_settings("p1", {"mode": "max"}) == \
        {"primary_metric": "eval_loss", "mode": "max"}
    assert catalog.aliases("p1", "r1")["best"] == "v1"
    assert catalog.update_project_settings("p1", {}, unset=["mode", "primary_metric"]) == {}
    assert "best" not in catalog.aliases("p1", "r1")
    assert catalog.project_settings("p1") == {"env_allow": ["SLURM_*", "MY_VAR"]}
    events = [e for e in journal_entries(catalog.path) if e["type"] == "project.settings"]
    assert events[-1]["settings"] == {}


def test_schema_inheritance_and_removal(catalog, tmp_path):
    catalog.set_project_schema("*", {"type": "object"})
    assert catalog.project_schema("p1") == {"type": "object"}
    assert catalog.project_schema("p1", inherited=False) is None
    assert catalog.project_schema("p2") == SCHEMA
    catalog.set_project_schema("p2", None)
    assert catalog.project_schema("p2") == {"type": "object"}
    assert catalog.project_schema("p2", inherited=False) is None
    kinds = [(e["project"], e["schema"]) for e in journal_entries(catalog.path)
             if e["type"] == "project.schema"]
    assert kinds == [("p2", SCHEMA), ("*", {"type": "object"}), ("p2", None)]


def test_a_schema_refuses_before_anything_is_stored(catalog, tmp_path):
    from ckptfs.meta.schema import SchemaViolation
    catalog.set_project_schema("p2", {"properties": {"step": {"maximum": 5},
                                                     "notes": {"type": "string"}}})
    packs_before = sorted(os.listdir(os.path.join(catalog.path, "packs")))
    seq = catalog.journal.last_seq()
    with pytest.raises(SchemaViolation) as caught:
        seal(catalog, tmp_path, "p2", "r1", "x2", 0.1, step=40)
    assert caught.value.failures == ["notes: None is not of type 'string' (rule: type)",
                                     "step: 40 is greater than the maximum of 5 (rule: maximum)"]
    assert "version p2/r1/x2 does not satisfy the schema of project p2" in str(caught.value)
    assert catalog.version_record("p2", "r1", "x2") is None
    assert catalog.journal.last_seq() == seq
    assert sorted(os.listdir(os.path.join(catalog.path, "packs"))) == packs_before
