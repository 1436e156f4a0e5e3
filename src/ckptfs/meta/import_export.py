"""`ckptfs import` of what `ckptfs export` wrote (a directory or a tar), docs/export.md.

    a tar is unpacked first, member by member, into STORE/spool/unpack-<pid>-…/ (same
    disk as the store; refused: absolute paths, `..`, links, special files, anything
    outside its one top directory; removed afterwards, also on error)
    -> find the export: SHA256SUMS, one <name>.json of schema ckptfs.version/1, <name>/
    -> verify: SHA256SUMS, the file list against the sidecar, the digest, the sidecar's
       step/epoch/metrics against the files' own, the signature (import_checks.py)
       (any failure: nothing is imported; --trust-sidecar lets disagreements through)
    -> the caller seals <name>/ through `archive_directory`, the one ingest path, with
       the sidecar's metadata as `recorded` (metrics, lineage, provenance…, imported_from)

A directory that is not an export is a plain checkpoint directory, imported as before.
"""
import errno
import gzip
import hashlib
import json
import os
import tarfile
import tempfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal

import jsonschema

from ckptfs.store import IntegrityError, StoreFullError
from ckptfs.store.ingest import walk_source
from ckptfs.store.manifest import version_digest

from .export import SUMS_NAME, ExportError, remove_path
from .import_checks import (ImportChecks, SignatureProblem, check_signature, claims_of_files,
                            disagreements)
from .sidecar import SCHEMA as VERSION_SCHEMA

UNPACK_PREFIX = "unpack-"
READ_BLOCK = 1 << 20
SIDECAR_MARK = f'"{VERSION_SCHEMA}"'.encode()


class ExportDamagedError(IntegrityError):
    """An export whose files do not match its SHA256SUMS or its sidecar."""


class UnsafeArchiveError(ExportError):
    """A tar member that would land outside the export, or is not a file, directory
    or symlink: the whole tar is refused."""

    errno = errno.EPERM


class NotAnExportError(ExportError):
    pass


class SidecarDisagreesError(ExportDamagedError):
    """The sidecar's step, epoch or metrics differ from what the files themselves say."""


class BadSignatureError(ExportDamagedError):
    """A signature that does not verify, or a missing one that was asked for."""


@dataclass
class TrustOptions:
    """What the user of `ckptfs import` trusts: public keys a signature must be by (None:
    the keys this store knows), and whether to import a sidecar that disagrees with its
    files anyway."""
    public_keys: list | None = None
    trust_sidecar: bool = False


@dataclass
class Export:
    """An export found on disk (not yet verified)."""
    root: str       # the directory holding SHA256SUMS
    name: str       # the version's name: <name>.json and <name>/
    label: str = ""  # how messages name it: the tar, or the directory

    def __post_init__(self):
        self.label = self.label or self.root

    @property
    def sidecar_path(self) -> str:
        return os.path.join(self.root, self.name + ".json")

    @property
    def version_dir(self) -> str:
        return os.path.join(self.root, self.name)


@dataclass
class ImportSource:
    """What `ckptfs import` seals: a plain directory, or a verified export's version
    directory with the metadata its sidecar recorded."""
    directory: str
    recorded: dict | None = None   # for archive_directory(recorded=…); None: plain
    original: str | None = None    # P/R/V in the store it was exported from
    digest: str | None = None      # the original version's digest
    partial: bool = False
    counts: tuple = ()             # (files exported, files of the original)
    checks: ImportChecks | None = None

    def check_sealed(self, report):
        """After the seal: a full export must give the original's digest back."""
        if self.recorded is not None and not self.partial and report.digest != self.digest:
            raise ExportDamagedError(
                f"{report.project}/{report.run}/{report.version} was imported, but its digest "
                f"{report.digest[:16]}… differs from the original's {self.digest[:16]}…: did "
                "the export change while it was being imported?")

    def describe(self) -> str:
        """For the summary line of `ckptfs import`."""
        if self.recorded is None:
            return ""
        trust = self.checks.describe()
        if self.checks.trusted_sidecar:
            trust += f"; sidecar trusted despite {len(self.checks.disagreements)} disagreement(s)"
        if self.partial:
            return (f" from a partial export of {self.original} ({self.counts[0]} of "
                    f"{self.counts[1]} files; {trust})")
        return f" from an export of {self.original} (files match its sidecar's digest; {trust})"


