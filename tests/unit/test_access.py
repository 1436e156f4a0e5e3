"""Access control (issue 6): roles per project, enforced by the mount daemon and the CLI,
refusals journaled. The mount tests share one store made with `init --shared` by root and
mounted with --allow-other; other users are existing accounts (nobody 65534, group
users 100, daemon 1), reached with `setpriv` (real tools) or a forked child that drops
its ids (the CLI: the interpreter under /root is out of their reach). The machine's user
database is not changed."""
import os
import shutil

import pytest
import tqdm  # noqa: F401,E402

# Imported lazily by the CLI (export, progress bars): the forked child of `cli_as_user`, as
# nobody, cannot read Python's own files under /root, so they are imported here first.
import ckptfs.meta.export  # noqa: F401,E402
from ckptfs.store.access import process_actor, request_actor
from tests.helpers.access import NOBODY

pytestmark = pytest.mark.skipif(shutil.which("setpriv") is None or os.getuid() != 0,
                                reason="needs root and setpriv (util-linux)")


def test_request_actor_takes_the_groups_of_the_calling_process_only_if_it_is_theirs():
    me = request_actor(os.getuid(), os.getgid(), os.getpid())
    assert set(me["gids"]) == {os.getgid(), *os.getgroups()}
    assert me == {**process_actor(), "gids": me["gids"]}
    # A pid that is not nobody's (reused, or lying): the groups of the user database.
    other = request_actor(NOBODY, NOBODY, os.getpid())
    assert other["gids"] == [NOBODY]
    gone = request_actor(1, 1, 2 ** 22 + 12345)
    assert 1 in gone["gids"]
