"""`ckptfs export`: a version as plain files anyone can check, in a directory or a tar.

    DEST/SHA256SUMS         `sha256sum -c SHA256SUMS` checks everything below, anywhere
    DEST/<version>.json     the sidecar as the mount shows it, plus an `export` object
    DEST/<version>/…        the files, with their modes, mtimes and symlinks

A tar (`DEST.tar`, `.tar.gz`, `.tgz`) holds the same under one top directory named
after the tar (`x.tar` -> `x/`), so it never spills into the directory it is unpacked
in. The tar is streamed from the store: no copy of the version on disk or in memory,
every file's SHA-256 checked against the sidecar as it goes by, and written under a
temporary name that only a complete, synced tar leaves. A directory export writes
SHA256SUMS last: a directory without it is not a finished export (and `ckptfs import`
says so). docs/export.md describes the layout; `import_export.py` reads it back.
"""
import errno
import hashlib
import io
import os
import secrets
import shutil
import stat
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal

from ckptfs import __version__
from ckptfs.store import IntegrityError, StoreError
from ckptfs.store.restore import RestoreError

from .sidecar import render, sidecar_of

SUMS_NAME = "SHA256SUMS"
TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar")  # longest first: ".tar.gz" before ".tar"
TAR_COPY_BUFFER = 1 << 20
GZIP_LEVEL = 1  # weights hardly compress at any level, and gzip -1 is the least slow


class ExportError(StoreError):
    """An export that cannot be written, or a source that is not a usable export."""

    errno = errno.EINVAL

    def __init__(self, message: str, error_number: int | None = None):
        super().__init__(message)
        if error_number is not None:
            self.errno = error_number


class DestinationExistsError(ExportError):
    errno = errno.EEXIST


@dataclass
class ExportReport:
    dest: str
    files: int
    symlinks: int
    bytes: int
    partial: bool
    seconds: float


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def is_tar_name(dest: str) -> bool:
    return dest.endswith(TAR_SUFFIXES)


def tar_stem(dest: str) -> str:
    """The top directory inside a tar: its name without the suffix (`x.tar.gz` -> `x`)."""
    name = os.path.basename(dest.rstrip("/"))
    for suffix in TAR_SUFFIXES:
        if name.endswith(suffix):
            return name[:-len(suffix)]
    return name


# -- SHA256SUMS ---------------------------------------------------------------------------
def sums_line(sha256_hex: str, path: str) -> bytes:
    """One line as `sha256sum` writes it: `<hex>  <path>`. A name with a backslash, a
    newline or a carriage return is escaped and the line starts with a backslash (GNU
    coreutils' convention, which `sha256sum -c` reads back)."""
    name = os.fsencode(path)
    if any(c in name for c in b"\\\n\r"):
        name = name.replace(b"\\", b"\\\\").replace(b"\n", b"\\n").replace(b"\r", b"\\r")
        return b"\\" + sha256_hex.encode() + b"  " + name + b"\n"
    return sha256_hex.encode() + b"  " + name + b"\n"


def sums_file(version: str, sidecar_sha256: str, entries: list[dict]) -> bytes:
    """SHA256SUMS of an export: the sidecar, then every file by path (relative to DEST)."""
    lines = [sums_line(sidecar_sha256, f"{version}.json")]
    lines += [sums_line(e["sha256"], f"{version}/{e['path']}") for e in entries
              if e["type"] == "file"]
    return b"".join(lines)


# -- the sidecar ------------------------------------------------------------------------
def export_sidecar(store, project: str, run: str, version: str, entries: list[dict]) -> dict:
    """The sidecar as the mount shows it, plus `export`: when, from where, by which
    ckptfs, and which files (a partial export holds only some)."""
    sidecar = sidecar_of(store, project, run, version)
    files = [e["path"] for e in entries if e["type"] == "file"]
    symlinks = [e["path"] for e in entries if e["type"] == "symlink"]
    partial = (len(files), len(symlinks)) != (len(sidecar["files"]), len(sidecar["symlinks"]))
    sidecar["export"] = {"exported_at": utc_now(), "store": store.path,
                         "ckptfs_version": __version__, "partial": partial,
                         "files": files, "symlinks": symlinks}
    return sidecar


# -- the export -------------------------------------------------------------------------
@dataclass
class ExportParts:
    """What an export writes, known before any file byte is read."""
    version: str
    root: dict            # the version directory's mode and mtime
    entries: list[dict]   # the store's entries to export, parents before children
    sidecar: bytes
    sums: bytes


