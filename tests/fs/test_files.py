"""POSIX file semantics of the inbox, in-process: a file removed while open lives on
through its handle, special files are kept in the spool and never sealed, paths deeper
than the spool can hold are ENAMETOOLONG, directories count their subdirectories. The
same through a kernel mount and real tools: tests/mount/test_mount_posix.py."""
import errno
import logging
import os
import stat

import pytest

from tests.fs.driver import errno_of

pytestmark = pytest.mark.trio

VERSION = "inbox/p/r/v2"


async def test_a_file_removed_while_open_keeps_working_until_its_last_close(fs):
    await fs.makedirs(VERSION)
    parent, name = await fs.parent_and_name(f"{VERSION}/scratch.bin")
    info, attributes = await fs.ops.create(parent, name, 0o644, os.O_RDWR | os.O_CREAT, fs.ctx)
    try:
        await fs.ops.write(info.fh, 0, b"hello world")
        await fs.unlink(f"{VERSION}/scratch.bin")
        assert await errno_of(fs.ino(f"{VERSION}/scratch.bin")) == errno.ENOENT
        orphan = await fs.ops.getattr(attributes.st_ino, fs.ctx)  # fstat
        assert (orphan.st_size, orphan.st_nlink) == (11, 0)
        assert await fs.ops.read(info.fh, 6, 5) == b"world"
        # the name is free again, for a new file of its own
        await fs.write(f"{VERSION}/scratch.bin", b"new")
        assert (await fs.stat(f"{VERSION}/scratch.bin")).st_ino != attributes.st_ino
        assert await fs.ops.read(info.fh, 0, 100) == b"hello world"
    finally:
        await fs.ops.release(info.fh)
    assert await fs.read(f"{VERSION}/scratch.bin") == b"new"
    assert await errno_of(fs.ops.getattr(attributes.st_ino, fs.ctx)) == errno.ENOENT


async def test_a_file_removed_while_open_for_writing_is_not_archived(fs, caplog):
    """A temporary file (unlinked at once, written, closed) is no checkpoint to keep."""
    caplog.set_level(logging.INFO, logger="ckptfs.inbox")
    await fs.makedirs("inbox/p/r")
    parent, name = await fs.parent_and_name("inbox/p/r/tmpabc.pt")
    info, _ = await fs.ops.create(parent, name, 0o600, os.O_RDWR | os.O_CREAT, fs.ctx)
    await fs.unlink("inbox/p/r/tmpabc.pt")
    await fs.ops.write(info.fh, 0, b"x" * 100_000)
    await fs.ops.release(info.fh)
    await fs.setxattr("inbox/p/r", b"user.ckptfs.seal")
    await fs.wait_sealer_rounds(2)
    assert await fs.listdir("projects/p/r") == ["v1", "v1.json", "run.json", "latest"]
    assert "was removed while open for writing: not archived" in caplog.text


async def test_a_fifo_is_kept_where_it_was_made_and_never_sealed(fs):
    await fs.makedirs(VERSION)
    parent, _ = await fs.parent_and_name(f"{VERSION}/pipe")
    made = await fs.ops.mknod(parent, b"pipe", stat.S_IFIFO | 0o640, 0, fs.ctx)
    assert stat.S_ISFIFO(made.st_mode) and stat.S_IMODE(made.st_mode) == 0o640
    await fs.write(f"{VERSION}/model.safetensors", b"w" * 1000)
    await fs.setxattr(VERSION, b"user.ckptfs.seal")
    # (its state says "empty" then, not "sealed": the spool still holds the FIFO)
    await fs.wait_listed("projects/p/r", "v2")
    assert await fs.listdir("projects/p/r/v2") == ["model.safetensors"]
    assert stat.S_ISFIFO((await fs.stat(f"{VERSION}/pipe")).st_mode)  # still in the inbox
    await fs.unlink(f"{VERSION}/pipe")
    assert await fs.listdir(VERSION) == ["model.safetensors"]


async def test_paths_deeper_than_the_spool_holds_are_enametoolong(fs, caplog):
    """Every path the inbox takes can be spooled, staged and sealed; one deeper is
    refused with ENAMETOOLONG (never ENOENT), and the log says why."""
    path, refused = VERSION, None
    await fs.makedirs(path)
    while refused is None:
        parent = await fs.ino(path)
        refused = await errno_of(fs.ops.mkdir(parent, b"d" * 200, 0o755, fs.ctx))
        if refused is None:
            path += "/" + "d" * 200
            await fs.write(f"{path}/f", b"deep")
        assert path.count("/") < 45, "no limit reached"
    assert refused == errno.ENAMETOOLONG
    assert path.count("/") - VERSION.count("/") >= 15  # most of PATH_MAX is usable
    assert "too long for the spool" in caplog.text
    assert await fs.read(f"{path}/f") == b"deep"
    await fs.rename(f"{path}/f", f"{path}/g")
    await fs.unlink(f"{path}/g")


async def test_a_directory_counts_its_subdirectories_in_its_link_count(fs):
    await fs.makedirs(f"{VERSION}/a")
    await fs.makedirs(f"{VERSION}/b")
    await fs.write(f"{VERSION}/file", b"")
    assert (await fs.stat(VERSION)).st_nlink == 4
    assert (await fs.stat("projects/p/r/v1")).st_nlink == 3  # tokenizer/


async def test_a_new_file_gets_the_writers_mode_and_the_writer_as_owner(fs):
    await fs.makedirs(VERSION, mode=0o750)
    await fs.write(f"{VERSION}/secret.bin", b"x", mode=0o600)
    assert stat.S_IMODE((await fs.stat(VERSION)).st_mode) == 0o750
    attributes = await fs.stat(f"{VERSION}/secret.bin")
    assert stat.S_IMODE(attributes.st_mode) == 0o600
    assert (attributes.st_uid, attributes.st_gid) == (fs.ctx.uid, fs.ctx.gid)
