"""`ckptfs copy SRC DST [PATTERN]`: versions of one store sealed again in another, with
their sidecars' metadata, lineage, aliases and signatures (docs/copy.md).

    select   SRC's live versions whose PROJECT/RUN/VERSION matches PATTERN, in the order
             SRC sealed them (a parent is sealed before its children: lineage resolves)
    per version, one at a time:
      in DST with the same digest -> "already there"; another digest -> failed (named)
      restore it from SRC into DST's spool (every file's SHA-256 checked on the way)
      -> SRC's sidecar: its signature checked with SRC's journaled key
      -> `archive_directory(DST, recorded=…)`, the one ingest path (dedup against DST)
         with the sidecar's metadata and `imported_from` (SRC's location, copied_at)
      -> its explicit aliases set in DST where the name is free there
      the spool copy is removed, also on error or when a killed copy left it

The ingest takes a directory (it walks it, and the seal reads known files and scans
pickles), so each version is staged on DST's disk for the time of its copy: the spool
cost is the size of the largest version copied. Each version is all or nothing (the
ingest's guarantee), so a copy killed half-way leaves DST sound and a re-run finishes it.
The caller (the CLI) opens both stores and checks roles with `check_roles`.
"""
import fnmatch
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ckptfs.store import IntegrityError, StoreError
from ckptfs.store.catalog import DERIVED_ALIASES, version_name
from ckptfs.store.names import validate_name

from .export import utc_now
from .import_checks import ImportChecks, SignatureProblem, check_signature
from .import_export import imported_from, recorded_metadata, spool_workdir
from .seal import archive_directory
from .sidecar import sidecar_of

COPY_PREFIX = "copy-"       # DST/spool/copy-<pid>-<random>/: a version being copied
STAGED_NAME = "version"     # the version's directory in there
GLOB_CHARACTERS = "*?["


class CopyError(StoreError):
    """A copy that cannot start: a bad pattern, nothing matches, the same store twice."""


# -- what to copy -------------------------------------------------------------------------
def parse_pattern(pattern: str) -> tuple[str, ...]:
    """PATTERN as globs over (project, run, version); fewer parts match everything below:
    `nlp` and `nlp/*` both select every version of project nlp."""
    parts = tuple(pattern.split("/")) if pattern else ()
    if not parts or len(parts) > 3 or "" in parts:
        raise CopyError(f"bad pattern {pattern!r}: expected PROJECT[/RUN[/VERSION]], each "
                        "a name or a glob (`nlp/*`, `nlp/run-1/step-*`)")
    for part, what in zip(parts, ("project", "run", "version")):
        if not any(c in part for c in GLOB_CHARACTERS):
            validate_name(part, what)
    return parts


def select_versions(src, pattern: str) -> list[dict]:
    """SRC's live versions (not the deleted ones) matching PATTERN, in sealing order."""
    globs = parse_pattern(pattern)
    chosen = [record for record in src.all_versions()
              if all(fnmatch.fnmatchcase(name, glob) for name, glob
                     in zip((record["project"], record["run"], record["version"]), globs))]
    if not chosen:
        raise CopyError(f"no version of {src.location} matches {pattern!r}")
    return sorted(chosen, key=lambda record: record["seq"])


def check_roles(src, dst, versions: list[dict]):
    """Reader on every project copied from SRC, writer on it in DST (each store checks
    its own rules and journals a refusal); before anything is copied."""
    for project in sorted({record["project"] for record in versions}):
        src.authorize(None, project, "reader", "read versions (to copy them)", project)
        dst.authorize(None, project, "writer", "archive versions (a copy)", project)


# -- the outcome ------------------------------------------------------------------------------
COPIED, WOULD_COPY, ALREADY_THERE, FAILED = "copied", "would copy", "already there", "failed"