@contextmanager
def open_import_source(store, src: str, unpack_progress=None, trust: TrustOptions | None = None):
    """The directory to seal for SRC (a checkpoint directory, an export directory or an
    export tar), verified if it is an export. A tar is unpacked into the store's spool
    for the duration of the `with` block."""
    trust = trust or TrustOptions()
    known_keys = store.signing_state()["keys"]
    if os.path.isfile(src):
        if not tarfile.is_tarfile(src):
            raise NotAnExportError(f"{src} is not a directory, nor a tar made by `ckptfs "
                                   "export`: import takes a checkpoint directory or an export")
        with unpacked_tar(store, src, unpack_progress) as (top, hashes):
            export = find_export(top, label=src)
            if export is None:
                raise NotAnExportError(
                    f"{src} is not a ckptfs export: expected SHA256SUMS, <version>.json and "
                    f"<version>/ under its top directory {os.path.basename(top)}/")
            yield verified_source(export, hashes, trust, known_keys)
        return
    export = find_export(src) if os.path.isdir(src) else None
    if export is None and trust.public_keys:
        raise NotAnExportError(f"{src} is not an export: --public-key checks the signature "
                               "of an export")
    yield ImportSource(src) if export is None else \
        verified_source(export, {}, trust, known_keys)


# -- finding an export --------------------------------------------------------------------
def find_export(root: str, label: str = "") -> Export | None:
    """The export in directory `root`, or None if it is a plain checkpoint directory.

    An export has SHA256SUMS and exactly one <name>.json whose schema is
    ckptfs.version/1 beside a directory <name>/. Such a pair without SHA256SUMS is an
    export that did not finish: refused rather than imported as files."""
    try:
        names = set(os.listdir(root))
    except OSError:
        return None  # the plain import says what is wrong with it
    pairs = [n[:-5] for n in sorted(names) if n.endswith(".json") and n[:-5] in names
             and _is_real_dir(os.path.join(root, n[:-5]))
             and _looks_like_sidecar(os.path.join(root, n))]
    if len(pairs) != 1:
        return None
    export = Export(root, pairs[0], label)
    if not _is_regular_file(os.path.join(root, SUMS_NAME)):
        if "export" in (_load_json_or_none(export.sidecar_path) or {}):
            raise NotAnExportError(f"{export.label} is an export that did not finish (it has no "
                                   f"{SUMS_NAME}): export the version again")
        return None
    return export


def _is_real_dir(path: str) -> bool:
    return os.path.isdir(path) and not os.path.islink(path)


def _is_regular_file(path: str) -> bool:
    return os.path.isfile(path) and not os.path.islink(path)


def _looks_like_sidecar(path: str) -> bool:
    """The schema is the first key of a rendered sidecar: a look at the head is enough."""
    try:
        with open(path, "rb") as f:
            return SIDECAR_MARK in f.read(4096)
    except OSError:
        return False


def _load_json_or_none(path: str):
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


def read_json(path: str):
    """A JSON file as the sidecar renderer writes it: names that are not UTF-8 are their
    raw bytes (read back with surrogateescape, as the store keeps them)."""
    def no_constants(name):
        raise ValueError(f"{name} is not a JSON number")
    with open(path, "rb") as f:
        return json.loads(f.read().decode("utf-8", "surrogateescape"),
                          parse_constant=no_constants)


# -- verifying it -----------------------------------------------------------------------
def verified_source(export: Export, known_hashes: dict, trust: TrustOptions | None = None,
                    known_keys: dict | None = None) -> ImportSource:
    """Check SHA256SUMS, the files against the sidecar, the signature and the sidecar's
    claims against the files'; the ImportSource to seal. `known_hashes`: {path relative
    to the export: SHA-256} already computed (a tar's files, hashed as they were
    unpacked); `known_keys`: this store's journaled signing keys by id."""
    trust = trust or TrustOptions()
    listed = _check_sums(export, known_hashes)
    sidecar = _load_sidecar(export)
    files, symlinks = _check_against_sidecar(export, sidecar, listed)
    everything = {f["path"] for f in sidecar["files"]} | {s["path"] for s in sidecar["symlinks"]}
    partial = {e["path"] for e in files + symlinks} != everything
    original = f"{sidecar['project']}/{sidecar['run']}/{sidecar['version']}"
    if not partial and version_digest(files + symlinks) != sidecar["digest"]:
        raise ExportDamagedError(f"export {export.label}: its files do not give the digest its "
                                 "sidecar records; nothing was imported")
    checks = _signature_checks(export, sidecar, trust, known_keys or {})
    _check_claims(export, sidecar, trust, checks)
    recorded = recorded_metadata(sidecar, partial, len(files), checks)
    return ImportSource(export.version_dir, recorded, original, sidecar["digest"], partial,
                        (len(files), len(sidecar["files"])), checks)


