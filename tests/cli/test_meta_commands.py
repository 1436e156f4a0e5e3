"""Metadata through the real CLI: `ckptfs find`, `log`, `lineage` and `show` over a store
with known versions, and `ckptfs import` recording its provenance and the facts read from
the files. The same metadata through a real mount: tests/mount/test_mount_meta.py."""
import json
import re
import socket

from tests.helpers import mount_meta as helpers
from tests.helpers.cli import run_cli_checked, run_cli_many
from tests.helpers.mount_meta import (
    FIND_VERSIONS,
    HF_FILES,
    PICKLES,
    PLAIN_ENV,
    SAFETENSORS,
    git_repo,
    paths,
)
from tests.helpers.samples import make_hf_checkpoint
from tests.helpers.stores import new_store

known = helpers.known  # a fixture (tests/helpers/mount_meta.py)


def test_the_find_store_was_sealed_in_order(known):
    assert known.order == [f"{p}/{r}/{v}" for p, r, v, *_ in FIND_VERSIONS]
    assert known.sealed_at == sorted(known.sealed_at)
    assert len(set(known.sealed_at)) == len(FIND_VERSIONS)


def test_find_selects_exactly(known):
    since = known.sealed_at[4]  # nlp/run-a/step-4 and everything sealed after it
    queries = {
        "metrics.eval_loss < 0.3": paths(
            "nlp/run-a/step-2", "nlp/run-a/step-3", "vision/base/b-1", "vision/ft-x/ft-1"),
        'lineage.data.version ~ "v3*" and not tags == production': paths(
            "nlp/run-a/step-2", "nlp/run-a/step-4", "vision/base/b-2", "vision/ft-x/ft-1"),
        "has lineage.parent": paths(
            "nlp/run-a/step-2", "nlp/run-a/step-3", "nlp/run-a/step-4", "vision/base/b-2",
            "vision/ft-x/ft-1", "vision/ft-x/ft-2"),
        f"sealed_at >= {since}": paths(
            "nlp/run-a/step-4", "vision/base/b-1", "vision/base/b-2", "vision/ft-x/ft-2"),
        "eval_loss < 0.3": paths(
            "nlp/run-a/step-2", "nlp/run-a/step-3", "vision/base/b-1", "vision/ft-x/ft-1"),
        'project == nlp or run ~ "ft-*"': paths(
            "nlp/run-a/step-1", "nlp/run-a/step-2", "nlp/run-a/step-3", "nlp/run-a/step-4",
            "vision/ft-x/ft-1", "vision/ft-x/ft-2"),
        "tags == production": paths("nlp/run-a/step-3"),
        "tags == latest and metrics.eval_loss >= 0.35": paths("nlp/run-a/step-4", "vision/ft-x/ft-2"),
        'lineage.parent.source == explicit': paths("vision/ft-x/ft-1"),
        "tags == baseline": paths("vision/base/b-1"),
        "eval_loss > 1": [],
        'files.path ~ "tokenizer*" and step < 30': paths("nlp/run-a/step-1", "nlp/run-a/step-2"),
    }
    results = run_cli_many(*[("find", known.store, expr, "--format", "paths") for expr in queries])
    for (expr, expected), proc in zip(queries.items(), results):
        assert proc.stdout.decode().splitlines() == expected, expr


def test_find_table_sort_desc_limit(known):
    proc = run_cli_checked("find", known.store, "--sort", "metrics.eval_loss", "--desc",
                           "--limit", "2")
    lines = proc.stdout.decode().splitlines()
    assert [h.lower() for h in lines[0].split()] == ["path", "sealed_at", "step", "metrics.eval_loss"]
    assert [line.split()[0] for line in lines[1:]] == paths("nlp/run-a/step-1", "vision/ft-x/ft-2")
    assert [line.split()[-1] for line in lines[1:]] == ["0.5", "0.4"]
    assert proc.stderr == b"2 versions\n"
    ascending, by_text = run_cli_many(
        ("find", known.store, "eval_loss < 0.3", "--sort", "eval_loss", "--format", "paths"),
        ("find", known.store, "--sort", "lineage.data.version", "--format", "paths"))
    assert ascending.stdout.decode().splitlines() == paths(
        "vision/ft-x/ft-1", "vision/base/b-1", "nlp/run-a/step-2", "nlp/run-a/step-3")
    # strings by code point; ties (the four v3) in store order
    assert by_text.stdout.decode().splitlines() == paths(
        "vision/base/b-1", "nlp/run-a/step-1", "nlp/run-a/step-2", "nlp/run-a/step-4",
        "vision/base/b-2", "vision/ft-x/ft-1", "nlp/run-a/step-3", "vision/ft-x/ft-2")


