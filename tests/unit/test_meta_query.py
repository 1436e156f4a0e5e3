"""The `ckptfs find` query language: which versions each expression selects, its errors,
field lookup and sorting, over a handful of realistic sidecar documents."""
import re

import pytest

from ckptfs.meta.query import (MISSING, QueryError, compile_query, field_value, sort_documents,
                               sort_key)


def sidecar(project, run, version, sealed_at, **fields):
    return {"project": project, "run": run, "version": version, "sealed_at": sealed_at, **fields}


DOCS = [
    sidecar("nlp", "run-42", "step-3000", "2026-11-23T10:15:02.123456Z", step=3000, epoch=1.5,
            tags=["production", "latest"], notes="best so far",
            metrics={"eval_loss": 0.28, "loss": 0.31, "eval/loss": 0.27},
            lineage={"parent": {"project": "nlp", "run": "run-42", "version": "step-2000"},
                     "code": {"git_commit": "abc123", "dirty": None},
                     "data": {"name": "wiki", "version": "v3.1", "split": "train"},
                     "hyperparameters": {"learning_rate": 2e-05}},
            files=[{"path": "model.safetensors", "size": 600},
                   {"path": "config.json", "size": 2}]),
    sidecar("nlp", "run-42", "step-2000", "2026-11-20T08:00:00Z", step=2000, epoch=1.0,
            tags=["candidate"], metrics={"eval_loss": 0.35, "loss": 0.4},
            lineage={"parent": {"project": "nlp", "run": "run-42", "version": "step-1000"},
                     "code": {"dirty": False},
                     "data": {"name": "wiki", "version": "v3.0", "split": "train"},
                     "hyperparameters": {"learning_rate": 3e-05}},
            files=[{"path": "model.safetensors", "size": 600},
                   {"path": "optimizer.pt", "size": 1200}]),
    sidecar("nlp", "run-42", "step-1000", "2026-10-31T23:59:59Z", step=1000, epoch=0.5,
            tags=[], metrics={"loss": 0.6},
            lineage={"code": {"dirty": True},
                     "data": {"name": "wiki", "version": "v2", "split": "train"}},
            files=[{"path": "pytorch_model.bin", "size": 600}]),
    # No metrics, no step; sealed 2026-08-31T22:30Z written with a +02:00 offset.
    sidecar("nlp", "base", "v1", "2026-09-01T00:30:00+02:00", tags=["production"],
            notes="say \"hi\" it's", lineage={},
            files=[{"path": "model.safetensors", "size": 500}]),
    sidecar("vision", "resnet-a", "epoch-10", "2026-11-01T00:00:00Z", step=50000, epoch=10,
            tags=["production", "v2"], notes="baseline",
            metrics={"eval_loss": 0.9, "eval/loss": 0.91, "eval-f1": 0.7, "accuracy": 0.81},
            lineage={"code": {"dirty": False},
                     "data": {"name": "imagenet", "version": "v3", "split": "train"}},
            files=[{"path": "model.safetensors", "size": 900}]),
    # A date-only sealed_at, a step that is a string, and no files.
    sidecar("vision", "resnet-a", "epoch-20", "2026-11-15", step="50k", epoch=20,
            tags=["latest"], metrics={"eval_loss": 0.7, "accuracy": 0.85},
            lineage={"parent": {"project": "vision", "run": "resnet-a", "version": "epoch-10"},
                     "data": {"name": "imagenet", "version": "v3.1-rc1", "split": "train/val"}},
            files=[]),
    # A null metric, null tags and a sealed_at that is not a date.
    sidecar("audio", "wav2vec", "ckpt-7", "yesterday", step=7, epoch=0, tags=None,
            notes="run ~ test", metrics={"eval_loss": None, "loss": 1.2},
            lineage={"code": {"dirty": False}},
            files=[{"path": "weights/model.safetensors", "size": 10}]),
    # A metric stored as a string, and a top-level `loss` that shadows metrics.loss.
    sidecar("audio", "wav2vec", "final", "2026-12-01T00:00:00.5Z", loss=5,
            tags=["final", "production"], metrics={"eval_loss": "0.2", "loss": 0.1},
            lineage={"parent": {"project": "audio", "run": "wav2vec", "version": "ckpt-7"},
                     "data": {"name": "libri", "version": "v3"}},
            files=[{"path": "model.safetensors", "size": 300},
                   {"path": "extra/model.safetensors", "size": 5}]),
]
ALL = {doc["version"] for doc in DOCS}
NLP = {"step-3000", "step-2000", "step-1000", "v1"}