def _signature_checks(export: Export, sidecar: dict, trust: TrustOptions,
                      known_keys: dict) -> ImportChecks:
    try:
        return check_signature(sidecar, trust.public_keys, known_keys)
    except SignatureProblem as e:
        raise BadSignatureError(f"export {export.label}: {e}; nothing was imported") from None


def _check_claims(export: Export, sidecar: dict, trust: TrustOptions, checks: ImportChecks):
    """Refuse a sidecar whose step, epoch or metrics the files contradict, unless the user
    trusts it (then the disagreements are recorded with the version)."""
    found = disagreements(sidecar, claims_of_files(export.version_dir))
    if not found:
        return
    if not trust.trust_sidecar:
        raise SidecarDisagreesError(
            f"export {export.label}: its sidecar disagrees with its files: {'; '.join(found)}; "
            "nothing was imported (--trust-sidecar imports it anyway with the sidecar's "
            "values, and records the disagreement)")
    checks.trusted_sidecar = True
    checks.disagreements = found


def _check_sums(export: Export, known_hashes: dict) -> dict[str, str]:
    """{path: SHA-256} of SHA256SUMS, every line checked; ExportDamagedError names the
    first problem and how many more there are."""
    with open(os.path.join(export.root, SUMS_NAME), "rb") as f:
        listed = parse_sums(f.read(), export.label)
    problems = []
    if f"{export.name}.json" not in listed:
        problems.append(f"{SUMS_NAME} does not list the sidecar {export.name}.json")
    for path, expected in listed.items():
        if path != f"{export.name}.json" and not path.startswith(export.name + "/"):
            problems.append(f"{SUMS_NAME} lists {path!r}, which is not part of the export")
            continue
        full = os.path.join(export.root, path)
        if not _is_regular_file(full):
            problems.append(f"{path} is missing")
        elif (known_hashes.get(path) or sha256_of(full)) != expected:
            problems.append(f"{path}: SHA-256 does not match {SUMS_NAME}")
    _raise_if(problems, export)
    return listed


def _raise_if(problems: list[str], export: Export):
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ExportDamagedError(f"export {export.label} is damaged: {problems[0]}{more}; "
                                 "nothing was imported")


def parse_sums(data: bytes, where: str) -> dict[str, str]:
    """SHA256SUMS as `sha256sum` writes it (text or binary mode, escaped names)."""
    listed = {}
    for number, line in enumerate(data.splitlines(), 1):
        escaped = line.startswith(b"\\")
        body = line[1:] if escaped else line
        digest, sep, name = body[:64], body[64:66], body[66:]
        if len(digest) != 64 or sep not in (b"  ", b" *") or not name \
                or any(c not in b"0123456789abcdefABCDEF" for c in digest):
            raise ExportDamagedError(f"{SUMS_NAME} of {where}: line {number} is not "
                                     "'<sha256>  <path>'; nothing was imported")
        if escaped:
            name = _unescape(name)
        path = os.fsdecode(name)
        if path in listed:
            raise ExportDamagedError(f"{SUMS_NAME} of {where} lists {path!r} twice; nothing was "
                                     "imported")
        if path.startswith("/") or ".." in path.split("/"):
            raise ExportDamagedError(f"{SUMS_NAME} of {where} names {path!r}, outside the export; "
                                     "nothing was imported")
        listed[path] = digest.decode().lower()
    return listed


def _unescape(name: bytes) -> bytes:
    out, i = bytearray(), 0
    while i < len(name):
        if name[i:i + 1] == b"\\" and i + 1 < len(name):
            out += {b"\\": b"\\", b"n": b"\n", b"r": b"\r"}.get(name[i + 1:i + 2], name[i:i + 2])
            i += 2
        else:
            out += name[i:i + 1]
            i += 1
    return bytes(out)