@dataclass
class CopyOutcome:
    """What became of one version."""
    ref: str
    state: str
    notes: list[str] = field(default_factory=list)  # the signature, aliases, why it failed
    bytes_read: int = 0
    new_stored_bytes: int = 0
    damaged: bool = False  # failed on damage (SRC's data or signature): exit code 3

    def line(self) -> str:
        details = f" ({'; '.join(self.notes)})" if self.notes and self.state != FAILED else ""
        if self.state == FAILED:
            return f"failed: {self.ref}: {'; '.join(self.notes)}"
        return f"{self.state}: {self.ref}{details}"


@dataclass
class CopySummary:
    outcomes: list[CopyOutcome] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, state: str) -> int:
        return sum(o.state == state for o in self.outcomes)

    @property
    def bytes_read(self) -> int:
        return sum(o.bytes_read for o in self.outcomes)

    @property
    def new_stored_bytes(self) -> int:
        return sum(o.new_stored_bytes for o in self.outcomes)


# -- the copy ------------------------------------------------------------------------------
def copy_versions(src, dst, versions: list[dict], dry_run: bool = False,
                  on_outcome: Callable[[CopyOutcome], None] | None = None,
                  progress: Callable[[int], None] | None = None) -> CopySummary:
    """Copy `versions` (from `select_versions`) from store `src` into store `dst`, one
    at a time; `on_outcome` is told of each as soon as it is decided (a copied version
    is sealed in DST by then); `progress(nbytes)` of every byte read from SRC and
    ingested into DST."""
    copier = VersionCopier(src, dst, progress)
    summary = CopySummary()
    started = time.monotonic()
    for record in versions:
        outcome = copier.plan(record) if dry_run else copier.copy(record)
        summary.outcomes.append(outcome)
        if on_outcome:
            on_outcome(outcome)
    summary.seconds = time.monotonic() - started
    return summary


def ref_of(record: dict) -> str:
    return version_name(record["project"], record["run"], record["version"])