def test_find_json_has_tags_and_whole_documents(known):
    proc = run_cli_checked("find", known.store, 'lineage.data.version ~ "v3*"', "--format", "json")
    found = json.loads(proc.stdout)
    assert [d["path"] for d in found] == paths(
        "nlp/run-a/step-2", "nlp/run-a/step-3", "nlp/run-a/step-4", "vision/base/b-2",
        "vision/ft-x/ft-1")
    tags = {d["path"]: d["tags"] for d in found}
    assert tags == {"projects/nlp/run-a/step-2": [], "projects/nlp/run-a/step-3": ["production"],
                    "projects/nlp/run-a/step-4": ["latest"], "projects/vision/base/b-2": ["latest"],
                    "projects/vision/ft-x/ft-1": []}
    step3 = found[1]
    assert step3["aliases"] == ["production"]
    assert step3["metrics"] == {"eval_accuracy": 0.75, "eval_loss": 0.28, "loss": 1.0}
    assert step3["lineage"]["data"] == {"name": "wiki", "version": "v3.1"}
    assert step3["extracted"]["safetensors"] == SAFETENSORS


def test_find_malformed_expression_is_a_usage_error(known):
    proc = run_cli_checked("find", known.store, "metrics.eval_loss <", rc=2)
    error = proc.stderr.decode()
    assert "expected a value after '<' at column 20:\n  metrics.eval_loss <\n" \
           "                     ^" in error
    proc = run_cli_checked("find", known.store, "metrics.eval_loss => 3", rc=2)
    assert "unknown operator '=>' (did you mean '>='?) at column 19" in proc.stderr.decode()


def test_log_lists_newest_first(known):
    full, oneline, everything, fine_tune = run_cli_many(
        ("log", known.store, "nlp/run-a"), ("log", known.store, "nlp/run-a", "--oneline"),
        ("log", known.store, "--oneline"), ("log", known.store, "vision/ft-x"))
    assert re.findall(r"^Parent: +(.*)$", fine_tune.stdout.decode(), re.M) == [
        "vision/ft-x/ft-1", "nlp/run-a/step-2  (explicit)"]
    text = full.stdout.decode()
    headers = re.findall(r"^version (\S+)(.*)$", text, re.M)
    assert headers == [("nlp/run-a/step-4", "  (latest)"), ("nlp/run-a/step-3", "  (production)"),
                       ("nlp/run-a/step-2", ""), ("nlp/run-a/step-1", "")]
    assert "Metrics:  eval_accuracy=0.75  eval_loss=0.28  loss=1" in text
    assert "Parent:   nlp/run-a/step-1\n" in text
    assert "Data:     wiki v3.1\n" in text
    lines = oneline.stdout.decode().splitlines()
    assert len(lines) == 4
    assert [line.split(" ", 1)[1] for line in lines] == [
        "nlp/run-a/step-4 (latest)", "nlp/run-a/step-3 (production)", "nlp/run-a/step-2",
        "nlp/run-a/step-1"]
    stamps = {ref: at for ref, at in zip(known.order, known.sealed_at)}
    for line in lines:
        stamp, ref = line.split(" ")[:2]
        assert stamp == stamps[ref][:19] + "Z"
    assert [line.split(" ")[1] for line in everything.stdout.decode().splitlines()] == \
        list(reversed(known.order))