def sha256_of(path: str) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(READ_BLOCK):
            sha.update(block)
    return sha.hexdigest()


def _load_sidecar(export: Export) -> dict:
    try:
        sidecar = read_json(export.sidecar_path)
        jsonschema.validate(sidecar, SIDECAR_SHAPE)
    except (ValueError, jsonschema.ValidationError) as e:
        reason = e.message if isinstance(e, jsonschema.ValidationError) else str(e)
        raise ExportDamagedError(f"export {export.label}: {export.name}.json is not a version "
                                 f"sidecar ({reason}); nothing was imported") from None
    if sidecar["version"] != export.name:
        raise ExportDamagedError(f"export {export.label}: {export.name}.json describes version "
                                 f"{sidecar['version']!r}, not {export.name!r}")
    return sidecar


_STRING = {"type": "string"}
# What import relies on in a sidecar; the rest is carried along as recorded metadata.
SIDECAR_SHAPE = {
    "type": "object",
    "required": ["schema", "project", "run", "version", "digest", "files", "symlinks"],
    "properties": {
        "schema": {"const": VERSION_SCHEMA},
        "project": _STRING, "run": _STRING, "version": _STRING,
        "digest": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "files": {"type": "array", "items": {
            "type": "object", "required": ["path", "size", "sha256"],
            "properties": {"path": _STRING, "size": {"type": "integer", "minimum": 0},
                           "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"}}}},
        "symlinks": {"type": "array", "items": {
            "type": "object", "required": ["path", "target"],
            "properties": {"path": _STRING, "target": _STRING}}},
        "export": {"type": "object", "properties": {
            "files": {"type": "array", "items": _STRING},
            "symlinks": {"type": "array", "items": _STRING}}},
    },
}


def _check_against_sidecar(export: Export, sidecar: dict, listed: dict) -> tuple[list, list]:
    """The version directory must hold exactly the files and symlinks the export says it
    exported, each as the sidecar records it. Returns (files, symlinks) as entries for
    `version_digest`."""
    recorded_files = {f["path"]: f for f in sidecar["files"]}
    recorded_links = {s["path"]: s["target"] for s in sidecar["symlinks"]}
    exported = sidecar.get("export") or {}
    expected = set(exported.get("files", recorded_files))
    expected |= set(exported.get("symlinks", recorded_links))
    files, symlinks, problems = [], [], []
    for found in walk_source(export.version_dir)[1]:
        if found.kind == "dir":
            continue
        expected.discard(found.path)
        if found.kind == "symlink":
            target = os.readlink(found.abs_path)
            if recorded_links.get(found.path) != target:
                problems.append(f"symlink {export.name}/{found.path} -> {target} is not in the "
                                "sidecar")
            symlinks.append({"path": found.path, "type": "symlink", "target": target})
            continue
        sha256 = listed.get(f"{export.name}/{found.path}")
        record = recorded_files.get(found.path)
        if sha256 is None:
            problems.append(f"{export.name}/{found.path} is not listed in {SUMS_NAME}")
        elif record is None or (record["sha256"], record["size"]) != (sha256, found.st.st_size):
            problems.append(f"{export.name}/{found.path} is not the file the sidecar records")
        files.append({"path": found.path, "type": "file", "size": found.st.st_size,
                      "sha256": sha256})
    problems += [f"{export.name}/{path} is missing" for path in sorted(expected)]
    _raise_if(problems, export)
    return files, symlinks


# -- the metadata to seal with ------------------------------------------------------------
# Kept from the exported sidecar (each checked against its shape; a wrong one is dropped
# with a warning). Not kept: what this store computes anew (digest, storage, files,
# extracted facts, aliases) and `sealed_by`, the user who imports it here.
RECORDED_SHAPES = {
    "notes": {"type": ["string", "null"]},
    "step": {"type": ["integer", "null"], "minimum": 0},
    "epoch": {"type": ["number", "null"]},
    "metrics": {"type": "object", "additionalProperties": {"type": "number"}},
    "lineage": {"type": "object", "properties": {"parent": {"anyOf": [
        {"type": "null"},
        {"type": "object", "required": ["project", "run", "version"],
         "properties": {"project": _STRING, "run": _STRING, "version": _STRING}}]}}},
    "provenance": {"type": "object"},
}


