"""`ckptfs.meta.diff.diff_versions` over a real store: files by SHA-256, metrics with
deltas, hyperparameters and environment, lineage across runs and projects, aliases,
roles, and the errors of a reference that names nothing. The command: tests/cli/test_diff.py."""
import json

import pytest

from ckptfs.meta.diff import diff_versions
from ckptfs.meta.seal import archive_directory
from ckptfs.store import AccessDeniedError, InvalidNameError, NotFoundError, Store
from tests.helpers import diff as helpers
from tests.helpers.access import NOBODY
from tests.helpers.diff import (
    TOKENIZER,
    VERSIONS,
    WEIGHTS_1,
    WEIGHTS_2,
    ckptfs_json,
    sha256,
)

diffed = helpers.diffed  # a fixture (tests/helpers/diff.py)

S1_JSON, S2_JSON = ckptfs_json(VERSIONS[0][4]), ckptfs_json(VERSIONS[1][4])


def diff(path, a, b, **kw):
    with Store.open(path) as store:
        return diff_versions(store, a, b, **kw)


def test_two_versions_of_a_run(diffed):
    result = diff(diffed.store, "nlp/run-a/s1", "nlp/run-a/s2")
    assert json.loads(json.dumps(result)) == result  # JSON as it is
    assert (result["a"]["key"], result["a"]["step"]) == ("nlp/run-a/s1", 100)
    assert (result["b"]["key"], result["b"]["step"]) == ("nlp/run-a/s2", 200)
    assert result["a"]["sealed_at"] < result["b"]["sealed_at"]
    assert result["files"] == {
        "added": [{"path": "eval.txt", "size": 9, "sha256": sha256(b"loss 0.5\n")}],
        "removed": [{"path": "notes.txt", "size": 6, "sha256": sha256(b"first\n")}],
        "changed": [
            {"path": "ckptfs.json", "a": {"size": len(S1_JSON), "sha256": sha256(S1_JSON)},
             "b": {"size": len(S2_JSON), "sha256": sha256(S2_JSON)}},
            {"path": "weights.bin", "a": {"size": 4096, "sha256": sha256(WEIGHTS_1)},
             "b": {"size": 4096, "sha256": sha256(WEIGHTS_2)}}],
        "unchanged": 1,  # tokenizer.json
    }
    assert sha256(TOKENIZER) not in json.dumps(result["files"]["changed"])
    assert result["metrics"] == [
        {"name": "acc", "a": 0.5, "b": 0.5, "delta": 0.0},
        {"name": "loss", "a": 1.0, "b": 0.5, "delta": -0.5},
        {"name": "new_only", "a": None, "b": 7, "delta": None},
        {"name": "old_only", "a": 3, "b": None, "delta": None},
    ]
    assert result["hyperparameters"] == [{"key": "lr", "a": 0.1, "b": 0.05},
                                         {"key": "optimizer.beta", "a": 0.9, "b": 0.95}]
    assert {"key": "packages.torch", "a": "2.3", "b": "2.4"} in result["environment"]
    assert all(change["key"] != "cuda" for change in result["environment"])
    assert result["lineage"] == {"a_parent": None, "b_parent": "nlp/run-a/s1",
                                 "b_descends_from_a": True, "a_descends_from_b": False}


def test_the_other_way_round_swaps_the_sides(diffed):
    forward = diff(diffed.store, "nlp/run-a/s1", "nlp/run-a/s2")
    back = diff(diffed.store, "nlp/run-a/s2", "nlp/run-a/s1")
    assert back["files"]["added"] == forward["files"]["removed"]
    assert back["files"]["removed"] == forward["files"]["added"]
    assert [m["delta"] for m in back["metrics"]] == [0.0, 0.5, None, None]
    assert back["lineage"] == {"a_parent": "nlp/run-a/s1", "b_parent": None,
                               "b_descends_from_a": False, "a_descends_from_b": True}


def test_a_version_against_itself_is_all_unchanged(diffed):
    result = diff(diffed.store, "nlp/run-a/s2", "nlp/run-a/s2")
    assert result["files"] == {"added": [], "removed": [], "changed": [], "unchanged": 4}
    assert result["hyperparameters"] == result["environment"] == []
    assert all(m["delta"] in (0, None) for m in result["metrics"])
    assert not result["lineage"]["b_descends_from_a"]


