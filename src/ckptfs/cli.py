"""The `ckptfs` command: a thin layer over `ckptfs.store.Store`.

Exit codes: 0 success; 1 an error (message on stderr); 2 a usage error;
3 damage found (integrity errors in cat/get, or `verify` found damaged data).
Every error is one line on stderr; an unexpected exception (a bug) too, as
"internal error (...)", with the traceback only when CKPTFS_DEBUG=1.
"""
import errno
import json
import math
import os
import stat
import sys
import time
from datetime import datetime

import click

from ckptfs.store import IntegrityError, Store, StoreError, parse_version_ref
from ckptfs.store.index import fs_bytes
from ckptfs.store.names import validate_name
from ckptfs.store.private import make_private_dirs, private_opener

EXIT_ERROR = 1
EXIT_DAMAGE = 3


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def progress_bar(**options):
    """A tqdm bar on stderr (tqdm is imported here: most commands never draw one, and
    `find` must start fast)."""
    from tqdm import tqdm
    return tqdm(file=sys.stderr, **options)


class Seconds(click.ParamType):
    """A duration in seconds: a finite number, 0 or more (float() takes 'nan', '-5')."""
    name = "seconds"

    def convert(self, value, param, ctx):
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not math.isfinite(seconds) or seconds < 0:
            self.fail(f"{value!r} must be a finite number of seconds, 0 or more", param, ctx)
        return seconds


SECONDS = Seconds()


def fail(message: str, code: int = EXIT_ERROR):
    click.echo(f"ckptfs: error: {message}", err=True)
    sys.exit(code)


