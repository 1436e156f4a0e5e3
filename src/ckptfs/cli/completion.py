"""`ckptfs completion bash|zsh|fish`: the shell's completion script, click's own.

The script calls `ckptfs` back with `_CKPTFS_COMPLETE=<shell>_complete` and the words
typed so far; click (in the command group's `main`) answers with the commands, options
and choices that fit, and a directory for a STORE argument (default_store.py). So the
completions follow the installed commands: nothing here lists them. docs/cli.md says how
to install the script.
"""
import click

from ckptfs.cli._common import examples

PROG_NAME = "ckptfs"
COMPLETE_VAR = "_CKPTFS_COMPLETE"  # what click derives from the program's name
SHELLS = ("bash", "zsh", "fish")


@click.command(epilog=examples(
    'eval "$(ckptfs completion bash)"           # in ~/.bashrc',
    'eval "$(ckptfs completion zsh)"            # in ~/.zshrc, after compinit',
    "ckptfs completion fish > ~/.config/fish/completions/ckptfs.fish"))
@click.argument("shell", type=click.Choice(SHELLS))
@click.pass_context
def completion(ctx, shell):
    """Print the script that makes SHELL complete ckptfs commands, options and
    choices (STORE as a directory). Load it from the shell's start-up file."""
    from click.shell_completion import get_completion_class
    complete = get_completion_class(shell)(ctx.find_root().command, {}, PROG_NAME, COMPLETE_VAR)
    click.echo(complete.source())


COMMANDS = (completion,)