def recorded_metadata(sidecar: dict, partial: bool, exported_files: int,
                      checks: ImportChecks | None = None) -> dict:
    """The sidecar's metadata for `archive_directory(recorded=…)`, with `imported_from`
    (and in it, `checks`: what import could verify of the sidecar's claims)."""
    checks = checks or ImportChecks()
    recorded, warnings = {}, []
    for key, shape in RECORDED_SHAPES.items():
        value = sidecar.get(key)
        try:
            jsonschema.validate(value, shape)
        except jsonschema.ValidationError as e:
            warnings.append(f"export sidecar: {key}: {e.message}: ignored")
            continue
        recorded[key] = value
    # Tags without the aliases of the other store: the user's own ones.
    aliases = set(_strings(sidecar.get("aliases")))
    recorded["tags"] = sorted(set(_strings(sidecar.get("tags"))) - aliases)
    recorded["imported_from"] = dict(imported_from(sidecar, partial), checks=checks.record())
    if checks.trusted_sidecar:
        warnings += [f"imported with --trust-sidecar: {d}" for d in checks.disagreements]
    if partial:
        warnings.append(f"imported from a partial export of {sidecar['project']}/{sidecar['run']}/"
                        f"{sidecar['version']}: {exported_files} of {len(sidecar['files'])} files "
                        "(the digest differs from the original's)")
    recorded["warnings"] = warnings
    return recorded


def _strings(value) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def imported_from(sidecar: dict, partial: bool) -> dict:
    """Where an imported version came from (and, if it was imported there too, its own
    `imported_from`, so the chain of stores is kept)."""
    export = sidecar.get("export") or {}
    origin = {"store": export.get("store"), "project": sidecar["project"],
              "run": sidecar["run"], "version": sidecar["version"],
              "digest": sidecar["digest"], "sealed_at": sidecar.get("sealed_at"),
              "sealed_by": sidecar.get("sealed_by"), "aliases": sidecar.get("aliases") or [],
              "exported_at": export.get("exported_at"), "partial": partial}
    if sidecar.get("signature") is not None:
        origin["signature"] = sidecar["signature"]
    if sidecar.get("imported_from") is not None:
        origin["imported_from"] = sidecar["imported_from"]
    return origin


# -- unpacking a tar ----------------------------------------------------------------------
@contextmanager
def unpacked_tar(store, tar_path: str, progress=None):
    """Unpack `tar_path` into a new directory in the store's spool; yields (its top
    directory, {path under the top: SHA-256 of each file}). Removed afterwards."""
    with spool_workdir(store, UNPACK_PREFIX) as workdir:
        yield _unpack(tar_path, workdir, progress)


@contextmanager
def spool_workdir(store, prefix: str):
    """A new directory `<prefix><pid>-<random>` in the store's spool (on the store's own
    disk), removed afterwards, also on error. Those a killed process left behind (same
    prefix, a pid that is gone) are removed first."""
    _remove_stale_workdirs(store.spool_dir, prefix)
    workdir = tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=store.spool_dir)
    try:
        yield workdir
    finally:
        remove_path(workdir)


def _remove_stale_workdirs(spool: str, prefix: str):
    """Work directories of imports (or copies) whose process died (killed mid-way)."""
    for name in os.listdir(spool):
        pid = name[len(prefix):].split("-", 1)[0] if name.startswith(prefix) else ""
        if pid.isdigit() and not _process_exists(int(pid)):
            remove_path(os.path.join(spool, name))


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _unpack(tar_path: str, into: str, progress) -> tuple[str, dict]:
    unpacker = Unpacker(tar_path, into, progress)
    try:
        with tarfile.open(tar_path, "r:*") as tar:
            for member in tar:  # one member at a time: the tar is read once, in order
                unpacker.add(tar, member)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise ExportDamagedError(f"{tar_path} is damaged or truncated ({e}); nothing was "
                                 "imported") from None
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StoreFullError(f"no space left on the store's disk while unpacking "
                                 f"{tar_path}; nothing was imported") from None
        raise
    if unpacker.top is None:
        raise NotAnExportError(f"{tar_path} is empty: it is not a ckptfs export")
    unpacker.set_directory_times()
    return os.path.join(into, unpacker.top), unpacker.hashes


