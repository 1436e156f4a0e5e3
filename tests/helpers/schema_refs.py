"""What the test_schema_refs.py files of several levels (cli, mount) share."""
import json
import os

SECRET = "TOPSECRET-4417"


def write_json(path, doc) -> str:
    path.write_text(json.dumps(doc))
    return str(path)


def secret_file(tmp_path) -> str:
    """A file only root may read, shaped as a schema whose error would print its value."""
    path = write_json(tmp_path / "secret.json", {"const": SECRET})
    os.chmod(path, 0o600)
    return path


SELF = {"$ref": "#"}


GAVE_UP = ("(the schema): validation gave up: the schema refers to itself without end, or "
           "the sidecar is nested too deeply to follow (rule: $ref)")
