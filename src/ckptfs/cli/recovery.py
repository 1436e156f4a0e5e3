"""`ckptfs verify`, `rebuild-index` and `repair`: finding damage, and what can be done
about it (docs/recovery.md); the reports of damage and of signatures they print."""
import click

from ckptfs.cli._common import (EXIT_DAMAGE, echo_json, examples, fail, human_bytes, json_option,
                                load_public_keys, progress_bar, with_store)

UNSIGNED_SHOWN = 10


@click.command(epilog=examples(
    "ckptfs verify /data/ckpts",
    "ckptfs verify /data/ckpts --signatures --public-key sign.pem.pub",
    "ckptfs verify /data/ckpts --json | jq .damaged_files"))
@click.argument("store")
@click.option("--signatures", is_flag=True,
              help="Also check every version's signature against the digest of its files.")
@click.option("--public-key", "public_keys", multiple=True, metavar="PEM",
              help="With --signatures: accept only signatures of this Ed25519 public key "
                   "(kept outside the store); repeatable.")
@json_option("the report (docs/cli.md, \"JSON output\"); the exit code is the same")
@with_store("reader")  # no project's content: not restricted (docs/access.md)
def verify(s, store, signatures, public_keys, as_json):
    """Re-read every chunk and re-check chunk ids and every file's SHA-256 (exit 3 if
    anything is damaged or a signature is wrong)."""
    trusted = None
    if public_keys:
        if not signatures:
            raise click.UsageError("--public-key goes with --signatures")
        trusted = load_public_keys(public_keys)
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
    if as_json:
        echo_json(verify_json(report))
    else:
        print_verify_report(report, trusted)
    if not report.ok:
        fail(f"verify found damage: {len(report.damaged_packs)} pack(s), "
             f"{len(report.damaged_chunks)} chunk(s), {len(report.damaged_files)} file(s) in "
             f"{len(report.damaged_versions)} version(s)", EXIT_DAMAGE)
    if report.signatures is not None and not report.signatures.ok:
        fail(f"verify found {len(report.signatures.invalid)} invalid signature(s) and "
             f"{len(report.signatures.unknown_key)} by an unknown key", EXIT_DAMAGE)


def print_verify_report(report, trusted_keys):
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
        print_signature_report(report.signatures, trusted_keys)


def verify_json(report) -> dict:
    """`verify --json`: the figures, then every problem as fields (pack ids in hex, as
    the text and the pack files' names show them)."""
    signatures = report.signatures
    return {
        "ok": report.ok and (signatures is None or signatures.ok),
        "packs": report.packs, "chunks": report.chunks, "versions": report.versions,
        "deleted_versions": report.deleted_versions, "files": report.files,
        "bytes": report.bytes,
        "damaged_packs": [{"pack": f"{pack_id:08x}", "problems": problems}
                          for pack_id, problems in sorted(report.damaged_packs.items())],
        "damaged_chunks": [{"chunk": chunk, "problem": problem}
                           for chunk, problem in sorted(report.damaged_chunks.items())],
        "damaged_versions": sorted(report.damaged_versions),
        "damaged_files": [{"version": version, "path": path, "problem": problem}
                          for version, path, problem in report.damaged_files],
        "unfinished_packs": len(report.leftover_packs),
        "gc_interrupted": report.gc_interrupted,
        "signatures": None if signatures is None else {
            "ok": signatures.ok, "valid": signatures.valid, "unsigned": signatures.unsigned,
            "invalid": [{"version": name, "problem": why} for name, why in signatures.invalid],
            "unknown_key": [{"version": name, "key_id": key_id}
                            for name, key_id in signatures.unknown_key]},
    }


@click.command("rebuild-index", epilog=examples("ckptfs rebuild-index /data/ckpts"))
@click.argument("store")
@with_store("reader", for_rebuild=True)  # a derived cache: not restricted (docs/access.md)
def rebuild_index(s, store):
    """Recreate the index from the packs and the journal alone, salvaging around damage
    (exit 3 if some versions or files are damaged: they are named)."""
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
    print_version_damage(summary["damaged"])
    if summary["damaged"]:
        fail(f"{len(summary['damaged'])} version(s) are damaged (above); everything else was "
             "rebuilt: `ckptfs repair` re-stores what a source still has (docs/recovery.md)",
             EXIT_DAMAGE)



def print_version_damage(damage: list[dict]):
    for d in damage:
        name = f"{d['project']}/{d['run']}/{d['version']}"
        if d.get("manifest"):
            click.echo(f"damaged version {name}: {d['manifest']}")
        for path, problem in sorted(d["files"].items()):
            click.echo(f"damaged file {name}/{path}: {problem}")


@click.command(epilog=examples(
    "ckptfs repair /data/ckpts --dry-run",
    "ckptfs repair /data/ckpts --from ./out/checkpoint-500"))
@click.argument("store")
@click.option("--from", "sources", multiple=True, metavar="DIR",
              help="A directory holding original files (or an export) with the damaged "
                   "data; repeatable.")
@click.option("--dry-run", is_flag=True, help="Say what would be restored and lost; change nothing.")
@with_store("admin", "repair the store", project="*")
def repair(s, store, sources, dry_run):
    """Verify, then re-store damaged chunks from intact copies in the store or from
    --from directories; drop the records nothing can replace, naming the files that
    stay damaged (an import of the original files heals them later)."""
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


def print_signature_report(report, trusted_keys=None):
    """The figures of `verify --signatures`, then each problem by version."""
    from ckptfs.store.ed25519 import key_id_of
    against = ""
    if trusted_keys:
        against = " against the given public key(s) " + ", ".join(
            key_id_of(k) for k in trusted_keys)
    click.echo(f"signatures{against}: {len(report.valid)} signed and valid, "
               f"{len(report.unsigned)} unsigned, {len(report.invalid)} invalid, "
               f"{len(report.unknown_key)} by an unknown key")
    for name, why in report.invalid:
        click.echo(f"invalid signature: {name}: {why}")
    for name, key_id in report.unknown_key:
        click.echo(f"unknown key: {name}: signed by key {key_id}, which no key.set event of "
                   "the journal names (check it with --public-key)")
    for name in report.unsigned[:UNSIGNED_SHOWN]:
        click.echo(f"unsigned: {name}")
    if len(report.unsigned) > UNSIGNED_SHOWN:
        click.echo(f"unsigned: … and {len(report.unsigned) - UNSIGNED_SHOWN} more")


COMMANDS = (verify, rebuild_index, repair)
