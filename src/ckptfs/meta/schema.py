"""Project schemas: a JSON Schema every new version's sidecar must satisfy.

`ckptfs schema set STORE PROJECT schema.json` stores one (the store journals it); at
seal time the version's sidecar, as it will be, is validated against it, and a version
that fails stays in the inbox with an error that names each failing field and rule.
Validation uses the `jsonschema` library and honours the schema's `$schema` draft
(Draft 2020-12 when none is named).

A schema is self-contained: `$ref` (and `$dynamicRef`, `$recursiveRef`) may only point
inside it (`#/$defs/...`, `#anchor`). jsonschema would otherwise fetch `file://` and
`http://` references at every seal, with the rights of the process sealing (the daemon),
and put what it read into the error. `schema set` refuses such a schema, and validation
runs with a registry that refuses every retrieval, for a schema stored before that rule.
Recursion is bounded: a schema that refers to itself without end, or a sidecar nested
deeper than validation can follow, is a validation failure with a reason, not a crash.
"""
import errno

import jsonschema
from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for
from referencing import Registry
from referencing.exceptions import NoSuchResource, Unresolvable

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


REFERENCE_KEYWORDS = ("$ref", "$dynamicRef", "$recursiveRef")
# Keywords whose values are data, not subschemas: a "$ref" string in them is no reference.
DATA_KEYWORDS = ("const", "enum", "default", "examples")
UNRESOLVED = "(the schema): reference "
TOO_DEEP = ("validation gave up: the schema refers to itself without end, or the sidecar "
            "is nested too deeply to follow")


def _refuse_retrieval(uri: str):
    raise NoSuchResource(ref=uri)


# Every reference that the schema itself does not hold lands here, and fails.
NO_RETRIEVAL = Registry(retrieve=_refuse_retrieval)


def check_schema(schema) -> None:
    """Raise SchemaInvalidError unless `schema` is a valid, self-contained JSON Schema that
    validation can follow (probed on an empty document)."""
    if not isinstance(schema, (dict, bool)):
        raise SchemaInvalidError("a schema must be a JSON object (a JSON Schema)")
    try:
        validator_for(schema, default=jsonschema.Draft202012Validator).check_schema(schema)
        _check_local_references(schema, [])
        probe = failures(schema, {})
    except SchemaError as e:
        where = _dotted(e.path) or "the top level"
        raise SchemaInvalidError(f"not a valid JSON Schema: at {where}: {e.message}") from None
    except RecursionError:
        raise SchemaInvalidError("not a usable JSON Schema: it is nested too deeply") from None
    if TOO_DEEP in "".join(probe):
        raise SchemaInvalidError("not a usable JSON Schema: it refers to itself without end "
                                 "(a $ref that comes back to itself without going into a "
                                 "property or item)")
    unresolved = [line for line in probe if line.startswith(UNRESOLVED)]
    if unresolved:  # e.g. "#/$defs/typo": local, but nothing is there
        raise SchemaInvalidError("not a usable JSON Schema: " + unresolved[0].removeprefix(
            "(the schema): ").removesuffix(" (rule: $ref)"))


def _check_local_references(schema, path: list) -> None:
    """Refuse references that point outside the schema (a file, a URL, another schema)."""
    if isinstance(schema, list):
        for i, item in enumerate(schema):
            _check_local_references(item, path + [i])
    if not isinstance(schema, dict):
        return
    for key, value in schema.items():
        if key in REFERENCE_KEYWORDS and isinstance(value, str) and not value.startswith("#"):
            where = _dotted(path + [key])
            raise SchemaInvalidError(
                f"not a self-contained JSON Schema: {where} is {value[:200]!r}: only references "
                "inside the schema (#/$defs/NAME, #anchor) are allowed; ckptfs retrieves "
                "no file or URL (copy what it refers to into $defs)")
        if key not in DATA_KEYWORDS:
            _check_local_references(value, path + [key])


def _dotted(path) -> str:
    return ".".join(str(part) for part in path)


def failures(schema, doc: dict) -> list[str]:
    """One line per failing field and rule, e.g.
    `lineage.code.git_commit: missing (rule: required)`."""
    cls = validator_for(schema, default=jsonschema.Draft202012Validator)
    validator = cls(schema, registry=NO_RETRIEVAL)
    try:
        errors = list(validator.iter_errors(doc))
    except Unresolvable as e:
        ref = str(getattr(e, "ref", None) or e)
        if ref.startswith("/"):  # a JSON pointer the schema does not hold: as it was written
            ref = "#" + ref
        return [f"{UNRESOLVED}{str(ref)[:200]!r} is not inside the schema: ckptfs "
                "retrieves no file or URL (rule: $ref)"]
    except RecursionError:
        return [f"(the schema): {TOO_DEEP} (rule: $ref)"]
    lines = []
    for error in sorted(errors, key=lambda e: list(map(str, e.path))):
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
