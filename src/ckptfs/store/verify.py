"""`verify`: re-read every pack record, re-check every chunk id and every file's SHA-256
(and, if asked, every version's signature), and record what is damaged in the index.

`Verifier` is given the store's path (an interrupted gc's intent), the index, the pack
files (`backend`), the reader (every chunk is read through it, uncached), the catalog
(versions, tombstones, recorded damage) and signing (the journaled public keys).

A complete verify that records its findings also leaves `STORE/logs/last-verify.json`
(when it started and ended, what it checked, what it found): the health page and
/metrics of `ckptfs serve` say from it when the store was last verified, and which
packs were written since (unverified). A local file, not a journal entry: a verify
changes nothing of the store's history, and a reader may run it.
"""
import hashlib
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .backend import Backend
from .catalog import version_name
from .damage import record_verify_findings
from .errors import IntegrityError
from .gc import load_intent
from .index import Location
from .manifest import version_digest
from .pack import list_pack_ids, scan_pack
from .private import make_private_dirs, private_opener
from .signing import SignatureReport

LAST_VERIFY = os.path.join("logs", "last-verify.json")
log = logging.getLogger("ckptfs.store")


@dataclass
class VerifyReport:
    packs: int = 0
    chunks: int = 0
    versions: int = 0
    files: int = 0
    bytes: int = 0
    damaged_packs: dict = field(default_factory=dict)    # pack id -> [messages]
    damaged_chunks: dict = field(default_factory=dict)   # chunk id hex -> message
    damaged_files: list = field(default_factory=list)    # (version, path, message)
    damaged_versions: set = field(default_factory=set)
    leftover_packs: list = field(default_factory=list)  # unfinished, unreferenced: not damage
    dead_damage: dict = field(default_factory=dict)  # pack id -> [damage no record in use has]
    deleted_versions: int = 0       # tombstones whose manifest (file list) was checked
    gc_interrupted: bool = False    # a gc died midway: the next one finishes it (not damage)
    signatures: SignatureReport | None = None  # with verify(signatures=True)

    @property
    def ok(self) -> bool:
        return not (self.damaged_packs or self.damaged_chunks or self.damaged_files
                    or self.damaged_versions)


