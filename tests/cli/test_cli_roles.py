"""Every `ckptfs` command that opens a store declares, once, the role it needs
(`ckptfs.cli._common.with_store`), or is listed below as one that takes no store of its
own; and `ckptfs import` needs writer on the project, like a seal in the mount."""
import os

import click
import pytest

# Imported lazily by `ckptfs import`: the forked child of `cli_as_user`, as nobody,
# cannot read Python's own files under /root, so they are imported here first.
import ckptfs.meta.import_export
import ckptfs.meta.seal  # noqa: F401
import numpy  # noqa: F401
import tqdm  # noqa: F401
from ckptfs.cli._common import EVERY_PROJECT, ROLES
from ckptfs.cli.app import main
from ckptfs.store import Store
from ckptfs.store.access import ALL
from ckptfs.store.access import ROLES as STORE_ROLES
from tests.helpers.access import NOBODY, cli_as_user, readable_checkpoint, refusals

# Commands with no `with_store`, and why. A new command that opens a store must declare
# its role instead of joining this list.
STORE_LESS = {
    "completion": "prints a shell's completion script; opens no store",
    "init": "makes the store (its creator becomes admin of `*`)",
    "mount": "only checks that STORE is a store; the daemon checks every request's role",
    "umount": "takes a mount point, not a store",
    "seal": "checks writer on the project itself: the store is closed while it waits for "
            "the daemon (the spool protocol's part)",
    "status": "takes a mount point (whose daemon filters what it shows) or a store's spool",
}


def leaf_commands(group: click.Group, prefix: tuple = ()):
    """(full name, command) of every command below `group`, subcommands included."""
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from leaf_commands(command, prefix + (name,))
        else:
            yield " ".join(prefix + (name,)), command


def declared_roles() -> dict:
    return {name: command.callback.store_access for name, command in leaf_commands(main)
            if getattr(command.callback, "store_access", None) is not None}


def test_every_command_declares_its_role_or_takes_no_store():
    names = {name for name, _ in leaf_commands(main)}
    declared = declared_roles()
    assert sorted(names - declared.keys() - STORE_LESS.keys()) == []
    assert sorted(declared.keys() & STORE_LESS.keys()) == []
    assert sorted(STORE_LESS.keys() - names) == []   # no stale entry
    assert all(access.role in STORE_ROLES for access in declared.values())
    assert (ROLES, EVERY_PROJECT) == (STORE_ROLES, ALL)   # _common's copies, kept light


def test_the_roles_follow_what_each_command_does():
    """docs/access.md, "The CLI": reads need reader, archiving writer, the catalog
    maintainer, access admin (some checked by the store's methods themselves)."""
    roles = {name: access.role for name, access in declared_roles().items()}
    by_role = {role: sorted(n for n, r in roles.items() if r == role) for role in STORE_ROLES}
    assert by_role["writer"] == ["copy", "import"]
    assert by_role["maintainer"] == ["config set", "config unset", "delete", "gc",
                                     "retention clear", "retention set", "schema clear",
                                     "schema set", "tag", "untag"]
    assert by_role["admin"] == ["access enforce", "access grant", "access revoke",
                                "key generate", "key set", "key unset", "repair"]
    assert {"ls", "cat", "get", "export", "show", "find", "log", "lineage", "tags",
            "config show", "schema show", "access show", "retention show", "stats",
            "verify", "audit", "key show"} <= set(by_role["reader"])


def versions_of(store: str) -> list[str]:
    with Store.open(store) as s:
        return [v["version"] for v in s.versions("vision", "r")]


@pytest.mark.skipif(os.getuid() != 0,
                    reason="needs root (to act as another user)")
def test_import_needs_writer_on_the_project(open_store):  # noqa: F811  (the fixture of test_access)
    src = readable_checkpoint(os.path.join(os.path.dirname(open_store), "src"), step=2)
    code, out = cli_as_user("import", open_store, src, "vision/r/v2")
    assert (code, out) == (1, (
        "ckptfs: error: user nobody (uid 65534) may not archive versions in project vision: "
        "needs role writer, has reader; ask an admin: ckptfs access grant "
        f"{open_store} vision writer user:nobody\n"))
    assert versions_of(open_store) == ["v1"]
    assert [(e["operation"], e["path"], e["role"]) for e in refusals(open_store, NOBODY)] \
        == [("archive versions", "vision/r/v2", "writer")]

    with Store.open(open_store) as s:
        s.grant("vision", "user:nobody", "writer")
    code, out = cli_as_user("import", open_store, src, "vision/r/v2")
    assert code == 0, out
    assert out.startswith("imported vision/r/v2: ")
    assert versions_of(open_store) == ["v1", "v2"]
