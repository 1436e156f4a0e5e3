"""`ckptfs import`, `ls`, `cat` and `get`: versions in and out of a store."""
import os
import stat
import sys
import time
from datetime import datetime

import click

from ckptfs.cli._common import (
    EXIT_DAMAGE,
    complete_names,
    echo_json,
    examples,
    fail,
    human_bytes,
    json_option,
    load_public_keys,
    progress_bar,
    version_project,
    version_ref,
    with_store,
)


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


@click.command("import", epilog=examples(
    "ckptfs import /data/ckpts ./out/checkpoint-500 bert/run-42/step-500",
    "ckptfs import /other/store out.tar bert/run-42/step-500"))
@click.argument("store")
@click.argument("src_dir", metavar="SRC")
@click.argument("ref", metavar="PROJECT/RUN/VERSION")
@click.option("--public-key", "public_keys", multiple=True, metavar="PEM",
              help="An export's signature must be by this Ed25519 public key; repeatable.")
@click.option("--trust-sidecar", is_flag=True,
              help="Import an export whose sidecar disagrees with its files (step, epoch, "
                   "metrics), keeping the sidecar's values; the disagreement is recorded.")
@with_store("writer", "archive versions", project=version_project, path="ref")
def import_(s, store, src_dir, ref, public_keys, trust_sidecar):
    """Archive the checkpoint directory SRC as PROJECT/RUN/VERSION. SRC may also be what
    `ckptfs export` wrote (a directory or a tar): it is verified first (files, sidecar,
    signature), and the version keeps its metrics, lineage and provenance
    (docs/export.md)."""
    from ckptfs.meta.import_export import TrustOptions, open_import_source
    from ckptfs.store.names import parse_version_ref
    project, run, version = parse_version_ref(ref)
    trust = TrustOptions(load_public_keys(public_keys), trust_sidecar)
    is_tar = os.path.isfile(src_dir)
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


def archive_with_progress(s, source, project: str, run: str, version: str, ref: str):
    from ckptfs.meta.seal import archive_directory  # extractors, jsonschema: only here
    progress = ImportProgress(source_size(source.directory)
                              if os.path.isdir(source.directory) else 0, ref)
    try:
        return archive_directory(s, source.directory, project, run, version,
                                 progress=progress, recorded=source.recorded)
    finally:
        progress.close()


def split_ref(ref: str) -> list[str]:
    from ckptfs.store.names import validate_name
    parts = [p for p in ref.strip("/").split("/") if p] if ref else []
    for part, what in zip(parts[:3], ("project", "run", "version")):
        validate_name(part, what)
    return parts


def resolved_parts(s, ref: str) -> list[str]:
    """split_ref of PROJECT/RUN/VERSION[/PATH] with an alias in VERSION's place read as
    the version it names."""
    parts = split_ref(ref)
    if len(parts) >= 3:
        parts[2] = s.named_version(*parts[:3]) or parts[2]
    return parts


def listed_project(ref: str, **_) -> str | None:
    """The project `ls` lists in (None: it lists the projects)."""
    parts = split_ref(ref)
    return parts[0] if parts else None


def file_project(ref: str, **_) -> str:
    """The project of a PROJECT/RUN/VERSION/PATH argument (exit 2 if it is shorter)."""
    parts = split_ref(ref)
    if len(parts) < 4:
        fail(f"expected PROJECT/RUN/VERSION/PATH, got {ref!r}", 2)
    return parts[0]


def format_time_ns(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9).strftime("%Y-%m-%d %H:%M")


def long_entry_line(entry: dict) -> str:
    kind = {"dir": stat.S_IFDIR, "symlink": stat.S_IFLNK}.get(entry["type"], stat.S_IFREG)
    size = entry.get("size", 0)
    name = entry["path"].rsplit("/", 1)[-1]
    if entry["type"] == "symlink":
        name += f" -> {entry['target']}"
    return f"{stat.filemode(kind | entry['mode'])} {size:>12} {format_time_ns(entry['mtime_ns'])} {name}"


@click.command("ls", epilog=examples(
    "ckptfs ls /data/ckpts bert/run-42",
    "ckptfs ls -l /data/ckpts bert/run-42/step-500",
    "ckptfs ls /data/ckpts bert/run-42 --json | jq -r '.versions[].version'"))
@click.argument("store")
@click.argument("ref", required=False, default="", metavar="[PROJECT[/RUN[/VERSION[/PATH]]]]",
                shell_complete=complete_names(3, paths=True, every_depth=True))
