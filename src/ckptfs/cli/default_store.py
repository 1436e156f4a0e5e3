"""`CKPTFS_STORE`: the store every command works on when the command line names none
(like restic's RESTIC_REPOSITORY), local or `s3://…`.

STORE is each command's first argument. With CKPTFS_STORE set, a command line whose
first argument is not a store gets the variable's value put in front: an argument is a
store when it is an `s3://` URL or a directory holding `ckptfs.toml` (for `status`,
also a mount point; for `init`, anything given). So `ckptfs ls proj/run` lists
proj/run of $CKPTFS_STORE, and `ckptfs ls /data/other` still lists /data/other.
"""
import os

import click

from ckptfs.store.location import ENV_STORE, is_object_store

STORE_ARGUMENTS = ("store", "target", "words")  # the first argument's name, if a store
EXPLICIT_WHEN_GIVEN = ("init",)  # commands whose STORE need not exist yet


def names_a_store(value: str, command_name: str) -> bool:
    if command_name in EXPLICIT_WHEN_GIVEN:
        return True
    if is_object_store(value) or os.path.isfile(os.path.join(value, "ckptfs.toml")):
        return True
    if command_name == "status":  # MOUNTPOINT|STORE
        return os.path.ismount(value) or os.path.isdir(os.path.join(value, ".ckptfs"))
    return False


def first_argument(command: click.Command, parse, args: list[str]):
    """(the first argument's parameter, its value on this command line or None)."""
    arguments = [p for p in command.params if isinstance(p, click.Argument)]
    if not arguments or arguments[0].name not in STORE_ARGUMENTS:
        return None, None
    probe = click.Context(command, info_name=command.name, resilient_parsing=True)
    try:
        parse(probe, list(args))
    except click.ClickException:
        return arguments[0], None
    value = probe.params.get(arguments[0].name)
    if arguments[0].name == "words":  # `audit [verify] STORE`
        words = [w for w in (value or ()) if w != "verify"]
        value = words[0] if words else None
    return arguments[0], value


def with_default_store(command: click.Command, parse, args: list[str]) -> list[str]:
    store = os.environ.get(ENV_STORE)
    if not store or any(a in ("-h", "--help") for a in args):
        return args
    argument, value = first_argument(command, parse, args)
    if argument is None or (value is not None and names_a_store(value, command.name)):
        return args
    if argument.name == "words" and args and args[0] == "verify":
        return ["verify", store, *args[1:]]
    return [store, *args]


def accept_default_store(command: click.Command) -> None:
    """Let `command` (and a group's subcommands) take STORE from CKPTFS_STORE, and
    complete it in a shell as a directory."""
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            accept_default_store(sub)
        return
    complete_store_as_directory(command)
    parse = command.parse_args

    def parse_args(ctx, args):
        return parse(ctx, with_default_store(command, parse, args))
    command.parse_args = parse_args


def complete_store_as_directory(command: click.Command) -> None:
    """`ckptfs completion`: the shell offers directories for a STORE (or MOUNTPOINT|STORE)
    argument. Set here, where every command's STORE is known, rather than on each
    command's decorator."""
    arguments = [p for p in command.params if isinstance(p, click.Argument)]
    if arguments and arguments[0].name in ("store", "target"):
        arguments[0].shell_complete = complete_directory


def complete_directory(ctx, incomplete: str):
    from click.shell_completion import CompletionItem
    return [CompletionItem(incomplete, type="dir")]
