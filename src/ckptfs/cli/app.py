"""The `ckptfs` command group: every command of the topic modules, registered here, and
the mapping of errors to one line on stderr and an exit code.

Exit codes (also in `ckptfs --help`, from EXIT_CODES): 0 success; 1 an error
(message on stderr); 2 a usage error; 3 damage found (integrity errors reading data in
cat/get/export/copy, or verify, audit verify, rebuild-index, repair --dry-run found
damage); 130 interrupted. Every error is one line on stderr; an
unexpected exception (a bug) too, as "internal error (...)", with the traceback only
when CKPTFS_DEBUG=1.
"""
import errno
import os
import sys

import click

# `import ckptfs.cli.X`, not `from ckptfs.cli import X`: this module depends on the topic
# modules, never on the package (whose `main` comes from here).
import ckptfs.cli.access
import ckptfs.cli.audit
import ckptfs.cli.completion
import ckptfs.cli.copy
import ckptfs.cli.diff
import ckptfs.cli.export
import ckptfs.cli.keys
import ckptfs.cli.meta
import ckptfs.cli.mount
import ckptfs.cli.recovery
import ckptfs.cli.retention
import ckptfs.cli.serve
import ckptfs.cli.stores
import ckptfs.cli.versions
from ckptfs.cli._common import EXIT_DAMAGE, examples, fail
from ckptfs.cli.default_store import accept_default_store

TOPICS = (ckptfs.cli.stores, ckptfs.cli.versions, ckptfs.cli.export, ckptfs.cli.meta,
          ckptfs.cli.access, ckptfs.cli.audit, ckptfs.cli.keys, ckptfs.cli.retention,
          ckptfs.cli.recovery, ckptfs.cli.mount, ckptfs.cli.copy, ckptfs.cli.diff,
          ckptfs.cli.completion, ckptfs.cli.serve)


class CkptfsGroup(click.Group):
    """Turns errors a user can cause into one line on stderr and an exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo("ckptfs: interrupted", err=True)
            sys.exit(130)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise  # click prints these itself (usage errors: exit code 2)
        except Exception as e:
            exit_for_user_error(e)
            # A bug, not a user error: still one line, never a traceback on a user's
            # terminal (CKPTFS_DEBUG=1 shows it).
            if os.environ.get("CKPTFS_DEBUG"):
                raise
            detail = " ".join(str(e).split())
            fail(f"internal error ({type(e).__name__}: {detail}); this is a bug in ckptfs: "
                 "please report it with the command that caused it (CKPTFS_DEBUG=1 shows "
                 "the traceback)")


def exit_for_user_error(e: Exception):
    """Exit with the message and code of an error a user can cause; return if `e` is
    none (a bug). The store's errors are imported here, not at start-up: a command that
    raised one has loaded the engine already."""
    from ckptfs.store.errors import IntegrityError, StoreError
    if isinstance(e, IntegrityError):
        fail(f"integrity error: {e}", EXIT_DAMAGE)
    if isinstance(e, StoreError):
        fail(str(e))
    if isinstance(e, BrokenPipeError):
        # The reader went away (e.g. `ckptfs cat … | head`): not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    if isinstance(e, OSError):
        where = f"{e.filename}: " if e.filename else ""
        if e.errno == errno.ENOSPC:
            fail(f"{where}no space left on device")
        fail(f"{where}{e.strerror or e}")


EXIT_CODES = """\b
Exit codes:
  0    success
  1    an error: one line on stderr, "ckptfs: error: ..."
  2    a usage error (a missing or malformed argument or option)
  3    damaged or tampered data: found by verify, audit verify, rebuild-index,
       repair --dry-run, or when data fails its check (cat, get, export, copy,
       import of an export)
  130  interrupted (Ctrl-C)"""

EXAMPLES = examples("ckptfs init /data/ckpts",
                    "ckptfs import /data/ckpts ./out/checkpoint-500 bert/run-42/step-500",
                    "ckptfs log /data/ckpts bert/run-42 --oneline")


@click.group(cls=CkptfsGroup, context_settings={"help_option_names": ["-h", "--help"]},
             epilog=f"{EXIT_CODES}\n\n{EXAMPLES}")
@click.version_option(package_name="ckptfs")
@click.option("--cache-dir", metavar="DIR", envvar="CKPTFS_CACHE_DIR",
              help="For a store on object storage: this machine's index, chunk cache and "
                   "spool (default: one per store under ~/.cache/ckptfs/; env "
                   "CKPTFS_CACHE_DIR).")
def main(cache_dir):
    """ckptfs: a versioned, deduplicated archive for ML checkpoints.

    STORE is a directory or s3://BUCKET/PREFIX (endpoint and credentials from
    AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION or
    AWS_PROFILE). With CKPTFS_STORE set, commands may leave STORE out. A command's
    --json prints what it shows as JSON; `ckptfs completion bash|zsh|fish` completes
    commands in a shell (docs/cli.md)."""
    if cache_dir:
        # In the environment: the mount daemon, started as a child, uses it too.
        os.environ["CKPTFS_CACHE_DIR"] = os.path.abspath(cache_dir)


for topic in TOPICS:
    for command in topic.COMMANDS:
        accept_default_store(command)
        main.add_command(command)

if __name__ == "__main__":
    main()