def export_version(store, project: str, run: str, version: str, dest: str,
                   patterns=None, progress=None) -> ExportReport:
    """Write PROJECT/RUN/VERSION (or the files matching `patterns`) to `dest`: a new or
    empty directory, or a new `.tar`/`.tar.gz`/`.tgz` file. `progress(nbytes)` is told
    of every piece of file data written."""
    started = time.monotonic()
    store.require_version(project, run, version)
    if version == SUMS_NAME:
        raise ExportError(f"a version named {SUMS_NAME} cannot be exported: its directory "
                          f"would clash with the {SUMS_NAME} file beside it")
    entries = store.select_entries(project, run, version, patterns)
    sidecar = export_sidecar(store, project, run, version, entries)
    sidecar_bytes = render(sidecar)
    sums = sums_file(version, hashlib.sha256(sidecar_bytes).hexdigest(), entries)
    root = store.version_record(project, run, version)["root"]
    parts = ExportParts(version, root, entries, sidecar_bytes, sums)
    try:
        if is_tar_name(dest):
            _export_to_tar(store, parts, dest, progress)
        else:
            _export_to_directory(store, project, run, parts, dest, patterns, progress)
    except IntegrityError as e:
        raise IntegrityError(f"{project}/{run}/{version}: {e}; nothing was exported "
                             "(run `ckptfs verify` on the store)") from None
    except RestoreError as e:
        raise (_write_error(dest, e.os_error) if e.os_error else e) from None
    except OSError as e:
        raise _write_error(dest, e) from None
    files = [e for e in entries if e["type"] == "file"]
    return ExportReport(dest, len(files), sum(e["type"] == "symlink" for e in entries),
                        sum(e["size"] for e in files), sidecar["export"]["partial"],
                        time.monotonic() - started)


def _write_error(dest: str, error: OSError) -> ExportError:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return ExportError(f"no space left on the device of {dest}; the partial export was "
                           "removed: free some space and export again", errno.ENOSPC)
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return ExportError(f"cannot write {dest}: {os.strerror(error.errno).lower()}; choose "
                           "a destination you may write to", error.errno)
    where = error.filename or dest
    return ExportError(f"cannot write {where}: {error.strerror or error}", error.errno)


# -- into a directory -------------------------------------------------------------------
def _export_to_directory(store, project, run, parts: ExportParts, dest, patterns, progress):
    created = _prepare_directory(dest)
    version_dir = os.path.join(dest, parts.version)
    written = [version_dir, version_dir + ".json", os.path.join(dest, SUMS_NAME + ".tmp")]
    try:
        # restore checks every file's SHA-256 against the sidecar as it writes it
        report = store.restore(project, run, parts.version, version_dir, patterns, progress)
        if report.damaged:
            path, message = report.damaged[0]
            raise IntegrityError(message if path in message else f"{path}: {message}")
        os.chmod(version_dir, parts.root["mode"])
        os.utime(version_dir, ns=(parts.root["mtime_ns"],) * 2)
        _write_new_file(version_dir + ".json", parts.sidecar)
        # Last, under a temporary name: DEST is a finished export once SHA256SUMS is there.
        _write_new_file(written[-1], parts.sums)
        os.rename(written[-1], os.path.join(dest, SUMS_NAME))
    except BaseException:
        for path in written:
            remove_path(path)
        if created:
            remove_path(dest)
        raise


def _prepare_directory(dest: str) -> bool:
    """Check that `dest` is new or an empty directory; create it. True if created here."""
    if os.path.lexists(dest):
        if not os.path.isdir(dest):
            raise DestinationExistsError(f"{dest} exists and is not a directory: export into "
                                         "a new or empty directory, or name a .tar file")
        if os.listdir(dest):
            raise DestinationExistsError(f"{dest} exists and is not empty: export into a new "
                                         "or empty directory (export never overwrites)")
        return False
    os.makedirs(dest)
    return True


def _write_new_file(path: str, data: bytes):
    with open(path, "xb") as f:
        f.write(data)


def remove_path(path: str):
    """Remove a file or a whole tree, read-only directories included (a version may have
    them, and a user who is not root cannot delete in them otherwise)."""
    if not os.path.lexists(path):
        return
    if os.path.isdir(path) and not os.path.islink(path):
        def make_writable_and_retry(function, failed, _exc):
            parent = os.path.dirname(failed)
            os.chmod(parent, stat.S_IMODE(os.lstat(parent).st_mode) | stat.S_IRWXU)
            if os.path.isdir(failed) and not os.path.islink(failed):
                os.chmod(failed, stat.S_IMODE(os.lstat(failed).st_mode) | stat.S_IRWXU)
            function(failed)
        os.chmod(path, stat.S_IMODE(os.lstat(path).st_mode) | stat.S_IRWXU)
        shutil.rmtree(path, onerror=make_writable_and_retry)
    else:
        os.unlink(path)