class CkptfsGroup(click.Group):
    """Turns errors a user can cause into one line on stderr and an exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except IntegrityError as e:
            fail(f"integrity error: {e}", EXIT_DAMAGE)
        except StoreError as e:
            fail(str(e))
        except BrokenPipeError:
            # The reader went away (e.g. `ckptfs cat … | head`): not an error.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(0)
        except KeyboardInterrupt:
            click.echo("ckptfs: interrupted", err=True)
            sys.exit(130)
        except OSError as e:
            where = f"{e.filename}: " if e.filename else ""
            if e.errno == errno.ENOSPC:
                fail(f"{where}no space left on device")
            fail(f"{where}{e.strerror or e}")
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise  # click prints these itself (usage errors: exit code 2)
        except Exception as e:
            # A bug, not a user error: still one line, never a traceback on a user's
            # terminal (CKPTFS_DEBUG=1 shows it).
            if os.environ.get("CKPTFS_DEBUG"):
                raise
            detail = " ".join(str(e).split())
            fail(f"internal error ({type(e).__name__}: {detail}); this is a bug in ckptfs: "
                 "please report it with the command that caused it (CKPTFS_DEBUG=1 shows "
                 "the traceback)")


def open_store(path: str) -> Store:
    return Store.open(path)


@click.group(cls=CkptfsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ckptfs")
def main():
    """ckptfs: a versioned, deduplicated archive for ML checkpoints."""


@main.command()
@click.argument("store")
@click.option("--shared", is_flag=True,
              help="For several users: enforce roles (docs/access.md) and keep the directory "
                   "private to you (others come in through `mount --allow-other`).")
@click.option("--encrypt", is_flag=True,
              help="Encrypt the data in packs (AES-256-GCM) with the key in --key-file.")
@click.option("--key-file", metavar="PATH",
              help="With --encrypt: the key file; created with a new random key (mode 0600) "
                   "if it does not exist. Keep it off the store's disk, and keep a copy.")
def init(store, shared, encrypt, key_file):
    """Create a new, empty store in directory STORE; you are its admin."""
    if key_file is not None and not encrypt:
        raise click.UsageError("--key-file goes with --encrypt")
    if encrypt and key_file is None:
        raise click.UsageError("--encrypt needs --key-file PATH (where the key is kept)")
    key_existed = key_file is not None and os.path.exists(key_file)
    with Store.init(store, shared=shared, key_file=key_file) as s:
        kind = "encrypted store" if encrypt else "store"
        click.echo(f"created {kind} {s.path}" + (" (shared: roles enforced; grant them with "
                                                 "`ckptfs access grant`)" if shared else ""))
        if not encrypt:
            return
        key_path = s.config.encryption.key_file
        click.echo("encryption: AES-256-GCM, key "
                   + (f"read from {key_path}" if key_existed else f"created in {key_path}"))
        if os.path.commonpath([key_path, s.path]) == s.path:
            click.echo("warning: the key file is inside the store: whoever can read the store "
                       "can read the key too; move it elsewhere and set CKPTFS_KEY_FILE", err=True)
        if not key_existed:
            click.echo("keep a copy of the key file somewhere safe: without it the store's "
                       "data cannot be read")


class ImportProgress:
    """A tqdm bar on a terminal: bytes, rate, and dedup so far."""

    def __init__(self, total: int, label: str):
        self.bar = progress_bar(total=total, unit="B", unit_scale=True, unit_divisor=1000, desc=label,
                        disable=None, dynamic_ncols=True, leave=False)
        self._last = 0.0

    def __call__(self, nbytes, stats):
        self.bar.update(nbytes)
        now = time.monotonic()
        if now - self._last > 0.25 and stats.logical_bytes:
            self._last = now
            dedup = 1 - stats.new_raw_bytes / stats.logical_bytes
            self.bar.set_postfix_str(f"dedup {dedup:.0%}, stored {human_bytes(stats.new_stored_bytes)}")

    def close(self):
        self.bar.close()


def source_size(src: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(src):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


@main.command("import")
@click.argument("store")
@click.argument("src_dir", metavar="SRC")
@click.argument("ref", metavar="PROJECT/RUN/VERSION")
@click.option("--public-key", "public_keys", multiple=True, metavar="PEM",
              help="An export's signature must be by this Ed25519 public key; repeatable.")
@click.option("--trust-sidecar", is_flag=True,
              help="Import an export whose sidecar disagrees with its files (step, epoch, "
                   "metrics), keeping the sidecar's values; the disagreement is recorded.")
def import_(store, src_dir, ref, public_keys, trust_sidecar):
    """Archive the checkpoint directory SRC as PROJECT/RUN/VERSION. SRC may also be what
    `ckptfs export` wrote (a directory or a tar): it is verified first (files, sidecar,
    signature), and the version keeps its metrics, lineage and provenance
    (docs/export.md)."""
    from ckptfs.meta.import_export import TrustOptions, open_import_source
    project, run, version = parse_version_ref(ref)
    trust = TrustOptions(load_public_keys(public_keys), trust_sidecar)
    is_tar = os.path.isfile(src_dir)
    with open_store(store) as s:
        s.authorize(None, project, "writer", "archive versions", ref)
        s.check_new_version(project, run, version)  # before unpacking a tar for nothing
        unpacking = progress_bar(total=os.path.getsize(src_dir) if is_tar else 0, unit="B",
                                 unit_scale=True, unit_divisor=1000, desc="unpacking",
                                 disable=None if is_tar else True, leave=False)
        try:
            with open_import_source(s, src_dir, unpacking.update, trust) as source:
                unpacking.close()
                report = archive_with_progress(s, source, project, run, version, ref)
                source.check_sealed(report)
        finally:
            unpacking.close()
    st = report.stats
    rate = st.logical_bytes / report.seconds / 1e6 if report.seconds else 0
    dedup = f"{report.dedup_ratio:.2f}x" if st.new_raw_bytes else "all deduplicated"
    click.echo(f"imported {ref}{source.describe()}: {report.files} files, "
               f"{human_bytes(st.logical_bytes)} logical, "
               f"{human_bytes(st.new_stored_bytes)} new stored (dedup {dedup}, compression "
               f"{report.compression_ratio:.2f}x), {report.seconds:.1f} s, {rate:.0f} MB/s")


def load_public_keys(paths) -> list | None:
    if not paths:
        return None
    from ckptfs.store.ed25519 import load_public_key
    return [load_public_key(path) for path in paths]


def archive_with_progress(s: Store, source, project: str, run: str, version: str, ref: str):
    from ckptfs.meta.seal import archive_directory  # extractors, jsonschema: only here
    progress = ImportProgress(source_size(source.directory)
                              if os.path.isdir(source.directory) else 0, ref)
    try:
        return archive_directory(s, source.directory, project, run, version,
                                 progress=progress, recorded=source.recorded)
    finally:
        progress.close()


def split_ref(ref: str) -> list[str]:
    parts = [p for p in ref.strip("/").split("/") if p] if ref else []
    for part, what in zip(parts[:3], ("project", "run", "version")):
        validate_name(part, what)
    return parts


def format_time_ns(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9).strftime("%Y-%m-%d %H:%M")


def long_entry_line(entry: dict) -> str:
    kind = {"dir": stat.S_IFDIR, "symlink": stat.S_IFLNK}.get(entry["type"], stat.S_IFREG)
    size = entry.get("size", 0)
    name = entry["path"].rsplit("/", 1)[-1]
    if entry["type"] == "symlink":
        name += f" -> {entry['target']}"
    return f"{stat.filemode(kind | entry['mode'])} {size:>12} {format_time_ns(entry['mtime_ns'])} {name}"


@main.command("ls")
@click.argument("store")
@click.argument("ref", required=False, default="", metavar="[PROJECT[/RUN[/VERSION[/PATH]]]]")
@click.option("-l", "long", is_flag=True, help="Long listing: sizes, times, modes.")
def ls(store, ref, long):
    """List projects, runs, versions, or the files of a version."""
    parts = split_ref(ref)
    with open_store(store) as s:
        if parts:
            s.authorize(None, parts[0], "reader", "read", ref)
        if len(parts) == 0:
            for name in s.readable_projects(None, s.projects()):
                click.echo(name)
        elif len(parts) == 1:
            runs = s.runs(parts[0])
            if not runs:
                fail(f"no project {parts[0]!r} in the store")
            for name in runs:
                click.echo(name)
        elif len(parts) == 2:
            versions = s.versions(*parts)
            damage = s.version_damage(*parts)
            if not versions and not damage:
                fail(f"no run {'/'.join(parts)!r} in the store")
            list_versions(versions, damage, long)
        else:
            entries = s.list_dir(parts[0], parts[1], parts[2], "/".join(parts[3:]))
            for entry in entries:
                click.echo(long_entry_line(entry) if long else entry["path"].rsplit("/", 1)[-1])


def list_versions(versions: list[dict], damage: list[dict], long: bool):
    """A run's versions, and those whose file list was lost (they cannot be read, but
    their names must not vanish); then one warning per damaged version, on stderr."""
    lost = [{"version": d["version"], "seq": d["seq"], "lost": True}
            for d in damage if d.get("manifest")]
    for v in sorted(versions + lost, key=lambda v: fs_bytes(v["version"])):  # key order
        if v.get("lost"):
            click.echo(f"{'(damaged: file list lost)':>46}  {v['version']}" if long else v["version"])
        elif long:
            click.echo(f"{v['sealed_at'][:19].replace('T', ' ')}  {v['files']:>5} files "
                       f"{human_bytes(v['logical_bytes']):>10}  {v['version']}")
        else:
            click.echo(v["version"])
    for d in damage:
        what = "its file list was lost" if d.get("manifest") else \
            f"{len(d['files'])} damaged file(s): {', '.join(sorted(d['files'])[:3])}"
        click.echo(f"ckptfs: warning: {d['project']}/{d['run']}/{d['version']} is damaged "
                   f"({what}); see `ckptfs verify` and docs/recovery.md", err=True)


@main.command()
@click.argument("store")
@click.argument("ref", metavar="PROJECT/RUN/VERSION/PATH")
def cat(store, ref):
    """Write a file of a version to standard output."""
    parts = split_ref(ref)
    if len(parts) < 4:
        fail(f"expected PROJECT/RUN/VERSION/PATH, got {ref!r}", 2)
    with open_store(store) as s:
        s.authorize(None, parts[0], "reader", "read", ref)
        s.require_version(*parts[:3])
        entry = s.entry(*parts[:3], "/".join(parts[3:]))
        if entry["type"] != "file":
            fail(f"{ref} is a {entry['type']}, not a file")
        out = sys.stdout.buffer
        for data in s.iter_file(entry):
            out.write(data)
        out.flush()


@main.command()
@click.argument("store")
@click.argument("ref", metavar="PROJECT/RUN/VERSION")
@click.argument("dest")
@click.option("--files", "patterns", multiple=True, metavar="GLOB",
              help="Restore only files whose path (or name) matches GLOB; repeatable.")
@click.option("--force", is_flag=True,
              help="Restore into a non-empty DEST, replacing the version's files there "
                   "(symlinks in DEST are replaced, never followed).")
def get(store, ref, dest, patterns, force):
    """Restore a version (or some of its files) into directory DEST, new or empty,
    checking SHA-256. Each file appears under its name only once complete."""
    project, run, version = parse_version_ref(ref)
    with open_store(store) as s:
        s.authorize(None, project, "reader", "read", ref)
        entries = s.select_entries(project, run, version, patterns)
        total = sum(e.get("size", 0) for e in entries)
        bar = progress_bar(total=total, unit="B", unit_scale=True, unit_divisor=1000, desc=ref,
                   disable=None, leave=False)
        started = time.monotonic()
        try:
            report = s.restore(project, run, version, dest, patterns, progress=bar.update,
                               force=force)
        finally:
            bar.close()
        seconds = time.monotonic() - started
    for path, message in report.damaged:
        click.echo(f"ckptfs: damaged: {path}: {message}", err=True)
    click.echo(f"restored {report.files} files, {human_bytes(report.bytes)} to {dest} "
               f"in {seconds:.1f} s, SHA-256 verified")
    if report.damaged:
        fail(f"{len(report.damaged)} file(s) could not be restored intact (see above); "
             "run `ckptfs verify` for details", EXIT_DAMAGE)


@main.command()
@click.argument("store")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def stats(store, as_json):
    """Versions, files, logical and stored bytes, dedup and compression ratios."""
    with open_store(store) as s:
        st = s.stats()
    if as_json:
        click.echo(json.dumps(st, indent=2))
        return
    rows = [
        ("projects", st["projects"]), ("runs", st["runs"]), ("versions", st["versions"]),
        ("deleted versions", st["deleted_versions"]), ("files", st["files"]),
        ("logical bytes", human_bytes(st["logical_bytes"])),
        ("unique bytes", f"{human_bytes(st['unique_bytes'])} in {st['chunks']} chunks"),
        ("stored bytes", f"{human_bytes(st['stored_bytes'])} in {st['packs']} packs "
                         f"({human_bytes(st['pack_bytes'])} on disk)"),
        ("dedup ratio", f"{st['dedup_ratio']:.2f}x"),
        ("compression ratio", f"{st['compression_ratio']:.2f}x"),
        ("overall", f"{st['total_ratio']:.2f}x (logical / on disk)"),
    ]
    for label, value in rows:
        click.echo(f"{label + ':':<20}{value}")


@main.command()
@click.argument("store")
@click.option("--signatures", is_flag=True,
              help="Also check every version's signature against the digest of its files.")
@click.option("--public-key", "public_keys", multiple=True, metavar="PEM",
              help="With --signatures: accept only signatures of this Ed25519 public key "
                   "(kept outside the store); repeatable.")
def verify(store, signatures, public_keys):
    """Re-read every chunk and re-check chunk ids and every file's SHA-256."""
    trusted = None
    if public_keys:
        if not signatures:
            raise click.UsageError("--public-key goes with --signatures")
        trusted = load_public_keys(public_keys)
    with open_store(store) as s:
        bar = progress_bar(desc="verifying", unit=" chunks", disable=None, leave=False)

        def progress(phase, done, total):
            bar.set_description(f"verifying {phase}")
            bar.total = total
            bar.n = done
            bar.refresh() if done % 64 == 0 else None

        try:
            report = s.verify(progress, signatures=signatures, trusted_keys=trusted)
        finally:
            bar.close()
    if report.leftover_packs:
        click.echo(f"note: {len(report.leftover_packs)} unfinished pack(s) left by interrupted "
                   "imports hold no version's data (a later garbage collection removes them)")
    for pack_id, problems in sorted(report.dead_damage.items()):
        click.echo(f"note: pack {pack_id:08x}: {len(problems)} damaged record(s) no version uses "
                   "any more (healed or left over; a later garbage collection drops them)")
    if report.gc_interrupted:
        click.echo("note: a garbage collection was interrupted; the store is consistent and "
                   "the next `ckptfs gc` finishes its work")
    if report.ok:
        deleted = f" ({report.deleted_versions} deleted: file lists checked)" \
            if report.deleted_versions else ""
        click.echo(f"ok: {report.packs} packs, {report.chunks} chunks, {report.versions} versions"
                   f"{deleted}, {report.files} files ({human_bytes(report.bytes)}) verified")
    for pack_id, problems in sorted(report.damaged_packs.items()):
        click.echo(f"damaged pack {pack_id:08x}: {problems[0]}"
                   + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""))
    for version in sorted(report.damaged_versions):
        click.echo(f"damaged version {version}")
    for version, path, problem in report.damaged_files:
        click.echo(f"damaged file {version}/{path}: {problem}")
    if report.signatures is not None:
        from ckptfs.cli_keys import print_signature_report
        print_signature_report(report.signatures, trusted)
    if not report.ok:
        fail(f"verify found damage: {len(report.damaged_packs)} pack(s), "
             f"{len(report.damaged_chunks)} chunk(s), {len(report.damaged_files)} file(s) in "
             f"{len(report.damaged_versions)} version(s)", EXIT_DAMAGE)
    if report.signatures is not None and not report.signatures.ok:
        fail(f"verify found {len(report.signatures.invalid)} invalid signature(s) and "
             f"{len(report.signatures.unknown_key)} by an unknown key", EXIT_DAMAGE)