CASES = [
    # numbers, every relational operator, `=` as `==`
    ("metrics.eval_loss < 0.3", {"step-3000"}),  # "0.2" is a string: no coercion
    ("metrics.eval_loss <= 0.35", {"step-3000", "step-2000"}),
    ("metrics.eval_loss > 0.7", {"epoch-10"}),
    ("metrics.eval_loss >= 0.7", {"epoch-10", "epoch-20"}),
    ("step == 3000", {"step-3000"}),
    ("step = 3000", {"step-3000"}),
    ("step != 3000", {"step-2000", "step-1000", "epoch-10", "ckpt-7"}),  # not missing, not "50k"
    ("metrics.eval_loss != 0.28", {"step-2000", "epoch-10", "epoch-20"}),  # null and "0.2" out
    ("epoch < 1e1", {"step-3000", "step-2000", "step-1000", "ckpt-7"}),
    ("step > -1 and step < 8", {"ckpt-7"}),
    ("lineage.hyperparameters.learning_rate == 2e-5", {"step-3000"}),
    # strings: bare words, quotes, escapes, lexicographic order, no coercion
    ("project == nlp", NLP),
    ("project != nlp", ALL - NLP),
    ("step == 50k", {"epoch-20"}),
    ("metrics.eval_loss < \"0.3\"", {"final"}),
    ("lineage.parent.version == step-2000", {"step-3000"}),
    ("lineage.data.split == train/val", {"epoch-20"}),
    ("notes == \"run ~ test\"", {"ckpt-7"}),
    ("notes == \"say \\\"hi\\\" it's\"", {"v1"}),
    ("notes == 'say \"hi\" it\\'s'", {"v1"}),
    ("lineage.data.name < m", {"epoch-10", "epoch-20", "final"}),  # imagenet, libri < m < wiki
    # globs
    ("run ~ \"run-*\"", {"step-3000", "step-2000", "step-1000"}),
    ("run~run-*", {"step-3000", "step-2000", "step-1000"}),
    ("run !~ 'run-*'", ALL - {"step-3000", "step-2000", "step-1000"}),
    ("lineage.data.version ~ v3*", {"step-3000", "step-2000", "epoch-10", "epoch-20", "final"}),
    ("lineage.data.version == v3", {"epoch-10", "final"}),
    ("sealed_at ~ 2026-11-*", {"step-3000", "step-2000", "epoch-10", "epoch-20"}),
    ("step ~ '3*'", set()),  # ~ never matches a number
    # lists: any element
    ("tags == production", {"step-3000", "v1", "epoch-10", "final"}),
    ("tags ~ \"lat*\"", {"step-3000", "epoch-20"}),
    ("tags ~ '[pf]*'", {"step-3000", "v1", "epoch-10", "final"}),
    ("tags != production", {"step-3000", "step-2000", "epoch-10", "epoch-20", "final"}),
    ("not tags == production", {"step-2000", "step-1000", "epoch-20", "ckpt-7"}),
    # paths through lists of objects
    ("files.path ~ \"*.safetensors\"", {"step-3000", "step-2000", "v1", "epoch-10", "ckpt-7", "final"}),
    ("files.path == model.safetensors", {"step-3000", "step-2000", "v1", "epoch-10", "final"}),
    ("files.size > 1000", {"step-2000"}),
    ("has files.path", ALL - {"epoch-20"}),
    # has, missing and null fields
    ("has tags", ALL - {"ckpt-7"}),  # an empty list exists; null does not
    ("not has lineage.parent", {"step-1000", "v1", "epoch-10", "ckpt-7"}),
    ("has lineage.code.dirty", {"step-2000", "step-1000", "epoch-10", "ckpt-7"}),
    ("not has eval_loss", {"step-1000", "v1", "ckpt-7"}),
    ("has lineage.parent and lineage.parent.run == run-42", {"step-3000", "step-2000"}),
    ("has metrics.accuracy or metrics.eval_loss < 0.3", {"step-3000", "epoch-10", "epoch-20"}),
    # booleans are not numbers
    ("lineage.code.dirty == true", {"step-1000"}),
    ("lineage.code.dirty != true", {"step-2000", "epoch-10", "ckpt-7"}),
    ("lineage.code.dirty == false", {"step-2000", "epoch-10", "ckpt-7"}),
    ("lineage.code.dirty == 0", set()),
    ("step == true", set()),
    # dates against ISO 8601 strings (Z, offsets, date-only = midnight UTC, unparsable = false)
    ("sealed_at >= 2026-11-01", {"step-3000", "step-2000", "epoch-10", "epoch-20", "final"}),
    ("sealed_at < 2026-11-01", {"step-1000", "v1"}),
    ("sealed_at == 2026-11-01", {"epoch-10"}),
    ("sealed_at == 2026-11-01T00:00:00Z", {"epoch-10"}),
    ("sealed_at < 2026-09-01T00:00", {"v1"}),
    ("sealed_at > 2026-12-01T00:00:00Z", {"final"}),
    ("sealed_at > 2026-11-15T00:00:00+01:00", {"step-3000", "step-2000", "epoch-20", "final"}),
    ("sealed_at != 2026-11-01", ALL - {"epoch-10", "ckpt-7"}),
    # bare metric names, quoted segments
    ("eval_loss < 0.8", {"step-3000", "step-2000", "epoch-20"}),
    ("eval-f1 >= 0.7", {"epoch-10"}),
    ("metrics.\"eval/loss\" < 0.5", {"step-3000"}),
    ("'eval/loss' > 0.5", {"epoch-10"}),
    ("loss > 1", {"ckpt-7", "final"}),  # final's top-level loss (5) shadows metrics.loss (0.1)
    # precedence: not > and > or; parentheses; case-insensitive keywords
    ("project == vision or project == audio and tags == production",
     {"epoch-10", "epoch-20", "final"}),
    ("(project == vision or project == audio) and tags == production", {"epoch-10", "final"}),
    ("not project == nlp and step > 100", {"epoch-10"}),
    ("NOT project == nlp AnD step > 100", {"epoch-10"}),
    ("not (project == nlp and step > 100)", {"v1", "epoch-10", "epoch-20", "ckpt-7", "final"}),
    ("not not project == nlp", NLP),
    ("((project == nlp))", NLP),
    ("project==nlp and(step<1500 or\nnotes == baseline)", {"step-1000"}),
]