@click.option("-l", "long", is_flag=True, help="Long listing: sizes, times, modes.")
@json_option("the listing (docs/cli.md, \"JSON output\")")
@with_store("reader", "read", project=listed_project, path="ref")
def ls(s, store, ref, long, as_json):
    """List projects, runs, versions, or the files of a version."""
    parts = split_ref(ref)
    if len(parts) == 0:  # the projects the caller may read
        projects = s.readable_projects(None, s.projects())
        if as_json:
            return echo_json({"projects": projects})
        for name in projects:
            click.echo(name)
    elif len(parts) == 1:
        runs = s.runs(parts[0])
        if not runs:
            fail(f"no project {parts[0]!r} in the store")
        if as_json:
            return echo_json({"project": parts[0], "runs": runs})
        for name in runs:
            click.echo(name)
    elif len(parts) == 2:
        versions = s.versions(*parts)
        damage = s.version_damage(*parts)
        if not versions and not damage:
            fail(f"no run {'/'.join(parts)!r} in the store")
        if as_json:
            return echo_json({"project": parts[0], "run": parts[1],
                              "versions": listed_versions(versions, damage)})
        list_versions(versions, damage, long)
    else:
        parts = resolved_parts(s, ref)
        entries = s.list_dir(parts[0], parts[1], parts[2], "/".join(parts[3:]))
        if as_json:
            return echo_json({"path": "/".join(parts),
                              "entries": [listed_entry(e) for e in entries]})
        for entry in entries:
            click.echo(long_entry_line(entry) if long else entry["path"].rsplit("/", 1)[-1])


def listed_versions(versions: list[dict], damage: list[dict]) -> list[dict]:
    """`ls --json` of a run: each version in key order, with its size and whether it is
    damaged (`damaged`: the file list was lost, or some files, named in `damaged_files`;
    see `ckptfs verify`)."""
    from ckptfs.store.index import fs_bytes
    damaged = {d["version"]: ("file list lost" if d.get("manifest") else "files")
               for d in damage}
    damaged_files = {d["version"]: sorted(d.get("files") or ()) for d in damage}
    listed = [{"version": v["version"], "sealed_at": v["sealed_at"], "files": v["files"],
               "logical_bytes": v["logical_bytes"], "damaged": damaged.get(v["version"]),
               "damaged_files": damaged_files.get(v["version"], [])}
              for v in versions]
    listed += [{"version": name, "sealed_at": None, "files": None, "logical_bytes": None,
                "damaged": why, "damaged_files": []}
               for name, why in damaged.items() if why == "file list lost"]
    return sorted(listed, key=lambda v: fs_bytes(v["version"]))


def listed_entry(entry: dict) -> dict:
    """`ls --json` of a directory of a version: what `ls -l` shows, as fields."""
    fields = {"name": entry["path"].rsplit("/", 1)[-1], "path": entry["path"],
              "type": entry["type"], "size": entry.get("size", 0), "mode": entry["mode"],
              "mtime_ns": entry["mtime_ns"]}
    if entry["type"] == "file":
        fields["sha256"] = entry.get("sha256")
    if entry["type"] == "symlink":
        fields["target"] = entry["target"]
    return fields


def list_versions(versions: list[dict], damage: list[dict], long: bool):
    """A run's versions, and those whose file list was lost (they cannot be read, but
    their names must not vanish); then one warning per damaged version, on stderr."""
    from ckptfs.store.index import fs_bytes
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


@click.command(epilog=examples(
    "ckptfs cat /data/ckpts bert/run-42/step-500/config.json",
    "ckptfs cat /data/ckpts bert/run-42/step-500/trainer_state.json | jq .best_metric"))
@click.argument("store")
@click.argument("ref", metavar="PROJECT/RUN/VERSION/PATH", shell_complete=complete_names(3, paths=True))
@with_store("reader", "read", project=file_project, path="ref")
def cat(s, store, ref):
    """Write a file of a version (VERSION may be an alias) to standard output."""
    parts = resolved_parts(s, ref)
    s.require_version(*parts[:3])
    entry = s.entry(*parts[:3], "/".join(parts[3:]))
    if entry["type"] != "file":
        fail(f"{ref} is a {entry['type']}, not a file")
    out = sys.stdout.buffer
    for data in s.iter_file(entry):
        out.write(data)
    out.flush()


@click.command(epilog=examples(
    "ckptfs get /data/ckpts bert/run-42/step-500 ./restored",
    "ckptfs get /data/ckpts bert/run-42/step-500 ./r --files '*.json'"))
@click.argument("store")
@click.argument("ref", metavar="PROJECT/RUN/VERSION", shell_complete=complete_names(3))
@click.argument("dest")
@click.option("--files", "patterns", multiple=True, metavar="GLOB",
              help="Restore only files whose path (or name) matches GLOB; repeatable.")
@click.option("--force", is_flag=True,
              help="Restore into a non-empty DEST, replacing the version's files there "
                   "(symlinks in DEST are replaced, never followed).")
@with_store("reader", "read", project=version_project, path="ref")
def get(s, store, ref, dest, patterns, force):
    """Restore a version (or some of its files) into directory DEST, new or empty,
    checking SHA-256. Each file appears under its name only once complete. VERSION may
    be an alias (latest, best, production, …)."""
    project, run, version = version_ref(s, ref)
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
    click.echo(f"restored {report.files} files of {project}/{run}/{version}, "
               f"{human_bytes(report.bytes)} to {dest} "
               f"in {seconds:.1f} s, SHA-256 verified")
    if report.damaged:
        fail(f"{len(report.damaged)} file(s) could not be restored intact (see above); "
             "run `ckptfs verify` for details", EXIT_DAMAGE)


COMMANDS = (import_, ls, cat, get)