@main.command("rebuild-index")
@click.argument("store")
def rebuild_index(store):
    """Recreate the index from the packs and the journal alone, salvaging around damage
    (exit 3 if some versions or files are damaged: they are named)."""
    with Store.open(store, for_rebuild=True) as s:
        summary = s.rebuild_index()
    if summary["moved_aside"]:
        click.echo(f"note: the old index could not be opened; it was moved aside to "
                   f"{summary['moved_aside']}", err=True)
    if summary["torn_tail"]:
        click.echo(f"warning: the journal's last line is incomplete ({summary['torn_tail']} bytes "
                   "without a newline: an append cut short, or damage); it was left out, and the "
                   "next change to the store cuts it off", err=True)
    for pack_id, problems in summary["damaged_packs"]:
        click.echo(f"warning: pack {pack_id:08x}: {problems[0]}"
                   + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""), err=True)
    if summary["unfinished_packs"]:
        click.echo(f"note: {len(summary['unfinished_packs'])} unfinished pack(s) from interrupted "
                   "imports; their whole records were indexed", err=True)
    click.echo(f"index rebuilt from {summary['packs']} packs and the journal: "
               f"{summary['versions']} versions")
    from ckptfs.cli_recovery import print_version_damage
    print_version_damage(summary["damaged"])
    if summary["damaged"]:
        fail(f"{len(summary['damaged'])} version(s) are damaged (above); everything else was "
             "rebuilt: `ckptfs repair` re-stores what a source still has (docs/recovery.md)",
             EXIT_DAMAGE)