def selected(expr: str) -> set:
    query = compile_query(expr)
    return {doc["version"] for doc in DOCS if query.matches(doc)}


@pytest.mark.parametrize("expr, versions", CASES, ids=[expr for expr, _ in CASES])
def test_expression_selects_exactly(expr, versions):
    assert selected(expr) == versions


def test_matches_returns_booleans():
    query = compile_query("tags == production and not has lineage.parent")
    assert [query.matches(doc) for doc in DOCS] == [
        False, False, False, True, True, False, False, False]
    assert all(type(query.matches(doc)) is bool for doc in DOCS)


def test_fields_are_the_names_as_written():
    query = compile_query("eval_loss < 1 and metrics.\"eval/loss\" > 0 or has lineage.parent"
                          " or (not eval_loss == 3)")
    assert query.fields == frozenset({"eval_loss", "metrics.\"eval/loss\"", "lineage.parent"})
    assert query.expr.startswith("eval_loss < 1")


def test_field_value():
    step_3000, v1, epoch_20, final = DOCS[0], DOCS[3], DOCS[5], DOCS[7]
    assert field_value(step_3000, "eval_loss") == 0.28
    assert field_value(step_3000, "metrics.\"eval/loss\"") == 0.27
    assert field_value(step_3000, "files.path") == ["model.safetensors", "config.json"]
    assert field_value(step_3000, "lineage.code.dirty") is None
    assert field_value(step_3000, "project.name") is MISSING
    assert field_value(v1, "eval_loss") is MISSING
    assert field_value(epoch_20, "files.path") is MISSING
    assert field_value(final, "loss") == 5
    assert field_value({"a": [{"b": [1, 2]}, {"b": 3}, {"c": 4}, 5]}, "a.b") == [1, 2, 3]
    assert repr(MISSING) == "MISSING" and not MISSING
    with pytest.raises(QueryError):
        field_value(step_3000, "metrics..loss")


def caret_column(message: str) -> int:
    """The 1-based column the caret line points at (both lines are indented by two)."""
    return message.splitlines()[-1].index("^") - 1


# Lark's internal terminal names must never reach users.
LARK_NAMES = re.compile(r"__ANON|\$END|\b(?:RPAR|LPAR|_?AND|_?OR|_?NOT|_?HAS|WORD|STRING|FIELD|OP)\b")

