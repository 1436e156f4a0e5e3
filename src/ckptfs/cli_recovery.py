"""`ckptfs repair` and the damage reports of rebuild-index (docs/recovery.md)."""
import click

from ckptfs.cli import EXIT_DAMAGE, fail, main, open_store


def print_version_damage(damage: list[dict]):
    for d in damage:
        name = f"{d['project']}/{d['run']}/{d['version']}"
        if d.get("manifest"):
            click.echo(f"damaged version {name}: {d['manifest']}")
        for path, problem in sorted(d["files"].items()):
            click.echo(f"damaged file {name}/{path}: {problem}")


@main.command()
@click.argument("store")
@click.option("--from", "sources", multiple=True, metavar="DIR",
              help="A directory holding original files (or an export) with the damaged "
                   "data; repeatable.")
@click.option("--dry-run", is_flag=True, help="Say what would be restored and lost; change nothing.")
def repair(store, sources, dry_run):
    """Verify, then re-store damaged chunks from intact copies in the store or from
    --from directories; drop the records nothing can replace, naming the files that
    stay damaged (an import of the original files heals them later)."""
    with open_store(store) as s:
        s.authorize(None, "*", "admin", "repair the store", None)
        report = s.repair(sources, dry_run=dry_run)
    verb = "would restore" if dry_run else "restored"
    click.echo(f"{verb} {len(report.restored)} chunk(s)"
               + (f" into pack {report.pack_id:08x}" if report.pack_id is not None else ""))
    for chunk_hex, where in sorted(report.restored.items()):
        click.echo(f"  chunk {chunk_hex[:16]} from {where}")
    if report.healed_with_base:
        click.echo(f"{len(report.healed_with_base)} delta chunk(s) "
                   f"{'would be' if dry_run else 'are'} whole again with their base")
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
    for chunk_hex, problem in sorted(report.lost.items()):
        click.echo(f"{'would drop' if dry_run else 'dropped'} lost chunk {chunk_hex[:16]}: {problem}")
    for version, path, problem in report.damaged_files:
        where = version if path.startswith("(") else f"{version}/{path}"  # "(file list)"
        click.echo(f"lost: {where}: {problem}")
    if report.damaged_files or report.lost:
        fail(f"{len(report.damaged_files)} file(s) or file list(s) stay damaged (listed above): "
             "import the original files again to heal them, or delete the versions", EXIT_DAMAGE)
    if dry_run and report.restored:
        fail("dry run: nothing was changed", EXIT_DAMAGE)
    click.echo("the store is whole" if not dry_run else "dry run: nothing to repair")