class VersionCopier:
    """Copies single versions from `src` to `dst` (both open stores)."""

    def __init__(self, src, dst, progress: Callable[[int], None] | None = None):
        self.src, self.dst = src, dst
        self.progress = progress
        self.src_keys = src.signing_state()["keys"]

    def plan(self, record: dict) -> CopyOutcome:
        """What `copy` would do, without doing it (--dry-run)."""
        outcome = self._already_decided(record)
        if outcome is None:
            outcome = CopyOutcome(ref_of(record), WOULD_COPY,
                                  [f"{record['files']} files, {record['logical_bytes']} bytes"])
        return outcome

    def copy(self, record: dict) -> CopyOutcome:
        outcome = self._already_decided(record)
        if outcome is not None:
            if outcome.state == ALREADY_THERE:
                outcome.notes += self._carry_aliases(record)
            return outcome
        outcome = CopyOutcome(ref_of(record), COPIED)
        try:
            self._copy_new(record, outcome)
        except StoreError as e:
            outcome.state, outcome.notes = FAILED, [str(e)]
            outcome.damaged = isinstance(e, IntegrityError)
        return outcome

    def _already_decided(self, record: dict) -> CopyOutcome | None:
        """The outcome of a version DST has (or cannot take) already; None: copy it."""
        p, r, v = record["project"], record["run"], record["version"]
        ref = ref_of(record)
        there = self.dst.version_record(p, r, v)
        if there is not None:
            if there["digest"] == record["digest"]:
                return CopyOutcome(ref, ALREADY_THERE)
            return CopyOutcome(ref, FAILED, [
                f"DST has another version under this name (digest {there['digest'][:16]}…, "
                f"SRC's is {record['digest'][:16]}…); versions are immutable: not copied"])
        try:
            self.dst.check_new_version(p, r, v)  # deleted there: names are never reused
        except StoreError as e:
            return CopyOutcome(ref, FAILED, [str(e)])
        return None

    def _copy_new(self, record: dict, outcome: CopyOutcome):
        p, r, v = record["project"], record["run"], record["version"]
        sidecar = sidecar_of(self.src, p, r, v)
        checks = self._signature_checks(sidecar)
        with spool_workdir(self.dst, COPY_PREFIX) as workdir:
            staged = os.path.join(workdir, STAGED_NAME)
            outcome.bytes_read = self._stage(record, staged)
            report = archive_directory(self.dst, staged, p, r, v,
                                       recorded=self._recorded(sidecar, checks),
                                       progress=self._ingest_progress())
        outcome.new_stored_bytes = report.stats.new_stored_bytes
        if report.digest != record["digest"]:
            raise IntegrityError(f"copied, but its digest in DST {report.digest[:16]}… differs "
                                 f"from SRC's {record['digest'][:16]}…")
        outcome.notes.append(describe_signature(checks))
        outcome.notes += self._carry_aliases(record)

    def _signature_checks(self, sidecar: dict) -> ImportChecks:
        """SRC's signature of the version, checked with SRC's own journaled key."""
        try:
            return check_signature(sidecar, None, self.src_keys)
        except SignatureProblem as e:
            raise IntegrityError(f"{e} in SRC: not copied (see `ckptfs verify --signatures` "
                                 "of SRC)") from None

    def _stage(self, record: dict, staged: str) -> int:
        """Restore the version from SRC into `staged` (SHA-256 of every file checked), with
        its directory's mode and mtime (the ingest records them). Returns bytes read."""
        p, r, v = record["project"], record["run"], record["version"]
        report = self.src.restore(p, r, v, staged, progress=self.progress)
        if report.damaged:
            path, message = report.damaged[0]
            more = f" (and {len(report.damaged) - 1} more)" if len(report.damaged) > 1 else ""
            raise IntegrityError(f"damaged in SRC: {path}: {message}{more}; not copied (see "
                                 "`ckptfs verify` of SRC)")
        root = record["root"]
        os.chmod(staged, root["mode"])
        os.utime(staged, ns=(root["mtime_ns"], root["mtime_ns"]))
        return report.bytes

    def _ingest_progress(self):
        if self.progress is None:
            return None
        return lambda nbytes, _stats: self.progress(nbytes)

    def _recorded(self, sidecar: dict, checks: ImportChecks) -> dict:
        """The metadata DST seals the copy with: SRC's sidecar's (as an import of an
        export keeps it), and where it came from."""
        recorded = recorded_metadata(sidecar, False, len(sidecar["files"]), checks)
        origin = imported_from(sidecar, partial=False)
        del origin["exported_at"], origin["partial"]
        origin.update(store=self.src.location, copied_at=utc_now(), via="copy",
                      checks=checks.record())
        recorded["imported_from"] = origin
        return recorded

    def _carry_aliases(self, record: dict) -> list[str]:
        """Set in DST the aliases SRC's run gives this version (not `latest`/`best`,
        which DST derives itself) where DST's run has no such name; say what was set and
        what skipped."""
        p, r, v = record["project"], record["run"], record["version"]
        wanted = sorted(alias for alias, target in self.src.aliases(p, r).items()
                        if target == v and alias not in DERIVED_ALIASES)
        notes = []
        for alias in wanted:
            current = self.dst.aliases(p, r).get(alias)
            if current == v:
                continue
            if current is not None or self.dst.name_in_run(p, r, alias) is not None:
                what = f"names {current}" if current else "is taken"
                notes.append(f"alias {alias} skipped: in DST it {what}")
            elif not self.dst.allowed(None, p, "maintainer"):
                notes.append(f"alias {alias} skipped: setting it in DST needs maintainer on {p}")
            else:
                notes.append(self._set_alias(p, r, alias, v))
        return notes

    def _set_alias(self, project: str, run: str, alias: str, version: str) -> str:
        try:
            self.dst.set_alias(project, run, alias, version)
        except StoreError as e:  # set by another process meanwhile, say
            return f"alias {alias} skipped: {e}"
        return f"alias {alias} set"


def describe_signature(checks: ImportChecks) -> str:
    if checks.signature == "valid":
        return f"signature by SRC's key {checks.key_id} verified"
    if checks.signature == "unchecked":
        return f"signed by key {checks.key_id}, which SRC does not know: not checked"
    return "unsigned in SRC"