ERRORS = [
    ("metrics.eval_loss < ", 20, "expected a value after '<'"),
    ("metrics.eval_loss => 3", 19, "unknown operator '=>'"),
    ("", 1, "empty expression"),
    ("   ", 1, "empty expression"),
    ("(project == nlp", 16, "unbalanced '(': expected ')'"),
    ("project == nlp)", 15, "unbalanced ')'"),
    ("project == nlp extra", 16,
     "expected 'and'/'or' or the end of the expression, found 'extra'"),
    ("(project == nlp extra)", 17, "expected 'and'/'or' or ')', found 'extra'"),
    ("notes == 'abc", 10, "unterminated string"),
    ("metrics.\"eval/loss < 3", 9, "unterminated string"),
    ("metrics..loss < 1", 9, "bad field name 'metrics..loss'"),
    ("-loss < 1", 1, "bad field name '-loss'"),
    ("metrics.eval/loss < 1", 13, "bad field name"),
    ("0.3 > eval_loss", 1, "expected a field name, found the number '0.3'"),
    ("step", 5, "expected an operator"),
    ("step < 1 and", 13, "expected a field name, 'not', 'has' or '(' after 'and'"),
    ("step < 1 and or x < 2", 14, "expected a field name, found the keyword 'or'"),
    ("has", 4, "expected a field name after 'has'"),
    ("step == and", 9, "expected a value, found the keyword 'and'"),
    ("step < 1 && x < 2", 10, "use 'and' / 'or'"),
    ("!has tags", 1, "use 'not'"),
    ("lineage.code.dirty == null", 23, "null matches nothing"),
    ("lineage.code.dirty < true", 20, "only work with == and !="),
    ("sealed_at > 2026-13-01", 13, "invalid date '2026-13-01'"),
    ("sealed_at > 2026-11-01T10:0", 13, "not a valid date or number"),
    ("step < 1 # comment", 10, "found '#'"),
]


@pytest.mark.parametrize("expr, column, reason", ERRORS, ids=[e for e, _, _ in ERRORS])
def test_errors_point_at_the_column_in_plain_words(expr, column, reason):
    with pytest.raises(QueryError) as caught:
        compile_query(expr)
    error, message = caught.value, str(caught.value)
    assert error.column == column
    assert reason in message
    assert message.splitlines()[0].endswith(f" at column {column}:")
    assert message.splitlines()[1] == "  " + expr
    assert caret_column(message) == column
    assert not LARK_NAMES.search(message), message


def test_error_example_from_the_brief():
    with pytest.raises(QueryError) as caught:
        compile_query("metrics.eval_loss < ")
    assert str(caught.value) == ("expected a value after '<' at column 20:\n"
                                 "  metrics.eval_loss < \n"
                                 "                     ^")


def test_error_in_a_multiline_expression_keeps_the_caret_aligned():
    with pytest.raises(QueryError) as caught:
        compile_query("project == nlp\nand step >")
    assert caught.value.column == 26
    assert str(caught.value).splitlines()[1] == "  project == nlp and step >"
    assert caret_column(str(caught.value)) == 26


def versions(docs):
    return [doc["version"] for doc in docs]


def test_sort_numbers_then_strings_then_missing():
    assert versions(sort_documents(DOCS, "eval_loss")) == [
        "step-3000", "step-2000", "epoch-20", "epoch-10", "final",  # 0.28 0.35 0.7 0.9 "0.2"
        "step-1000", "v1", "ckpt-7"]  # missing, missing, null: input order
    assert versions(sort_documents(DOCS, "eval_loss", descending=True)) == [
        "final", "epoch-10", "epoch-20", "step-2000", "step-3000",
        "step-1000", "v1", "ckpt-7"]


def test_sort_mixed_types_keeps_missing_last_both_ways():
    assert versions(sort_documents(DOCS, "step")) == [
        "ckpt-7", "step-1000", "step-2000", "step-3000", "epoch-10", "epoch-20", "v1", "final"]
    assert versions(sort_documents(DOCS, "step", descending=True)) == [
        "epoch-20", "epoch-10", "step-3000", "step-2000", "step-1000", "ckpt-7", "v1", "final"]


def test_sort_is_stable_in_both_directions():
    assert versions(sort_documents(DOCS, "project")) == [
        "ckpt-7", "final", "step-3000", "step-2000", "step-1000", "v1", "epoch-10", "epoch-20"]
    assert versions(sort_documents(DOCS, "project", descending=True)) == [
        "epoch-10", "epoch-20", "step-3000", "step-2000", "step-1000", "v1", "ckpt-7", "final"]


def test_sort_by_uncomparable_values_keeps_input_order():
    order = versions(DOCS)
    assert versions(sort_documents(DOCS, "tags")) == order  # lists
    assert versions(sort_documents(DOCS, "lineage.code.dirty", descending=True)) == order  # bools
    assert versions(sort_documents(list(reversed(DOCS)), "tags")) == order[::-1]


def test_sort_by_a_bad_field_name_is_a_query_error():
    with pytest.raises(QueryError) as caught:
        sort_documents(DOCS, "metrics.")
    assert caught.value.column == 9


def test_sort_key_orders_any_mix_of_types():
    values = [MISSING, "b", None, 2, True, "a", [1], 1.5, {"x": 1}, float("nan"), -3]
    ordered = sorted(values, key=sort_key)
    assert ordered[:5] == [-3, 1.5, 2, "a", "b"]
    assert ordered[-1] is MISSING
    assert ordered[5:8] == [None, True, [1]]  # the uncomparable keep their input order