@main.command()
@click.argument("store")
@click.argument("mountpoint")
@click.option("-f", "--foreground", is_flag=True, help="Serve in the foreground (logs also to stderr).")
@click.option("--allow-other", is_flag=True, help="Let other users use the mount.")
@click.option("--seal-after", type=SECONDS, default=5.0, show_default=True, metavar="SECONDS",
              help="Quiet period after which an inbox version is sealed.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--ready-fd", type=int, hidden=True)
def mount(store, mountpoint, foreground, allow_other, seal_after, log_level, ready_fd):
    """Mount STORE at MOUNTPOINT; returns once mounted and serves in the background."""
    from ckptfs.fs import mounts
    from ckptfs.spool import daemon as spool_daemon
    Store.open(store).close()  # fail here, with a clear message, if it is not a store
    if mounts.detach_dead_mount_of(store, mountpoint):
        click.echo(f"detached the dead mount at {mountpoint} (a previous daemon for this "
                   "store died; what it left in the inbox is held: see `ckptfs status`)")
    mounts.check_mountpoint(mountpoint)
    check_store_outside(store, mountpoint)
    spool_daemon.check_free(store)
    if foreground:
        # pyfuse3 and trio: only in the process that serves
        from ckptfs.fs import daemon
        # Started by a background `mount` (ready_fd): the log file only, since the
        # parent stops reading our stderr once the mount is up.
        log_path = daemon.setup_logging(store, log_level, foreground=ready_fd is None)
        try:
            daemon.serve(store, mountpoint, allow_other=allow_other, seal_after=seal_after,
                         ready_fd=ready_fd)
        except RuntimeError as e:  # pyfuse3.init: the kernel refused the mount
            fail(f"cannot mount {mountpoint}: {e} (see {log_path})")
        return
    start_background_mount(store, mountpoint, allow_other, seal_after, log_level)


