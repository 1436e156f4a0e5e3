"""`ckptfs export`: a version as files `sha256sum -c` can check anywhere, in a directory
or a tar (docs/export.md). Its counterpart is `ckptfs import` of what it wrote, which
recognises it (ckptfs.cli.versions)."""
import click

from ckptfs.cli._common import (complete_names, examples, human_bytes, progress_bar,
                                version_project, version_ref, with_store)


@click.command(epilog=examples(
    "ckptfs export /data/ckpts bert/run-42/step-500 out.tar",
    "ckptfs export /data/ckpts bert/run-42/step-500 ./out --files '*.json'"))
@click.argument("store")
@click.argument("ref", metavar="PROJECT/RUN/VERSION", shell_complete=complete_names(3))
@click.argument("dest")
@click.option("--files", "patterns", multiple=True, metavar="GLOB",
              help="Export only files whose path (or name) matches GLOB; repeatable.")
@with_store("reader", "export versions", project=version_project, path="ref")
def export(s, store, ref, dest, patterns):
    """Write a version, its sidecar and SHA256SUMS to DEST: a new or empty directory, or
    a new DEST.tar (.tar.gz, .tgz: gzip). Every file's SHA-256 is checked on the way;
    `cd DEST && sha256sum -c SHA256SUMS` checks the copy anywhere."""
    from ckptfs.meta.export import export_version
    project, run, version = version_ref(s, ref)
    entries = s.select_entries(project, run, version, patterns)
    bar = progress_bar(total=sum(e.get("size", 0) for e in entries), unit="B",
                       unit_scale=True, unit_divisor=1000, desc=ref, disable=None, leave=False)
    try:
        report = export_version(s, project, run, version, dest, patterns, progress=bar.update)
    finally:
        bar.close()
    what = "partial export" if report.partial else "export"
    rate = report.bytes / report.seconds / 1e6 if report.seconds else 0
    click.echo(f"exported {project}/{run}/{version} to {dest}: {report.files} files, {human_bytes(report.bytes)}"
               f" ({what}, SHA-256 verified), {report.seconds:.1f} s, {rate:.0f} MB/s")


COMMANDS = (export,)