def test_across_runs_and_projects(diffed):
    result = diff(diffed.store, "nlp/run-a/s1", "vision/ft/f1")
    assert result["files"]["added"] == [{"path": "head.bin", "size": 512,
                                         "sha256": sha256(b"\x03" * 512)}]
    assert [f["path"] for f in result["files"]["removed"]] == ["notes.txt", "tokenizer.json"]
    assert result["files"]["unchanged"] == 1  # weights.bin: the fine-tune kept them
    assert result["lineage"]["b_parent"] == "nlp/run-a/s1"
    assert result["lineage"]["b_descends_from_a"] is True
    hyper = {h["key"]: (h["a"], h["b"]) for h in result["hyperparameters"]}
    assert hyper == {"lr": (0.1, 0.01), "batch": (32, None), "optimizer.name": ("adam", None),
                     "optimizer.beta": (0.9, None)}
    sibling = diff(diffed.store, "nlp/run-a/s2", "vision/ft/f1")  # both children of s1
    assert not sibling["lineage"]["b_descends_from_a"]
    assert not sibling["lineage"]["a_descends_from_b"]


def test_aliases_name_the_versions_they_point_at(diffed):
    by_name = diff(diffed.store, "nlp/run-a/s1", "nlp/run-a/s2")
    for a, b in (("nlp/run-a/production", "nlp/run-a/latest"),
                 ("nlp/run-a/production", "nlp/run-a/best"), ("nlp/run-a/s1/", "nlp/run-a/latest")):
        assert diff(diffed.store, a, b) == by_name, (a, b)
    across = diff(diffed.store, "vision/ft/latest", "nlp/run-a/production")
    assert (across["a"]["key"], across["b"]["key"]) == ("vision/ft/f1", "nlp/run-a/s1")


@pytest.mark.parametrize("ref, error, message", [
    ("nlp/run-a/s9", NotFoundError, "no version nlp/run-a/s9 in the store"),
    ("nlp/run-z/s1", NotFoundError, "no version nlp/run-z/s1 in the store"),
    ("audio/run-a/s1", NotFoundError, "no project 'audio' in the store"),
    ("nlp/run-a", InvalidNameError, "expected PROJECT/RUN/VERSION, got 'nlp/run-a'"),
    ("nlp/run-a/s1/x", InvalidNameError, "expected PROJECT/RUN/VERSION"),
    ("nlp/../s1", InvalidNameError, "reserved"),
])
def test_a_reference_that_names_nothing_is_a_clear_error(diffed, ref, error, message):
    for a, b in ((ref, "nlp/run-a/s1"), ("nlp/run-a/s1", ref)):
        with pytest.raises(error) as raised:
            diff(diffed.store, a, b)
        assert message in str(raised.value)


def test_a_deleted_version_says_it_was_deleted(tmp_path):
    path = str(tmp_path / "store")
    with Store.init(path) as store:
        for p, r, v, files, user in VERSIONS[:2]:
            src = helpers.write_version(tmp_path / "src" / v, files, user)
            archive_directory(store, src, p, r, v)
        store.delete_version("nlp", "run-a", "s1", reason="test")
        with pytest.raises(NotFoundError, match="deleted"):
            diff_versions(store, "nlp/run-a/s1", "nlp/run-a/s2")


def test_it_needs_the_reader_role_on_both_projects(tmp_path):
    path = str(tmp_path / "store")
    nobody = {"uid": NOBODY, "gids": [NOBODY], "pid": 1}
    with Store.init(path) as store:
        for p, r, v, files, user in VERSIONS:
            src = helpers.write_version(tmp_path / "src" / p / v, files, user)
            archive_directory(store, src, p, r, v)
        store.grant("*", "user:root", "admin")
        store.grant("vision", "user:nobody", "reader")
        store.set_enforcement(True)
        assert diff_versions(store, "vision/ft/f1", "vision/ft/latest", actor=nobody)
        for a, b in (("vision/ft/f1", "nlp/run-a/s1"), ("nlp/run-a/s1", "vision/ft/f1"),
                     ("vision/ft/f1", "nlp/run-a/nothing-here")):  # no hint it is missing
            with pytest.raises(AccessDeniedError, match="project nlp"):
                diff_versions(store, a, b, actor=nobody)
        assert diff_versions(store, "vision/ft/f1", "nlp/run-a/s1")["a"]["key"] == "vision/ft/f1"