def check_store_outside(store: str, mountpoint: str):
    """A mount over the store, or inside it, would hide the store's files from its own
    daemon, which would then wait on itself for ever."""
    store_path, mount_path = os.path.realpath(store), os.path.realpath(mountpoint)
    common = os.path.commonpath([store_path, mount_path])
    if common == mount_path:
        fail(f"cannot mount over {mountpoint}: the store {store} is inside it "
             "(choose a mount point outside the store's directory)")
    if common == store_path:
        fail(f"cannot mount at {mountpoint}: it is inside the store {store} "
             "(choose a mount point outside the store's directory)")


def start_background_mount(store, mountpoint, allow_other, seal_after, log_level):
    """Start `mount -f` in a new session and wait until it says the mount is up."""
    import subprocess
    read_end, write_end = os.pipe()
    args = [sys.executable, "-m", "ckptfs", "mount", "-f", store, mountpoint,
            "--seal-after", str(seal_after), "--log-level", log_level, "--ready-fd", str(write_end)]
    if allow_other:
        args.append("--allow-other")
    log_path = os.path.join(store, "logs", "mount.log")
    make_private_dirs(os.path.dirname(log_path))
    with open(os.devnull, "rb") as devnull, \
            open(log_path, "ab", opener=private_opener) as log_file:
        child = subprocess.Popen(args, stdin=devnull, stdout=log_file, stderr=subprocess.PIPE,
                                 pass_fds=(write_end,), start_new_session=True)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as ready:
        answer = ready.read(3)
    if answer == b"ok\n":
        child.stderr.close()
        click.echo(f"mounted {store} at {mountpoint} (daemon pid {child.pid}, log {log_path})")
        return
    errors = child.stderr.read().decode(errors="replace").strip().splitlines()
    child.wait()
    fail(errors[-1].removeprefix("ckptfs: error: ") if errors else
         f"the mount daemon exited with status {child.returncode}; see {log_path}")


