"""The inbox's file-system calls in-process: what a job's mkdir, create, write, release,
rename and unlink do below inbox/, and the errno of what the inbox refuses (with the log
line that says why). Nothing is sealed here (the quiet period is an hour); sealing is in
test_sealer.py. The same through a kernel mount: tests/mount/test_mount_inbox.py,
tests/mount/test_mount_posix.py."""
import errno
import os

import pyfuse3
import pytest

from tests.fs.driver import errno_of, local_bytes

pytestmark = pytest.mark.trio

RUN = "inbox/p/r"


async def test_mkdir_makes_project_run_and_version_and_a_second_time_is_eexist(fs):
    await fs.makedirs(f"{RUN}/v2/sub")
    assert await fs.listdir("inbox") == ["p"]
    assert await fs.listdir(RUN) == ["v1", "v2"]  # the sealed v1 shows in the working view
    assert await fs.listdir(f"{RUN}/v2") == ["sub"]
    assert (await fs.stat(f"{RUN}/v2/sub")).st_mode & 0o170000 == 0o040000
    run = await fs.ino(RUN)
    assert await errno_of(fs.ops.mkdir(run, b"v2", 0o755, fs.ctx)) == errno.EEXIST


async def test_a_file_written_in_the_inbox_reads_back_before_its_seal(fs, daemon):
    data = os.urandom(300_000)
    await fs.makedirs(f"{RUN}/v2")
    await fs.write(f"{RUN}/v2/model.safetensors", data, mode=0o640)
    assert await fs.read(f"{RUN}/v2/model.safetensors") == data
    attributes = await fs.stat(f"{RUN}/v2/model.safetensors")
    assert (attributes.st_size, attributes.st_mode & 0o777) == (len(data), 0o640)
    spooled = os.path.join(daemon.store_path, "spool", "inbox", "p", "r", "v2", "model.safetensors")
    assert local_bytes(spooled) == data  # a real file in the spool, not memory
    assert await fs.inbox_state("p/r/v2") == {"state": "writing", "unit": "v2"}
    assert await fs.listdir("projects/p/r") == ["v1", "v1.json", "run.json", "latest"]


async def test_a_file_written_again_at_an_offset_keeps_the_rest(fs):
    await fs.makedirs(f"{RUN}/v2")
    await fs.write(f"{RUN}/v2/a.bin", b"a" * 10)
    info = await fs.ops.open(await fs.ino(f"{RUN}/v2/a.bin"), os.O_RDWR, fs.ctx)
    try:
        assert await fs.ops.write(info.fh, 4, b"BB") == 2
    finally:
        await fs.ops.release(info.fh)
    assert await fs.read(f"{RUN}/v2/a.bin") == b"aaaaBBaaaa"


@pytest.mark.parametrize("where", ["inbox", "inbox/p"])
async def test_a_file_above_the_run_directory_is_eperm_with_an_error_file(fs, where, caplog):
    await fs.makedirs(where)
    parent = await fs.ino(where)
    refused = fs.ops.create(parent, b"stray", 0o644, os.O_WRONLY | os.O_CREAT, fs.ctx)
    assert await errno_of(refused) == errno.EPERM
    assert f"refused {where}/stray: a file cannot be written directly in {where}" in caplog.text
    assert "stray.error" in await fs.listdir(where)
    assert "inbox/<project>/<run>/" in (await fs.read(f"{where}/stray.error")).decode()
    await fs.unlink(f"{where}/stray.error")
    assert "stray.error" not in await fs.listdir(where)


@pytest.mark.parametrize("level, parent", [("project", "inbox"), ("run", "inbox/p")])
@pytest.mark.parametrize("name", ["bad\x01name", "tab\there", "new\nline"])
async def test_a_directory_with_a_bad_name_is_einval_with_a_log_line(fs, level, parent, name,
                                                                     caplog):
    await fs.makedirs(parent)
    made = fs.ops.mkdir(await fs.ino(parent), os.fsencode(name), 0o755, fs.ctx)
    assert await errno_of(made) == errno.EINVAL
    assert f"{level} {name!r} must not contain control characters" in caplog.text


async def test_a_name_over_255_bytes_is_enametoolong_and_255_is_fine(fs):
    await fs.makedirs(f"{RUN}/v2")
    version = await fs.ino(f"{RUN}/v2")
    created = fs.ops.create(version, b"x" * 256, 0o644, os.O_WRONLY | os.O_CREAT, fs.ctx)
    assert await errno_of(created) == errno.ENAMETOOLONG
    assert await errno_of(fs.ops.mkdir(version, b"y" * 256, 0o755, fs.ctx)) == errno.ENAMETOOLONG
    await fs.write(f"{RUN}/v2/{'x' * 255}", b"ok")
    assert await fs.listdir(f"{RUN}/v2") == ["x" * 255]