# -- into a tar -------------------------------------------------------------------------
def _export_to_tar(store, parts: ExportParts, dest, progress):
    if os.path.lexists(dest):
        raise DestinationExistsError(f"{dest} exists: choose a new name (export never "
                                     "overwrites)")
    parent = os.path.dirname(os.path.abspath(dest))
    if not os.path.isdir(parent):
        raise ExportError(f"{parent} is not a directory: create it first", errno.ENOENT)
    fd, partial_path = _create_partial_file(parent, os.path.basename(dest))
    try:
        with os.fdopen(fd, "wb") as out:
            compressed = not dest.endswith(".tar")
            options = {"compresslevel": GZIP_LEVEL} if compressed else {}
            with tarfile.open(os.path.basename(dest), "w:gz" if compressed else "w", out,
                              format=tarfile.PAX_FORMAT, copybufsize=TAR_COPY_BUFFER,
                              **options) as tar:
                _write_tar_members(store, parts, tar, tar_stem(dest), progress)
            out.flush()
            os.fsync(out.fileno())
        _publish(partial_path, dest)
    except BaseException:
        remove_path(partial_path)
        raise


def _create_partial_file(parent: str, name: str) -> tuple[int, str]:
    """A new hidden file beside the destination (mode 0666 less the umask, as the tar
    will have), for the tar until it is complete."""
    while True:
        path = os.path.join(parent, f".{name}.{secrets.token_hex(4)}.partial")
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), path
        except FileExistsError:
            continue


def _write_tar_members(store, parts: ExportParts, tar, top: str, progress):
    now_ns = time.time_ns()
    tar.addfile(_tar_info(top, "dir", 0o755, now_ns))
    for name, data in ((SUMS_NAME, parts.sums), (f"{parts.version}.json", parts.sidecar)):
        tar.addfile(_tar_info(f"{top}/{name}", "file", 0o644, now_ns, len(data)),
                    io.BytesIO(data))
    base = f"{top}/{parts.version}"
    tar.addfile(_tar_info(base, "dir", parts.root["mode"], parts.root["mtime_ns"]))
    with ThreadPoolExecutor(2, thread_name_prefix="ckptfs-read") as pool, \
         ThreadPoolExecutor(1, thread_name_prefix="ckptfs-sha256") as hasher:
        for e in parts.entries:
            info = _tar_info(f"{base}/{e['path']}", e["type"], e["mode"], e["mtime_ns"],
                             e.get("size", 0), e.get("target"))
            if e["type"] != "file":
                tar.addfile(info)
                continue
            reader = ChunkReader(store.iter_file_checked(e, pool, hasher), progress)
            tar.addfile(info, reader)
            reader.finish()


def _tar_info(name: str, kind: str, mode: int, mtime_ns: int, size: int = 0,
              target: str | None = None) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE}[kind]
    info.mode = mode & 0o7777
    info.size = size
    info.linkname = target or ""
    info.mtime = mtime_ns // 1_000_000_000
    if mtime_ns % 1_000_000_000:  # to the nanosecond, in a pax header (GNU tar reads it)
        info.pax_headers = {"mtime": str(Decimal(mtime_ns).scaleb(-9))}
    info.uid, info.gid = os.getuid(), os.getgid()
    return info


class ChunkReader:
    """A file object over an iterator of byte chunks, for `TarFile.addfile`, which reads
    exactly the member's size; `finish()` then runs the iterator to its end, where
    `Store.iter_file_checked` compares the SHA-256."""

    def __init__(self, chunks, progress=None):
        self._chunks = iter(chunks)
        self._left = memoryview(b"")
        self._progress = progress

    def read(self, size: int) -> bytes:
        parts = []
        while size > 0:
            if not self._left:
                data = next(self._chunks, None)
                if data is None:
                    break
                self._left = memoryview(data)
            part = self._left[:size]
            self._left = self._left[len(part):]
            parts.append(part)
            size -= len(part)
            if self._progress:
                self._progress(len(part))
        return b"".join(parts)

    def finish(self):
        for extra in self._chunks:
            if extra:
                raise IntegrityError("the file is longer than its recorded size")


def _publish(partial_path: str, dest: str):
    """Give the finished tar its name, never replacing a file that appeared meanwhile."""
    try:
        os.link(partial_path, dest)
    except FileExistsError:
        raise DestinationExistsError(f"{dest} appeared while exporting: the export was not "
                                     "written; choose a new name") from None
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        os.rename(partial_path, dest)  # a file system without hard links
        return
    os.unlink(partial_path)