@main.command()
@click.argument("mountpoint")
def umount(mountpoint):
    """Unmount a ckptfs mount (the daemon finishes in-flight work and exits); a mount
    left dead by a daemon that died is detached."""
    import subprocess
    from ckptfs.fs import mounts
    if mounts.is_dead(mountpoint):
        store = getattr(mounts.entry_at(mountpoint), "store", None)
        why = mounts.detach(mountpoint)
        if why:
            fail(f"cannot detach the dead mount at {mountpoint}: {why}")
        click.echo(f"detached the dead mount at {mountpoint} (its daemon had died)"
                   + (f"; mount {store} again to go on" if store else ""))
        return
    if not os.path.ismount(mountpoint):
        fail(f"{mountpoint} is not mounted")
    proc = subprocess.run(["fusermount3", "-u", mountpoint], capture_output=True, text=True)
    if proc.returncode != 0:
        fail(f"cannot unmount {mountpoint}: {proc.stderr.strip() or 'fusermount3 failed'}")
    click.echo(f"unmounted {mountpoint}")


def serving_daemon(store: str) -> dict | None:
    """What the mount daemon serving STORE recorded (pid, mountpoint), if one runs: the
    holder of its lock (a pid file could name a pid the system has given to another)."""
    from ckptfs.spool import daemon as spool_daemon
    return spool_daemon.serving(store)


@main.command()
@click.argument("store")
@click.argument("ref", metavar="PROJECT/RUN[/PATH]")
@click.option("--timeout", type=SECONDS, default=3600, show_default=True, metavar="SECONDS",
              help="How long to wait for a running mount daemon to seal it.")
