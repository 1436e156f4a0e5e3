"""The user's own metadata for a checkpoint: `ckptfs.json` at the top of the directory.

`read_user_metadata(src_dir)` validates it against `USER_METADATA_SCHEMA` (JSON Schema
Draft 2020-12) and returns what is valid plus warnings: each invalid value is removed on
its own (one metric, one tag, the whole `step`…) and the rest is kept. It never raises
for any content of the file.
"""
import copy
import math
import os

from jsonschema import Draft202012Validator

from .fields import SkipField, json_safe, read_json_file

USER_FILE = "ckptfs.json"
MAX_CLEANING_ROUNDS = 1000

_NAME_COMPONENT = {"type": "string", "minLength": 1, "pattern": "^[^/]+$"}

USER_METADATA_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://ckptfs.dev/schemas/user-metadata.json",
    "title": "ckptfs.json: user metadata of a checkpoint",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "step": {"type": "integer", "minimum": 0},
        "epoch": {"type": "number"},
        "metrics": {"type": "object", "additionalProperties": {"type": "number"}},
        "tags": {"type": "array", "items": {"type": "string"}},
        "notes": {"type": "string"},
        "lineage": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "parent": {"anyOf": [
                    {"type": "string", "pattern": "^[^/]+/[^/]+/[^/]+$"},
                    {"type": "object", "additionalProperties": False,
                     "required": ["project", "run", "version"],
                     "properties": {"project": _NAME_COMPONENT, "run": _NAME_COMPONENT,
                                    "version": _NAME_COMPONENT}},
                ]},
                "code": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"git_commit": {"type": "string"},
                                   "repository": {"type": "string"},
                                   "branch": {"type": "string"},
                                   "dirty": {"type": "boolean"}},
                },
                "data": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                                   "split": {"type": "string"}, "hash": {"type": "string"}},
                },
                "hyperparameters": {"type": "object"},
                "seeds": {"type": "object", "additionalProperties": {"type": "integer"}},
                "environment": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"python": {"type": "string"},
                                   "packages": {"type": "object",
                                                "additionalProperties": {"type": "string"}},
                                   "cuda": {"type": "string"},
                                   "host": {"type": "string"}},
                },
            },
        },
        "provenance": {"type": "object"},
    },
}

Draft202012Validator.check_schema(USER_METADATA_SCHEMA)
_VALIDATOR = Draft202012Validator(USER_METADATA_SCHEMA)


def read_user_metadata(src_dir: str) -> tuple[dict, list[str]]:
    """The valid part of `<src_dir>/ckptfs.json` ({} when absent) and the warnings."""
    warnings: list[str] = []
    try:
        doc = load_user_file(src_dir, warnings)
        if doc is None:
            return {}, warnings
        return clean_document(doc, warnings), warnings
    except RecursionError:
        warnings.append(f"{USER_FILE}: nested too deeply to read: ignored")
        return {}, warnings
    except Exception as exc:  # last resort: the contract is to never raise
        warnings.append(f"{USER_FILE}: unexpected error ({exc!r}): ignored")
        return {}, warnings


def load_user_file(src_dir: str, warnings: list[str]) -> dict | None:
    path = os.path.join(src_dir, USER_FILE)
    if not os.path.lexists(path):
        return None
    if os.path.islink(path):
        warnings.append(f"{USER_FILE}: is a symlink; not followed: ignored")
        return None
    try:
        doc = read_json_file(src_dir, USER_FILE)
    except SkipField as exc:
        warnings.append(f"{USER_FILE}: {exc}: ignored")
        return None
    except OSError as exc:
        warnings.append(f"{USER_FILE}: cannot be read ({exc.strerror or exc}): ignored")
        return None
    if not isinstance(doc, dict):
        warnings.append(f"{USER_FILE}: top level is not a JSON object: ignored")
        return None
    return doc


def clean_document(doc: dict, warnings: list[str]) -> dict:
    """doc without its non-finite numbers and schema violations; parent in object form."""
    doc = make_json_safe(copy.deepcopy(doc), (), warnings)
    for _round in range(MAX_CLEANING_ROUNDS):
        errors = list(_VALIDATOR.iter_errors(doc))
        if not errors:
            return normalize(doc)
        if not remove_invalid_values(doc, errors, warnings):
            break
    warnings.append(f"{USER_FILE}: could not be made valid: ignored")
    return {}


def remove_invalid_values(doc: dict, errors, warnings: list[str]) -> bool:
    """Remove the value each error points at; False when an error cannot be repaired."""
    removals: dict[tuple, str] = {}
    for error in errors:
        path = tuple(error.absolute_path)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            for name in unexpected_properties(error):
                removals[path + (name,)] = f"unknown field '{dotted(path + (name,))}' ignored"
        elif path:
            removals.setdefault(path, f"{dotted(path)}: {json_safe(error.message)}: ignored")
        else:
            return False
    # within a list, highest index first, so that a removal does not shift the next ones;
    # a path inside a value that is removed anyway is left alone
    for path in sorted(removals, key=path_sort_key, reverse=True):
        if not any(path[:n] in removals for n in range(1, len(path))):
            delete_at(doc, path)
            warnings.append(f"{USER_FILE}: {removals[path]}")
    return bool(removals)


def unexpected_properties(error) -> list[str]:
    known = error.schema.get("properties", {})
    return [name for name in error.instance if name not in known]


def delete_at(doc, path: tuple) -> None:
    container = doc
    for key in path[:-1]:
        container = container[key]
    del container[path[-1]]


def path_sort_key(path: tuple) -> tuple:
    return tuple((0, part, "") if isinstance(part, int) else (1, 0, part) for part in path)


def dotted(path) -> str:
    return ".".join(str(part) for part in path)


def make_json_safe(value, path: tuple, warnings: list[str]):
    """value with non-finite numbers removed (with a warning) and lone surrogates replaced."""
    if isinstance(value, str):
        return json_safe(value)
    if isinstance(value, dict):
        items = [(json_safe(k), v) for k, v in value.items()]
        return {k: make_json_safe(v, path + (k,), warnings)
                for k, v in items if keep_finite(v, path + (k,), warnings)}
    if isinstance(value, list):
        return [make_json_safe(v, path + (i,), warnings)
                for i, v in enumerate(value) if keep_finite(v, path + (i,), warnings)]
    return value


def keep_finite(value, path: tuple, warnings: list[str]) -> bool:
    if isinstance(value, float) and not math.isfinite(value):
        warnings.append(f"{USER_FILE}: {dotted(path)}: {value} is not a finite number: ignored")
        return False
    return True


def normalize(doc: dict) -> dict:
    """Integral floats that the schema accepted as integers become ints; parent an object."""
    if "step" in doc:
        doc["step"] = int(doc["step"])
    lineage = doc.get("lineage", {})
    if "seeds" in lineage:
        lineage["seeds"] = {name: int(seed) for name, seed in lineage["seeds"].items()}
    if isinstance(lineage.get("parent"), str):
        project, run, version = lineage["parent"].split("/")
        lineage["parent"] = {"project": project, "run": run, "version": version}
    return doc
