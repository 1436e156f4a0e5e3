"""The one rule for names: projects, runs, versions, aliases (tags, stages).

A name becomes a directory name in the mount, part of index keys, and a word in
commands and queries, so it must be a single, ordinary path component that reads the
same everywhere: printable Unicode text in NFC (so "é" typed precomposed and decomposed
is not two names), with no control or invisible formatting characters (a right-to-left
override makes a name display as another), no leading "-" (it would read as an option)
and no leading or trailing white space; not ".", "..", or "*" ("every project" for
access and retention); no "/"; at most 255 bytes of UTF-8. docs/format.md, "Names".
"""
import unicodedata

from .errors import InvalidNameError

MAX_NAME_BYTES = 255
ALL_PROJECTS = "*"   # every project: access grants, retention and settings defaults
# Cc: C0/C1 controls; Cf: format (bidi overrides and isolates, zero-width ones, BOM);
# Zl, Zp: line and paragraph separators; Cs: lone surrogates, which is how Python
# hands over bytes that are not UTF-8 (surrogateescape).
REFUSED_CATEGORIES = {"Cc": "control characters", "Cf": "invisible formatting characters",
                      "Zl": "line separators", "Zp": "paragraph separators",
                      "Cs": "bytes that are not UTF-8"}
RESERVED_NAMES = {".": "'.' and '..' are reserved", "..": "'.' and '..' are reserved",
                  "*": "'*' means every project"}
NAME_RULE = ("names are printable Unicode (NFC) without control or formatting characters, "
             "'/', a leading '-' or leading/trailing spaces, not '.', '..' or '*', "
             f"at most {MAX_NAME_BYTES} bytes")


def shown(name: str, limit: int = 80) -> str:
    """A name as an error message can show it: escapes for what is not printable or not
    NFC (a decomposed "é" looks like the composed one), cut after `limit` characters."""
    cut = name if len(name) <= limit else name[:limit] + "..."
    plain = all(ch.isprintable() for ch in cut) and unicodedata.is_normalized("NFC", cut)
    return repr(cut) if plain else ascii(cut)


def name_problem(name) -> str | None:
    """Why `name` breaks the name rule, or None."""
    if not isinstance(name, str) or name == "":
        return "must not be empty"
    if name in RESERVED_NAMES:
        return f"is not allowed: {RESERVED_NAMES[name]}"
    if "\0" in name:
        return "must not contain a NUL byte"
    for ch in name:
        category = unicodedata.category(ch)
        if category in REFUSED_CATEGORIES:
            return f"must not contain {REFUSED_CATEGORIES[category]} ({ascii(ch)[1:-1]})"
    if "/" in name:
        return "must not contain '/'"
    if name.startswith("-"):
        return "must not start with '-'"
    if name != name.strip():
        return "must not start or end with white space"
    if not unicodedata.is_normalized("NFC", name):
        return ("is not in Unicode normal form NFC (write it as "
                f"{unicodedata.normalize('NFC', name)!r})")
    size = len(name.encode("utf-8"))
    if size > MAX_NAME_BYTES:
        return f"is {size} bytes long; the limit is {MAX_NAME_BYTES} bytes"
    return None


def validate_name(name: str, what: str = "name") -> str:
    """Return `name` unchanged if it follows the name rule, else raise InvalidNameError
    saying why and what the rule is."""
    problem = name_problem(name)
    if problem is not None:
        worth_showing = isinstance(name, str) and \
            0 < len(name.encode("utf-8", "surrogatepass")) <= MAX_NAME_BYTES
        label = f"{what} {shown(name)}" if worth_showing else what
        raise InvalidNameError(f"{label} {problem} ({NAME_RULE})")
    return name


def check_project(project: str) -> None:
    """A project name, or `*` (every project)."""
    if project != ALL_PROJECTS:
        validate_name(project, "project")


def parse_version_ref(ref: str, parts: int = 3) -> tuple[str, ...]:
    """Split 'PROJECT/RUN/VERSION' (or a prefix of `parts` components) and validate each."""
    pieces = ref.strip("/").split("/") if ref.strip("/") else []
    if len(pieces) != parts:
        shape = "/".join(("PROJECT", "RUN", "VERSION")[:parts])
        raise InvalidNameError(f"expected {shape}, got {shown(ref)}")
    for piece, what in zip(pieces, ("project", "run", "version")):
        validate_name(piece, what)
    if len(pieces) == 3:
        validate_version_name(pieces[2])
    return tuple(pieces)


RESERVED_VERSION_NAMES = ("latest", "run.json")


def validate_version_name(name: str) -> str:
    """A version name must also not clash with what the run directory shows beside the
    versions: the `latest` symlink and the `<version>.json` sidecars."""
    validate_name(name, "version")
    if name in RESERVED_VERSION_NAMES:
        raise InvalidNameError(f"version name {name!r} is reserved (the run directory "
                               f"shows {name!r} itself)")
    if name.endswith(".json"):
        raise InvalidNameError(f"version name {name!r} must not end in '.json' (the run "
                               "directory shows each version's sidecar as <version>.json)")
    return name
