"""Who a request comes from: the groups of the calling process count only if the process
is the caller's. Access control itself: tests/store/test_access.py."""
import os
import shutil

import pytest

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