class Verifier:
    def __init__(self, store_path: str, index, backend: Backend, reader, catalog, signing):
        self.path = store_path
        self.index = index
        self.backend = backend
        self.reader = reader
        self.catalog = catalog
        self.signing = signing

    def verify(self, progress=None, signatures: bool = False,
               trusted_keys: list | None = None, record: bool = True) -> VerifyReport:
        """Re-read every pack record, re-check every chunk id and every file's SHA-256.

        With `signatures`, also check each version's signature against the digest of its
        files as recomputed here, with the journaled public key its key id names, or
        with `trusted_keys` (Ed25519 public keys from outside the store) when given.
        With `record`, what it finds damaged (and what it finds healed) is written to the
        index: no ingest deduplicates against a damaged chunk, ls and get say so."""
        report = VerifyReport()
        started = time.time()
        if signatures:
            report.signatures = SignatureReport()
            known_keys = self.signing.signing_state()["keys"]
        with self.index.read() as txn:
            located = {record_id: loc for db in (self.index.chunks, self.index.manifests)
                       for record_id, loc in self.index.iter_locations(txn, db)}
            chunk_ids = [chunk_id for chunk_id, _loc in self.index.iter_locations(txn, self.index.chunks)]
        referenced = {loc.pack_id for loc in located.values()}
        in_use: dict[int, list[Location]] = {}
        for loc in located.values():
            in_use.setdefault(loc.pack_id, []).append(loc)
        for pack_id in list_pack_ids(self.backend):
            scan = scan_pack(self.backend, pack_id)
            report.packs += 1
            self._judge_pack_scan(scan, in_use.get(pack_id, []), report)
        for pack_id in referenced - set(list_pack_ids(self.backend)):
            report.damaged_packs[pack_id] = [f"pack {pack_id:08x} is missing"]
        self.reader.clear_cache()  # verify what is on disk, not what is cached
        with ThreadPoolExecutor(2, thread_name_prefix="ckptfs-verify") as pool:
            for chunk_id, problem in zip(chunk_ids, pool.map(self._check_chunk, chunk_ids)):
                report.chunks += 1
                if problem:
                    message, pack_id = problem
                    report.damaged_chunks[chunk_id.hex()] = message
                    report.damaged_packs.setdefault(pack_id, []).append(message)
                if progress:
                    progress("chunks", report.chunks, len(chunk_ids))
            self.reader.clear_cache()
            for version in self.catalog.all_versions():
                digest = self._verify_version(version, report, pool, progress)
                if signatures:
                    self.signing.check_version_signature(version, digest, known_keys,
                                                         trusted_keys, report.signatures)
        self._verify_tombstones(report)
        self._report_lost_versions(report)
        report.gc_interrupted = load_intent(self.backend) is not None
        if record:
            record_verify_findings(self.index, report, chunk_ids)
            save_last_verify(self.path, report, started, time.time())
        return report

    @staticmethod
    def _judge_pack_scan(scan, in_use: list, report: VerifyReport) -> None:
        """Damage in a pack counts when a record in use is hit; damage only in records
        nothing uses any more (healed, or left by an interrupted import) is a note."""
        used_offsets = {loc.offset for loc in in_use}
        live = [m for m, at in zip(scan.damage, scan.damaged_at) if at in used_offsets]
        dead = [m for m, at in zip(scan.damage, scan.damaged_at) if at not in used_offsets]
        if not scan.complete and in_use:
            message = f"pack {scan.pack_id:08x} ends early: {scan.tail}"
            cut = any(loc.offset + loc.length > scan.scanned_to for loc in in_use)
            (live if cut else dead).append(message)
        elif not scan.complete:
            report.leftover_packs.append(scan.pack_id)
        if live:
            report.damaged_packs[scan.pack_id] = live
        if dead:
            report.dead_damage[scan.pack_id] = dead

    def _report_lost_versions(self, report: VerifyReport) -> None:
        """Versions whose file list was lost (rebuild-index found their manifest gone)."""
        for damage in self.catalog.version_damage():
            if damage.get("manifest"):
                name = version_name(damage["project"], damage["run"], damage["version"])
                report.damaged_versions.add(name)
                report.damaged_files.append((name, "(file list)", damage["manifest"]))

    def _verify_tombstones(self, report: VerifyReport):
        """A deleted version's data may be gone, but its manifest (its file list and
        SHA-256s, what its tombstone shows) must stay readable."""
        for tomb in self.catalog.tombstones():
            report.deleted_versions += 1
            record = tomb["record"]
            try:
                self.reader.read_manifest(bytes.fromhex(record["manifest"]))
            except (IntegrityError, ValueError) as e:
                name = version_name(record["project"], record["run"], record["version"])
                report.damaged_versions.add(f"{name} (deleted)")
                report.damaged_files.append((name, "(manifest)", str(e)))

    def _check_chunk(self, chunk_id: bytes) -> tuple[str, int] | None:
        """None if the chunk reads back as the bytes its id names, else (problem, the pack
        at fault: for a delta whose base is damaged, the base's pack)."""
        own_pack = self.reader.index_location(chunk_id).pack_id
        try:
            data = self.reader.read_chunk(chunk_id)
        except IntegrityError as e:
            return str(e), e.pack_id if e.pack_id is not None else own_pack
        if self.reader.chunk_id(data) != chunk_id:
            return f"pack {own_pack:08x}: chunk {chunk_id.hex()[:16]} does not match its id", own_pack
        return None

    def _verify_version(self, record, report, pool, progress) -> str:
        """Check a version's entries and files; returns the digest of its entries."""
        p, r, v = record["project"], record["run"], record["version"]
        name = version_name(p, r, v)
        report.versions += 1
        entries = self.catalog.walk(p, r, v)
        digest = version_digest(entries)
        if digest != record["digest"]:
            report.damaged_versions.add(name)
        for entry in entries:
            if entry["type"] != "file":
                continue
            report.files += 1
            bad = [c for c, _ in entry["chunks"] if c in report.damaged_chunks]
            if bad:
                report.damaged_files.append((name, entry["path"], f"{len(bad)} damaged chunk(s)"))
                report.damaged_versions.add(name)
                continue
            sha = hashlib.sha256()
            try:
                for data in self.reader.iter_file(entry, pool):
                    sha.update(data)
            except IntegrityError as e:
                report.damaged_files.append((name, entry["path"], str(e)))
                report.damaged_versions.add(name)
                continue
            report.bytes += entry["size"]
            if sha.hexdigest() != entry["sha256"]:
                report.damaged_files.append((name, entry["path"], "SHA-256 mismatch"))
                report.damaged_versions.add(name)
            if progress:
                progress("files", report.files, None)
        return digest


def save_last_verify(store_path: str, report: VerifyReport, started: float,
                     finished: float) -> None:
    """Record a complete verify (module docstring). Best effort: the verify's own
    report is what matters, so a failure to write is logged, not raised."""
    doc = {"started_at": started, "finished_at": finished, "ok": report.ok,
           "packs": report.packs, "chunks": report.chunks, "versions": report.versions,
           "files": report.files, "bytes": report.bytes,
           "damaged_packs": len(report.damaged_packs),
           "damaged_chunks": len(report.damaged_chunks),
           "damaged_files": len(report.damaged_files),
           "damaged_versions": len(report.damaged_versions),
           "signatures_checked": report.signatures is not None,
           "signatures_ok": report.signatures.ok if report.signatures is not None else None}
    path = os.path.join(store_path, LAST_VERIFY)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        make_private_dirs(os.path.dirname(path))
        with open(tmp, "w", opener=private_opener) as f:
            json.dump(doc, f)
        os.replace(tmp, path)
    except OSError as e:
        log.warning("could not record the verify in %s: %s", path, e)
        try:
            os.unlink(tmp)
        except OSError:
            pass


def load_last_verify(store_path: str) -> dict | None:
    """The record of the last complete verify, or None (never verified, or unreadable)."""
    try:
        with open(os.path.join(store_path, LAST_VERIFY), "rb") as f:
            doc = json.loads(f.read())
    except (OSError, ValueError):
        return None
    times_known = isinstance(doc, dict) and all(
        isinstance(doc.get(k), (int, float)) for k in ("started_at", "finished_at"))
    return doc if times_known else None  # an edited or foreign file: as if none
