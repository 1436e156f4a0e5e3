"""`ckptfs key`: the Ed25519 key that signs sealed versions (docs/security.md). Changing
it needs admin on `*`: the store's signing methods check it."""
import click

from ckptfs.cli._common import examples, fail, with_store


@click.group(epilog=examples("ckptfs key generate /data/ckpts", "ckptfs key show /data/ckpts"))
def key():
    """The Ed25519 key that signs every sealed version (generate, set, show, unset)."""


@key.command("generate", epilog=examples(
    "ckptfs key generate /data/ckpts",
    "ckptfs key generate /data/ckpts --key-file /etc/ckptfs/sign.pem"))
@click.argument("store")
@click.option("--key-file", metavar="PATH",
              help="Where to write the private key (default STORE/keys/signing.pem; a disk "
                   "other than the store's protects it better).")
@with_store("admin", checked_by_store=True)
def key_generate(s, store, key_file):
    """Create a new signing key (PEM, mode 0600) and sign new versions with it."""
    result = s.generate_signing_key(key_file)
    path = result["key_file"]
    click.echo(f"generated Ed25519 key {result['key_id']}: private key {path} (mode 0600), "
               f"public key {path}.pub")
    click.echo("every version sealed from now on is signed with it; keep a copy of the .pub "
               "file off the store, for `ckptfs verify --signatures --public-key`")


@key.command("set", epilog=examples("ckptfs key set /data/ckpts /etc/ckptfs/sign.pem"))
@click.argument("store")
@click.argument("path")
@with_store("admin", checked_by_store=True)
def key_set(s, store, path):
    """Sign new versions with the Ed25519 private key in PEM file PATH."""
    result = s.set_signing_key(path)
    if result["changed"]:
        click.echo(f"signing with key {result['key_id']} ({result['key_file']})")
    else:
        click.echo(f"key {result['key_id']} was already the signing key; its file is now "
                   f"{result['key_file']}")


@key.command("show", epilog=examples(
    "ckptfs key show /data/ckpts",
    "ckptfs key show /data/ckpts --pem > sign.pem.pub"))
@click.argument("store")
@click.option("--pem", is_flag=True, help="Print the current public key as PEM.")
@with_store("reader")  # store-wide, public keys only: not restricted
def key_show(s, store, pem):
    """The signing key in use, and every public key ever set (from the journal)."""
    state = s.signing_state()
    key_file = s.signing_key_file()
    current = state["current"]
    if pem:
        if current is None:
            fail("no signing key is configured")
        from ckptfs.store.ed25519 import public_key_from_hex, public_key_pem
        public = public_key_from_hex(state["keys"][current]["public_key"])
        click.echo(public_key_pem(public).decode(), nl=False)
        return
    if current is None:
        click.echo("signing: off (new versions are sealed unsigned)")
    else:
        click.echo(f"signing: key {current}, private key file {key_file or '(none configured)'}")
    if not state["keys"]:
        click.echo("no key was ever set")
        return
    click.echo("keys ever set (id, algorithm, set at, public key):")
    for key_id, info in sorted(state["keys"].items(), key=lambda item: item[1]["seq"]):
        mark = "  (current)" if key_id == current else ""
        click.echo(f"  {key_id}  {info['algorithm']}  {info['set_at'][:19]}Z  "
                   f"{info['public_key']}{mark}")


@key.command("unset", epilog=examples("ckptfs key unset /data/ckpts"))
@click.argument("store")
@with_store("admin", checked_by_store=True)
def key_unset(s, store):
    """Stop signing new versions (signed versions keep their signatures)."""
    key_id = s.unset_signing_key()
    click.echo(f"signing stopped (it used key {key_id}); versions sealed from now on are "
               "unsigned, and those signed keep their signatures")


COMMANDS = (key,)
