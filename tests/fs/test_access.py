"""Roles checked by the daemon on every request when they are enforced (docs/access.md),
in-process: a caller is its uid and gid (the request's context), the store's grants
decide. The same through a kernel mount, with real users (setpriv):
tests/mount/test_access.py."""
import errno
import os
import subprocess

import pytest

from tests.fs.driver import Caller, Driver, errno_of, local_bytes

pytestmark = pytest.mark.trio

NOBODY = 65534


@pytest.fixture
def enforced(fs, daemon):
    """Roles enforced on the served store (root, its creator, is admin of `*`)."""
    daemon.store.set_enforcement(True)
    return daemon.store


@pytest.fixture
def nobody(fs):
    """A Driver whose calls come from a real process of user nobody (a `sleep`: the
    daemon reads who a caller is, and who wrote a version, from /proc/<pid>)."""
    if os.getuid() != 0:
        pytest.skip("needs root: a process of another user")
    process = subprocess.Popen(["sleep", "600"], user=NOBODY, group=NOBODY, extra_groups=[])
    yield Driver(fs.ops, fs.inbox, Caller(NOBODY, NOBODY, process.pid))
    process.kill()
    process.wait()


async def test_without_a_grant_a_user_sees_no_project_and_is_refused(enforced, nobody):
    assert await nobody.listdir("projects") == []
    assert await nobody.listdir("inbox") == []
    assert await errno_of(nobody.ino("projects/p")) == errno.EACCES
    assert await errno_of(nobody.ino("inbox/p")) == errno.EACCES
    refusals = [e for e in enforced.journal_entries() if e["type"] == "access.refused"]
    assert [(e["project"], e["uid"], e["operation"]) for e in refusals][:1] == \
        [("p", NOBODY, "read")]


async def test_a_reader_reads_but_cannot_archive(enforced, nobody, fs, sealed_store):
    enforced.grant("p", "user:nobody", "reader")
    assert await nobody.listdir("projects") == ["p"]
    expected = local_bytes(os.path.join(sealed_store[1], "config.json"))
    assert await nobody.read("projects/p/r/v1/config.json") == expected
    run = await nobody.ino("inbox/p/r")
    made = nobody.ops.mkdir(run, b"v2", 0o755, nobody.ctx)
    assert await errno_of(made) == errno.EACCES
    assert "v2" not in await fs.listdir("inbox/p/r")


async def test_a_writer_archives_and_the_seal_names_them(enforced, nobody):
    enforced.grant("p", "user:nobody", "writer")
    await nobody.makedirs("inbox/p/r/v2")
    await nobody.write("inbox/p/r/v2/model.safetensors", b"weights")
    attributes = await nobody.stat("inbox/p/r/v2/model.safetensors")
    assert (attributes.st_uid, attributes.st_gid) == (NOBODY, NOBODY)  # given to its writer
    await nobody.setxattr("inbox/p/r/v2", b"user.ckptfs.seal")
    await nobody.wait_sealed("p/r/v2")
    seals = [e for e in enforced.journal_entries() if e["type"] == "version.sealed"]
    assert seals[-1]["uid"] == NOBODY


async def test_a_revoke_reaches_a_caller_already_inside_the_project(enforced, nobody):
    enforced.grant("p", "user:nobody", "reader")
    version = await nobody.ino("projects/p/r/v1")  # looked up while it could
    enforced.revoke("p", "user:nobody")
    assert await errno_of(nobody.ops.opendir(version, nobody.ctx)) == errno.EACCES
    assert await errno_of(nobody.read("projects/p/r/v1/config.json")) == errno.EACCES