def seal(store, ref, timeout):
    """Seal what waits in the inbox now: the unit at PATH in the run directory (a
    checkpoint directory or file, a folder), or every unit of the run. Through the
    mount daemon when one runs; else here."""
    project, run, path = parse_inbox_ref(ref)
    with open_store(store) as s:
        s.authorize(None, project, "writer", "seal versions", ref)
        from ckptfs.spool import daemon as spool_daemon
        from ckptfs.spool.seal_requests import nothing_waits
        why = nothing_waits(s, project, run, path)
        if why and not path:  # a whole run: nothing left to seal is what was asked
            click.echo(f"{why}: everything written there is sealed")
            return
        if why:
            fail(why)
        lock, holder = spool_daemon.try_acquire(s.path, spool_daemon.SEAL)
        if lock is not None:  # no daemon, and none starts meanwhile: the same seal, here
            with lock:
                seal_here(s, project, run, path, ref)
            return
        if holder.get("role") != spool_daemon.DAEMON:
            fail(spool_daemon.busy_message(store, holder))
        start_seq = s.applied_seq()
    # A daemon serves this store: hand it the request and wait for the outcome.
    from ckptfs.spool.seal_requests import request_seal, wait_for_seal
    request_seal(store, project, run, path)
    outcome = wait_for_seal(store, project, run, path, start_seq, timeout)
    if outcome.startswith("sealed"):
        click.echo(outcome)
    else:
        fail(outcome)


def seal_here(s: Store, project: str, run: str, path: str, ref: str):
    from ckptfs.fs.offline import seal_offline
    sealed, errors = seal_offline(s, project, run, path)
    for line in sealed:
        click.echo(line)
    if errors:
        fail(errors[0])
    if not sealed:
        fail(f"nothing of {ref} waits in the inbox")


def parse_inbox_ref(ref: str) -> tuple[str, str, str]:
    """PROJECT/RUN[/PATH]: a run of the inbox, and a path in its directory ("" for all)."""
    pieces = ref.strip("/").split("/")
    if len(pieces) < 2:
        fail(f"expected PROJECT/RUN[/PATH], got {ref!r}")
    project, run = parse_version_ref("/".join(pieces[:2]), parts=2)
    return project, run, "/".join(pieces[2:])


def store_status_line(store: str) -> str:
    from ckptfs.spool import daemon as spool_daemon
    serving = serving_daemon(store)
    if serving:
        return (f"store {store}: mounted at {serving.get('mountpoint')} by daemon pid "
                f"{serving.get('pid')}")
    if spool_daemon.last_daemon_died(store):
        return (f"store {store}: not mounted; its last daemon died (what it left in the "
                "inbox is held until written again or sealed with `ckptfs seal`)")
    return f"store {store}: not mounted"


@main.command()
@click.argument("target", metavar="MOUNTPOINT|STORE")
def status(target):
    """Pending inbox units, ingest progress and counters."""
    from ckptfs.fs import mounts
    if mounts.is_dead(target):
        store = getattr(mounts.entry_at(target), "store", None) or "STORE"
        fail(f"{target}: the mount daemon died; recover with `ckptfs umount {target}` then "
             f"`ckptfs mount {store} {target}` (units it left wait, held, in the inbox)")
    stats_path = os.path.join(target, ".ckptfs", "stats.json")
    if os.path.isfile(stats_path):
        with open(stats_path) as f:
            st = json.load(f)
        click.echo(f"mounted: {st['versions']} versions, {st['versions_sealed']} sealed since "
                   f"mount, {st['seal_failures']} seal failures, {st['read_errors']} read errors")
        pending = st["pending_inbox_versions"]
    else:
        from ckptfs.spool.seal_requests import spooled_units
        with open_store(target) as s:
            pending = spooled_units(s)
        click.echo(store_status_line(target))
        for dead in mounts.dead_mounts_of(target):
            click.echo(f"a dead mount of it is left at {dead}: run `ckptfs umount {dead}`")
    if not pending:
        click.echo("nothing waits in the inbox")
    for item in pending:
        age = f", {item['age_seconds']:.0f} s" if item.get("age_seconds") is not None else ""
        kind = f" [{item['kind']}]" if item.get("kind") and item["kind"] != "checkpoint" else ""
        line = f"  {item['version']}{kind}: {item['state']}{age}"
        click.echo(line + (f" ({item['error']})" if item.get("error") else ""))


from ckptfs import (cli_access, cli_audit, cli_export, cli_keys, cli_meta,  # noqa: E402,F401
                    cli_recovery, cli_retention)  # (register their commands)

if __name__ == "__main__":
    main()

