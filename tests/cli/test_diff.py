"""`ckptfs diff` as a user runs it: the sections of the terminal output, `--json` (the
same dict as `ckptfs.meta.diff.diff_versions`, tests/store/test_diff.py), aliases, and
one-line errors."""
import json

from ckptfs.meta.diff import diff_versions
from ckptfs.store import Store
from tests.helpers import diff as helpers
from tests.helpers.cli import run_cli_checked, run_cli_many
from tests.helpers.diff import WEIGHTS_1, WEIGHTS_2, sha256

diffed = helpers.diffed  # a fixture (tests/helpers/diff.py)


def sections(text: str) -> dict[str, list[str]]:
    """{title: its lines} of the output (sections are separated by an empty line; the
    title is what comes before the first ':')."""
    found = {}
    for block in text.strip("\n").split("\n\n"):
        lines = block.splitlines()
        found[lines[0].split(":", 1)[0]] = lines
    return found


def test_the_sections_say_what_changed(diffed):
    proc = run_cli_checked("diff", diffed.store, "nlp/run-a/s1", "nlp/run-a/s2")
    out = sections(proc.stdout.decode())
    assert list(out) == ["A", "Files", "Metrics", "Hyperparameters", "Environment", "Lineage"]
    assert out["A"][0].startswith("A: nlp/run-a/s1  (step 100, sealed 20")
    assert out["A"][1].startswith("B: nlp/run-a/s2  (step 200, sealed 20")
    files = out["Files"]
    assert files[0] == "Files: 1 added, 1 removed, 2 changed, 1 unchanged"
    assert [line.split()[:2] for line in files[2:]] == [
        ["+", "eval.txt"], ["-", "notes.txt"], ["~", "ckptfs.json"], ["~", "weights.bin"]]
    weights = files[-1].split()
    assert weights[-3:] == [sha256(WEIGHTS_1)[:12], "->", sha256(WEIGHTS_2)[:12]]
    metrics = [line.split() for line in out["Metrics"][2:]]
    assert metrics == [["acc", "0.5", "0.5", "+0"], ["loss", "1", "0.5", "-0.5"],
                       ["new_only", "-", "7", "-"], ["old_only", "3", "-", "-"]]
    assert out["Hyperparameters"][0] == "Hyperparameters: 2 keys differ"
    assert [line.split() for line in out["Hyperparameters"][2:]] == [
        ["lr", "0.1", "0.05"], ["optimizer.beta", "0.9", "0.95"]]
    assert ["packages.torch", "2.3", "2.4"] in [line.split() for line in out["Environment"]]
    assert out["Lineage"][1:] == ["  parent of A: none", "  parent of B: nlp/run-a/s1",
                                  "  B descends from A (A is its parent)"]
    assert proc.stderr == b""


def test_json_is_the_library_dict_and_aliases_resolve(diffed):
    by_alias, by_name = run_cli_many(
        ("diff", diffed.store, "nlp/run-a/production", "nlp/run-a/latest", "--json"),
        ("diff", diffed.store, "nlp/run-a/s1", "nlp/run-a/s2", "--json"))
    with Store.open(diffed.store) as store:
        expected = diff_versions(store, "nlp/run-a/s1", "nlp/run-a/s2")
    assert json.loads(by_alias.stdout) == json.loads(by_name.stdout) == expected


def test_unrelated_and_identical_versions(diffed):
    siblings, same = run_cli_many(("diff", diffed.store, "nlp/run-a/s2", "vision/ft/f1"),
                                  ("diff", diffed.store, "nlp/run-a/best", "nlp/run-a/s2"))
    assert "  neither descends from the other" in siblings.stdout.decode().splitlines()
    out = sections(same.stdout.decode())
    assert out["Files"] == ["Files: 0 added, 0 removed, 0 changed, 4 unchanged"]
    assert out["Hyperparameters"] == ["Hyperparameters: the same"]
    assert out["Environment"] == ["Environment: the same"]
    assert out["Lineage"][-1] == "  A and B are the same version"


def test_errors_are_one_line(diffed):
    missing, project, malformed = run_cli_many(
        ("diff", diffed.store, "nlp/run-a/s1", "nlp/run-a/s9"),
        ("diff", diffed.store, "audio/r/v1", "nlp/run-a/s1"),
        ("diff", diffed.store, "nlp/run-a", "nlp/run-a/s1"), rc=1)
    assert missing.stderr == b"ckptfs: error: no version nlp/run-a/s9 in the store\n"
    assert project.stderr == b"ckptfs: error: no project 'audio' in the store\n"
    assert malformed.stderr == (b"ckptfs: error: expected PROJECT/RUN/VERSION, got "
                                b"'nlp/run-a'\n")
    assert missing.stdout == project.stdout == malformed.stdout == b""
    usage = run_cli_checked("diff", diffed.store, "nlp/run-a/s1", rc=2)
    assert b"Missing argument 'B'" in usage.stderr
