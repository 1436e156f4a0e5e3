"""`ckptfs init` and `ckptfs stats`: making a store, and its figures as a whole."""
import os

import click

from ckptfs.cli._common import echo_json, examples, human_bytes, json_option, with_store


@click.command(epilog=examples(
    "ckptfs init /data/ckpts",
    "ckptfs init --shared /data/ckpts",
    "ckptfs init --encrypt --key-file /etc/ckptfs/key s3://checkpoints/team"))
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
    """Create a new, empty store in STORE (a new or empty directory, or a new prefix
    s3://BUCKET/PREFIX of a bucket that exists); you are its admin."""
    from ckptfs.store import Store
    if key_file is not None and not encrypt:
        raise click.UsageError("--key-file goes with --encrypt")
    if encrypt and key_file is None:
        raise click.UsageError("--encrypt needs --key-file PATH (where the key is kept)")
    key_existed = key_file is not None and os.path.exists(key_file)
    with Store.init(store, shared=shared, key_file=key_file) as s:
        kind = "encrypted store" if encrypt else "store"
        click.echo(f"created {kind} {s.location}" + (" (shared: roles enforced; grant them with "
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


@click.command(epilog=examples(
    "ckptfs stats /data/ckpts",
    "ckptfs stats /data/ckpts --json | jq .dedup_ratio"))
@click.argument("store")
@json_option("the figures")
@with_store("reader")  # store-wide figures, no project's content (docs/access.md)
def stats(s, store, as_json):
    """Versions, files, logical and stored bytes, dedup and compression ratios."""
    st = s.stats()
    if as_json:
        return echo_json(st)
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


COMMANDS = (init, stats)