async def test_rename_within_a_run_moves_the_file_and_across_runs_is_exdev(fs):
    await fs.makedirs(f"{RUN}/v2")
    await fs.makedirs("inbox/p/other/v2")
    await fs.write(f"{RUN}/v2/tmp-123", b"weights")
    await fs.rename(f"{RUN}/v2/tmp-123", f"{RUN}/v2/model.bin")
    assert await errno_of(fs.ino(f"{RUN}/v2/tmp-123")) == errno.ENOENT
    assert await fs.read(f"{RUN}/v2/model.bin") == b"weights"
    assert await errno_of(fs.rename(f"{RUN}/v2/model.bin", "inbox/p/other/v2/model.bin")) == \
        errno.EXDEV  # mv falls back to copy and delete
    assert await errno_of(fs.rename(f"{RUN}/v2/nosuch", f"{RUN}/v2/x")) == errno.ENOENT


async def test_rename_exchange_is_einval_and_noreplace_onto_a_name_is_eexist(fs):
    await fs.makedirs(f"{RUN}/v2")
    await fs.write(f"{RUN}/v2/a", b"a")
    await fs.write(f"{RUN}/v2/b", b"b")
    exchange = fs.rename(f"{RUN}/v2/a", f"{RUN}/v2/b", pyfuse3.RENAME_EXCHANGE)
    assert await errno_of(exchange) == errno.EINVAL
    noreplace = fs.rename(f"{RUN}/v2/a", f"{RUN}/v2/b", pyfuse3.RENAME_NOREPLACE)
    assert await errno_of(noreplace) == errno.EEXIST
    assert (await fs.read(f"{RUN}/v2/a"), await fs.read(f"{RUN}/v2/b")) == (b"a", b"b")


async def test_unlink_removes_a_spooled_file_and_a_missing_one_is_enoent(fs):
    await fs.makedirs(f"{RUN}/v2")
    await fs.write(f"{RUN}/v2/a", b"a")
    await fs.write(f"{RUN}/v2/b", b"b")
    await fs.unlink(f"{RUN}/v2/a")
    assert await fs.listdir(f"{RUN}/v2") == ["b"]
    assert await errno_of(fs.unlink(f"{RUN}/v2/a")) == errno.ENOENT
    assert await errno_of(fs.unlink(f"{RUN}/v2")) == errno.EISDIR


async def test_rmdir_of_a_directory_that_is_not_empty_is_enotempty(fs):
    await fs.makedirs(f"{RUN}/v2/sub")
    await fs.write(f"{RUN}/v2/sub/a", b"a")
    version = await fs.ino(f"{RUN}/v2")
    assert await errno_of(fs.ops.rmdir(version, b"sub", fs.ctx)) == errno.ENOTEMPTY
    await fs.unlink(f"{RUN}/v2/sub/a")
    await fs.ops.rmdir(version, b"sub", fs.ctx)
    assert await fs.listdir(f"{RUN}/v2") == []


async def test_a_hard_link_is_eperm_with_a_log_line(fs, caplog):
    await fs.makedirs(f"{RUN}/v2")
    await fs.write(f"{RUN}/v2/a", b"a")
    linked = fs.ops.link(await fs.ino(f"{RUN}/v2/a"), await fs.ino(f"{RUN}/v2"), b"b", fs.ctx)
    assert await errno_of(linked) == errno.EPERM
    assert "refused a hard link in the inbox" in caplog.text


async def test_a_symlink_in_a_version_is_kept(fs):
    await fs.makedirs(f"{RUN}/v2")
    await fs.symlink(f"{RUN}/v2/latest.bin", "model.bin")
    assert await fs.ops.readlink(await fs.ino(f"{RUN}/v2/latest.bin"), fs.ctx) == b"model.bin"


async def test_an_annotation_that_is_not_a_json_object_is_einval(fs, caplog):
    await fs.makedirs(f"{RUN}/v2")
    await fs.write(f"{RUN}/v2/a", b"a")
    for value in (b"not json", b"[1, 2]"):
        annotated = fs.setxattr(f"{RUN}/v2", b"user.ckptfs.annotate", value)
        assert await errno_of(annotated) == errno.EINVAL, value
    assert "refused annotating inbox/p/r/v2" in caplog.text
    assert await errno_of(fs.setxattr(f"{RUN}/v2", b"user.other", b"x")) == errno.ENOTSUP
    assert await errno_of(fs.setxattr(RUN, b"user.ckptfs.annotate", b"{}")) == errno.EINVAL