class Unpacker:
    """Writes tar members below `into`, refusing any that would land elsewhere. Never
    follows a link: a member under a symlink member is refused, files are created with
    O_EXCL | O_NOFOLLOW, and symlinks must point inside the export."""

    def __init__(self, tar_path: str, into: str, progress=None):
        self.tar_path, self.into, self.progress = tar_path, into, progress
        self.top: str | None = None
        self.seen: set[str] = set()
        self.symlinks: set[str] = set()
        self.directories: list[tuple[str, int, int]] = []  # (path, mode, mtime_ns)
        self.hashes: dict[str, str] = {}  # path under the top directory -> SHA-256

    def refuse(self, member, why: str):
        raise UnsafeArchiveError(f"{self.tar_path}: refused: member {member.name!r} {why}; "
                                 "nothing was imported")

    def add(self, tar, member):
        parts = self._parts(member)
        if not parts:
            return  # "./": the directory being unpacked into
        rel = "/".join(parts)
        if rel in self.seen:
            self.refuse(member, "appears twice")
        if any("/".join(parts[:n]) in self.symlinks for n in range(1, len(parts))):
            self.refuse(member, "is inside a symlink")
        self.seen.add(rel)
        path = os.path.join(self.into, *parts)
        if member.isdir():
            self._make_dirs(member, path)
            self.directories.append((path, member.mode & 0o7777, member_mtime_ns(member)))
        elif len(parts) == 1:
            self.refuse(member, "is not a directory (an export tar holds one top directory)")
        elif member.issym():
            self._check_link_target(member, parts)
            self._make_dirs(member, os.path.dirname(path))
            os.symlink(member.linkname, path)
            mtime_ns = member_mtime_ns(member)
            os.utime(path, ns=(mtime_ns, mtime_ns), follow_symlinks=False)
            self.symlinks.add(rel)
        elif member.isreg():
            self._make_dirs(member, os.path.dirname(path))
            self.hashes["/".join(parts[1:])] = self._write_file(tar, member, path)
        elif member.islnk():
            self.refuse(member, "is a hard link (an export holds none)")
        else:
            self.refuse(member, "is a device, FIFO or other special file")

    def _parts(self, member) -> list[str]:
        if member.name.startswith("/"):
            self.refuse(member, "has an absolute path")
        parts = [p for p in member.name.split("/") if p not in ("", ".")]
        if ".." in parts:
            self.refuse(member, "has a '..' component")
        if parts and self.top is None:
            self.top = parts[0]
        elif parts and parts[0] != self.top:
            self.refuse(member, f"is outside the top directory {self.top!r} (an export tar "
                                "holds one top directory)")
        return parts

    def _check_link_target(self, member, parts: list[str]):
        target = member.linkname
        if not target or target.startswith("/"):
            self.refuse(member, f"is a symlink to {target!r}, outside the export")
        where = parts[1:-1]  # the link's directory, below the top directory
        for piece in target.split("/"):
            if piece == "..":
                if not where:
                    self.refuse(member, f"is a symlink to {target!r}, outside the export")
                where.pop()
            elif piece not in ("", "."):
                where.append(piece)

    def _make_dirs(self, member, path: str):
        try:
            os.makedirs(path, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            self.refuse(member, "is inside something that is not a directory")

    def _write_file(self, tar, member, path: str) -> str:
        sha = hashlib.sha256()
        source = tar.extractfile(member)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            while block := source.read(READ_BLOCK):
                sha.update(block)
                _write_all(fd, block)
                if self.progress:
                    self.progress(len(block))
            os.fchmod(fd, member.mode & 0o7777)
        finally:
            os.close(fd)
        mtime_ns = member_mtime_ns(member)
        os.utime(path, ns=(mtime_ns, mtime_ns), follow_symlinks=False)
        return sha.hexdigest()

    def set_directory_times(self):
        """Modes and mtimes of directories last, deepest first: writing into a directory
        changes its mtime, and a read-only one could not be filled."""
        for path, mode, mtime_ns in sorted(self.directories, key=lambda d: d[0], reverse=True):
            os.chmod(path, mode)
            os.utime(path, ns=(mtime_ns, mtime_ns), follow_symlinks=False)


def _write_all(fd: int, data: bytes):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def member_mtime_ns(member) -> int:
    """A member's mtime to the nanosecond when a pax header has it (export writes one)."""
    exact = member.pax_headers.get("mtime")
    if exact is not None:
        try:
            return int(Decimal(exact).scaleb(9))
        except ArithmeticError:
            pass
    return int(member.mtime) * 1_000_000_000
