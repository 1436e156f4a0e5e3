"""Project schemas: a JSON Schema every new version's sidecar must satisfy.

`ckptfs schema set STORE PROJECT schema.json` stores one (the store journals it); at
seal time the version's sidecar, as it will be, is validated against it, and a version
that fails stays in the inbox with an error that names each failing field and rule.
Validation uses the `jsonschema` library and honours the schema's `$schema` draft
(Draft 2020-12 when none is named).
"""
import errno

import jsonschema
from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for

from ckptfs.store import StoreError

from .errors import SealRefused


class SchemaInvalidError(StoreError, ValueError):
    """What was given as a project schema is not a JSON Schema."""

    errno = errno.EINVAL


class SchemaViolation(SealRefused):
    """A version's metadata does not satisfy its project's schema."""

    errno = errno.EINVAL

    def __init__(self, message: str, failures: list[str]):
        super().__init__(message)
        self.failures = failures


def check_schema(schema) -> None:
    """Raise SchemaInvalidError unless `schema` is a valid JSON Schema."""
    if not isinstance(schema, (dict, bool)):
        raise SchemaInvalidError("a schema must be a JSON object (a JSON Schema)")
    try:
        validator_for(schema, default=jsonschema.Draft202012Validator).check_schema(schema)
    except SchemaError as e:
        where = _dotted(e.path) or "the top level"
        raise SchemaInvalidError(f"not a valid JSON Schema: at {where}: {e.message}") from None


def _dotted(path) -> str:
    return ".".join(str(part) for part in path)


def failures(schema, doc: dict) -> list[str]:
    """One line per failing field and rule, e.g.
    `lineage.code.git_commit: missing (rule: required)`."""
    validator = validator_for(schema, default=jsonschema.Draft202012Validator)(schema)
    lines = []
    for error in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.path))):
        lines.extend(_describe(error))
    return lines


def _describe(error) -> list[str]:
    where = _dotted(error.absolute_path)
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = [name for name in error.validator_value if name not in error.instance]
        return [f"{where + '.' if where else ''}{name}: missing (rule: required)"
                for name in missing]
    return [f"{where or '(the sidecar)'}: {error.message} (rule: {error.validator})"]


def validate_version(schema, doc: dict, project: str, name: str) -> None:
    """Raise SchemaViolation if `doc` fails `schema`."""
    found = failures(schema, doc)
    if found:
        listing = "\n".join("  " + line for line in found)
        raise SchemaViolation(
            f"version {name} does not satisfy the schema of project {project}:\n{listing}\n"
            "Fix ckptfs.json in the version directory (the seal is tried again once it is "
            f"quiet), or see the schema with `ckptfs schema show STORE {project}`.", found)
