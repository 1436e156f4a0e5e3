"""Validation of project, run and version names.

A name becomes a directory name in the mount and part of index keys, so it must be a
single, ordinary path component.
"""
import unicodedata

from .errors import InvalidNameError

MAX_NAME_BYTES = 255


def validate_name(name: str, what: str = "name") -> str:
    """Return `name` unchanged if it is a valid project/run/version name, else raise."""
    if not isinstance(name, str) or name == "":
        raise InvalidNameError(f"{what} must not be empty")
    if name in (".", ".."):
        raise InvalidNameError(f"{what} {name!r} is not allowed: '.' and '..' are reserved")
    if "/" in name:
        raise InvalidNameError(f"{what} {name!r} must not contain '/'")
    if "\0" in name:
        raise InvalidNameError(f"{what} {name!r} must not contain a NUL byte")
    if any(unicodedata.category(ch) == "Cc" for ch in name):  # C0, DEL and C1 controls
        raise InvalidNameError(f"{what} {name!r} must not contain control characters")
    encoded = name.encode("utf-8", "surrogateescape")
    if len(encoded) > MAX_NAME_BYTES:
        raise InvalidNameError(
            f"{what} is {len(encoded)} bytes long; the limit is {MAX_NAME_BYTES} bytes")
    return name


def parse_version_ref(ref: str, parts: int = 3) -> tuple[str, ...]:
    """Split 'PROJECT/RUN/VERSION' (or a prefix of `parts` components) and validate each."""
    pieces = ref.strip("/").split("/") if ref.strip("/") else []
    if len(pieces) != parts:
        shape = "/".join(("PROJECT", "RUN", "VERSION")[:parts])
        raise InvalidNameError(f"expected {shape}, got {ref!r}")
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