def test_lineage_of_a_middle_version(known):
    text, as_json, dot, mermaid = run_cli_many(*[
        ("lineage", known.store, "nlp/run-a/step-2", "--format", fmt)
        for fmt in ("text", "json", "dot", "mermaid")])
    graph = json.loads(as_json.stdout)
    assert graph["version"] == "nlp/run-a/step-2"
    assert graph["ancestors"] == [{"ref": "nlp/run-a/step-1", "source": "previous", "missing": False}]
    assert graph["descendants"] == [
        {"ref": "nlp/run-a/step-3", "parent": "nlp/run-a/step-2", "source": "previous"},
        {"ref": "vision/ft-x/ft-1", "parent": "nlp/run-a/step-2", "source": "explicit"},
        {"ref": "nlp/run-a/step-4", "parent": "nlp/run-a/step-3", "source": "previous"},
        {"ref": "vision/ft-x/ft-2", "parent": "vision/ft-x/ft-1", "source": "previous"}]
    edges = {(a, b, s) for a, b, s in graph["edges"]}
    assert edges == {("nlp/run-a/step-1", "nlp/run-a/step-2", "previous"),
                     ("nlp/run-a/step-2", "nlp/run-a/step-3", "previous"),
                     ("nlp/run-a/step-2", "vision/ft-x/ft-1", "explicit"),
                     ("nlp/run-a/step-3", "nlp/run-a/step-4", "previous"),
                     ("vision/ft-x/ft-1", "vision/ft-x/ft-2", "previous")}

    lines = text.stdout.decode().splitlines()
    assert lines[0].strip() == "nlp/run-a/step-1"
    assert lines[1] == "* nlp/run-a/step-2"
    assert any("nlp/run-a/step-3 [production]" in line for line in lines[2:])
    assert any("vision/ft-x/ft-1" in line and "explicit" in line for line in lines[2:])
    assert len(lines) == 6

    source = dot.stdout.decode().strip()
    assert re.fullmatch(r"digraph \w+ \{\n.*\n\}", source, re.S)
    assert source.count("{") == source.count("}") == 1
    dot_edges = set(re.findall(r'^\s*"([^"]+)" -> "([^"]+)"', source, re.M))
    assert dot_edges == {(a, b) for a, b, _ in edges}
    assert re.search(r'"nlp/run-a/step-2" -> "vision/ft-x/ft-1" \[style=dashed', source)

    chart = mermaid.stdout.decode()
    assert chart.startswith("graph TD\n")
    assert chart.count("-->") + chart.count("-.->") == len(edges)
    assert "-.->|explicit|" in chart

    leaf = json.loads(run_cli_checked("lineage", known.store, "vision/ft-x/ft-2",
                                      "--format", "json").stdout)
    assert [a["ref"] for a in leaf["ancestors"]] == [
        "vision/ft-x/ft-1", "nlp/run-a/step-2", "nlp/run-a/step-1"]
    assert [a["source"] for a in leaf["ancestors"]] == ["previous", "explicit", "previous"]
    assert leaf["descendants"] == []
    proc = run_cli_checked("lineage", known.store, "nlp/run-a/nosuch", rc=1)
    assert proc.stderr == b"ckptfs: error: no version nlp/run-a/nosuch in the store\n"


def test_import_records_its_provenance_and_the_extracted_facts(tmp_path):
    store = new_store(tmp_path)
    repo, head = git_repo(tmp_path / "repo")
    src = make_hf_checkpoint(tmp_path / "src" / "step-1", 100, eval_loss=0.21, loss=0.4,
                             eval_accuracy=0.9)
    run_cli_checked("import", store, src, "nlp/r/step-1", cwd=repo, env=PLAIN_ENV)
    shown = run_cli_checked("show", store, "nlp/r/step-1").stdout.decode()
    assert shown.startswith('{\n  "schema": "ckptfs.version/1",\n  "project": "nlp",\n'
                            '  "run": "r",\n  "version": "step-1",\n')
    doc = json.loads(shown)
    assert doc["provenance"]["via"] == "import"
    assert "import" in doc["provenance"]["command_line"]
    assert doc["provenance"]["cwd"] == repo
    assert doc["step"] == 100
    assert doc["metrics"] == {"eval_accuracy": 0.9, "eval_loss": 0.21, "loss": 0.4}
    assert doc["extracted"]["safetensors"] == SAFETENSORS
    assert doc["extracted"]["pickles"] == PICKLES
    # the importing process's commit counts; its own Python and packages do not
    assert doc["lineage"]["code"]["git_commit"] == head
    assert doc["lineage"]["environment"] == {"host": socket.gethostname(),
                                             "packages": {"transformers": "4.44.0"}}
    assert doc["warnings"] == []
    assert [f["path"] for f in doc["files"]] == sorted(set(HF_FILES) - {"ckptfs.json"})
    missing = run_cli_checked("show", store, "nlp/r/nosuch", rc=1)
    assert missing.stderr == b"ckptfs: error: no version nlp/r/nosuch in the store\n"


def test_import_refuses_a_version_named_like_an_alias(tmp_path):
    store = new_store(tmp_path)
    src = make_hf_checkpoint(tmp_path / "src" / "a", 1)
    run_cli_checked("import", store, src, "nlp/r/step-1")
    run_cli_checked("tag", store, "nlp/r/step-1", "prod")
    proc = run_cli_checked("import", store, src, "nlp/r/prod", rc=1)
    assert proc.stderr.decode() == (
        "ckptfs: error: nlp/r has an alias named 'prod': choose another version name "
        "(or remove the alias with `ckptfs untag`)\n")
    proc = run_cli_checked("import", store, src, "nlp/r/best", rc=1)
    assert "nlp/r has an alias named 'best'" in proc.stderr.decode()
    run_cli_checked("untag", store, "nlp/r", "prod")
    run_cli_checked("import", store, src, "nlp/r/prod")
    doc = json.loads(run_cli_checked("show", store, "nlp/r/prod").stdout)
    assert doc["lineage"]["parent"] == {"project": "nlp", "run": "r", "version": "step-1",
                                        "source": "previous"}
    assert doc["tags"] == ["latest"]
