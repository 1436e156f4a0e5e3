"""Project schemas are self-contained (meta/schema.py): `schema set` refuses a `$ref` to a
file or URL, validation at seal retrieves nothing even for a schema stored without that
check, and a schema that refers to itself without end, or a sidecar nested deeper than
validation can follow, is a one-line validation failure, never a traceback, in the CLI
and in the daemon's seal."""
import http.server
import json
import threading

import pytest

from ckptfs.store import Store
from tests.helpers.cli import run_cli_checked
from tests.helpers.samples import make_checkpoint
from tests.helpers.schema_refs import GAVE_UP, SECRET, SELF, secret_file, write_json
from tests.helpers.stores import new_store


@pytest.fixture
def web_server():
    """A local HTTP server serving a schema; `.requests` counts what it was asked."""
    requests = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            body = json.dumps({"const": SECRET}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.requests = requests
    server.url = f"http://127.0.0.1:{server.server_port}/schema.json"
    yield server
    server.shutdown()
    thread.join()


def test_schema_set_refuses_references_outside_the_schema(tmp_path, web_server):
    store = new_store(tmp_path)
    secret = secret_file(tmp_path)
    for ref in (f"file://{secret}", web_server.url, "other.json", "other.json#/$defs/x"):
        for keyword in ("$ref", "$dynamicRef"):
            schema = write_json(tmp_path / "s.json",
                                {"properties": {"notes": {keyword: ref}}})
            proc = run_cli_checked("schema", "set", store, "p", schema, rc=1)
            error = proc.stderr.decode()
            assert error.count("\n") == 1, error
            assert error.startswith(f"ckptfs: error: not a self-contained JSON Schema: "
                                    f"properties.notes.{keyword} is {ref!r}: only references "
                                    "inside the schema"), error
    assert web_server.requests == []
    with Store.open(store) as s:
        assert s.project_schema("p") is None
    # references inside the schema are fine, and so is "$ref" as data or a property name
    local = write_json(tmp_path / "local.json", {
        "$defs": {"metric": {"type": "number"}},
        "properties": {"metrics": {"additionalProperties": {"$ref": "#/$defs/metric"}},
                       "notes": {"not": {"const": {"$ref": "file:///etc/passwd"}}},
                       "extracted": {"properties": {"$ref": {"type": "string"}}}}})
    run_cli_checked("schema", "set", store, "p", local)
    # a local reference to nothing is refused too
    typo = write_json(tmp_path / "typo.json", {"$ref": "#/$defs/missing"})
    proc = run_cli_checked("schema", "set", store, "p", typo, rc=1)
    assert proc.stderr.decode() == (
        "ckptfs: error: not a usable JSON Schema: reference '#/$defs/missing' is not inside "
        "the schema: ckptfs retrieves no file or URL\n")


def test_a_stored_schema_with_an_external_reference_retrieves_nothing_at_seal(
        tmp_path, web_server):
    """A schema stored before `schema set` checked references (or through the Python
    API): the seal fails with a reason and neither reads the file nor asks the server."""
    store = new_store(tmp_path)
    src = make_checkpoint(tmp_path / "ck")
    for ref in (f"file://{secret_file(tmp_path)}", web_server.url):
        with Store.open(store) as s:
            s.set_project_schema("p", {"properties": {"notes": {"$ref": ref}}})
        proc = run_cli_checked("import", store, src, "p/r/v1", rc=1)
        error = proc.stderr.decode()
        assert SECRET not in error
        assert f"(the schema): reference {ref!r} is not inside the schema: ckptfs retrieves " \
               "no file or URL (rule: $ref)" in error, error
    assert web_server.requests == []
    with Store.open(store) as s:
        assert s.version_record("p", "r", "v1") is None


SELF_VIA_ALLOF = {"allOf": [{"$ref": "#/$defs/a"}], "$defs": {"a": {"$ref": "#"}}}


# A legitimate recursive schema: every level of `lineage` is a node.
NODES = {"$defs": {"node": {"type": ["object", "string", "number", "array", "boolean", "null"],
                            "additionalProperties": {"$ref": "#/$defs/node"}}},
         "properties": {"lineage": {"$ref": "#/$defs/node"}}}


def deep_checkpoint(path, depth: int) -> str:
    """A checkpoint whose ckptfs.json nests `depth` objects in lineage.hyperparameters."""
    make_checkpoint(path)
    nested = "1"
    for _ in range(depth):
        nested = '{"a": ' + nested + "}"
    (path / "ckptfs.json").write_text('{"lineage": {"hyperparameters": {"deep": ' + nested + "}}}")
    return str(path)


def test_self_referential_schema_and_deep_sidecar_fail_with_a_reason(tmp_path):
    store = new_store(tmp_path)
    for schema in (SELF, SELF_VIA_ALLOF):
        proc = run_cli_checked("schema", "set", store, "p",
                               write_json(tmp_path / "self.json", schema), rc=1)
        assert proc.stderr.decode() == (
            "ckptfs: error: not a usable JSON Schema: it refers to itself without end (a $ref "
            "that comes back to itself without going into a property or item)\n")
    deep_file = tmp_path / "deep.json"
    deep_file.write_text('{"not": ' * 5000 + "{}" + "}" * 5000)
    proc = run_cli_checked("schema", "set", store, "p", deep_file, rc=1)
    assert proc.stderr.decode().startswith("ckptfs: error: ")
    # stored without the check: the seal fails with the reason, nothing is stored
    src = make_checkpoint(tmp_path / "ck")
    with Store.open(store) as s:
        s.set_project_schema("p", SELF)
    error = run_cli_checked("import", store, src, "p/r/v1", rc=1).stderr.decode()
    assert GAVE_UP in error and "RecursionError" not in error, error
    # a recursive schema is accepted, and follows a sidecar of ordinary depth
    run_cli_checked("schema", "set", store, "p", write_json(tmp_path / "nodes.json", NODES))
    run_cli_checked("import", store, deep_checkpoint(tmp_path / "shallow", 20), "p/r/v1")
    error = run_cli_checked("import", store, deep_checkpoint(tmp_path / "deep", 300), "p/r/v2",
                            rc=1).stderr.decode()
    assert GAVE_UP in error, error
    with Store.open(store) as s:
        assert s.version_record("p", "r", "v2") is None
