"""`ckptfs copy SRC DST [PATTERN]`: versions from one store into another, with their
metadata, lineage, aliases and signatures, deduplicated against DST (docs/copy.md; the
work is ckptfs.meta.copy's)."""
import click

from ckptfs.cli._common import (EXIT_DAMAGE, examples, fail, human_bytes, progress_bar,
                                with_two_stores)


@click.command(epilog=examples(
    "ckptfs copy /data/ckpts s3://checkpoints/team",
    "ckptfs copy /data/ckpts /other/store 'bert/*'",
    "ckptfs copy --dry-run /data/ckpts /other/store 'bert/run-42/step-*'"))
@click.argument("src")
@click.argument("dst")
@click.argument("pattern", required=False, default="*", metavar="[PATTERN]")
@click.option("--dry-run", is_flag=True, help="List what would be copied; copy nothing.")
@with_two_stores("writer", "src", "dst")
def copy(src_store, dst_store, src, dst, pattern, dry_run):
    """Copy the versions of store SRC whose PROJECT/RUN/VERSION matches PATTERN (a glob
    per part: `nlp`, `nlp/run-1/step-*`; default: every version) into store DST, parents
    first, deduplicating against DST. Versions DST has already are skipped; re-run a copy
    that stopped to finish it. Needs reader on each project in SRC, writer in DST."""
    from ckptfs.meta.copy import FAILED, check_roles, copy_versions, select_versions
    versions = select_versions(src_store, pattern)
    check_roles(src_store, dst_store, versions)
    total = 0 if dry_run else 2 * sum(v["logical_bytes"] for v in versions)  # read + ingest
    bar = progress_bar(total=total, unit="B", unit_scale=True, unit_divisor=1000,
                       desc="copying", disable=True if dry_run else None, leave=False)

    def say(outcome):
        bar.clear()
        click.echo(outcome.line())

    try:
        summary = copy_versions(src_store, dst_store, versions, dry_run, say, bar.update)
    finally:
        bar.close()
    click.echo(summary_line(summary, dry_run))
    failed = [o for o in summary.outcomes if o.state == FAILED]
    if failed:
        fail(f"{len(failed)} of {len(summary.outcomes)} version(s) were not copied (see "
             "above)", EXIT_DAMAGE if any(o.damaged for o in failed) else 1)


def summary_line(summary, dry_run: bool) -> str:
    from ckptfs.meta.copy import ALREADY_THERE, COPIED, FAILED, WOULD_COPY
    there, failed = summary.count(ALREADY_THERE), summary.count(FAILED)
    if dry_run:
        return (f"dry run: {summary.count(WOULD_COPY)} to copy, {there} already there, "
                f"{failed} that would fail; nothing was copied")
    rate = summary.bytes_read / summary.seconds / 1e6 if summary.seconds else 0
    return (f"copy: {summary.count(COPIED)} copied, {there} already there, {failed} failed; "
            f"{human_bytes(summary.bytes_read)} read, {human_bytes(summary.new_stored_bytes)} "
            f"newly stored in DST, {summary.seconds:.1f} s, {rate:.0f} MB/s")


COMMANDS = (copy,)
