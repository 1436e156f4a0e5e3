"""The read-only tree (projects/, sidecars, aliases, .ckptfs/) through the FUSE
operations, in-process: what `ls`, `stat`, `cat`, `readlink` and `getfattr` ask of a
sealed version, and the errno of everything the tree refuses. The same things through a
kernel mount and real tools: tests/mount/test_mount_read.py."""
import errno
import json
import os

import pyfuse3
import pytest

from tests.fs.driver import errno_of, local_bytes, sha256
from tests.helpers.samples import tree_snapshot

pytestmark = pytest.mark.trio

VERSION = "projects/p/r/v1"
WRITE_BITS = 0o222


def source_files(src: str) -> dict:
    """{relative path: bytes} of the regular files of the source."""
    return {path: info[3] for path, info in tree_snapshot(src).items() if info[0] == "file"}


async def test_the_root_shows_projects_the_inbox_and_the_control_directory(fs):
    assert sorted(await fs.listdir("")) == [".ckptfs", "inbox", "projects"]
    assert await fs.listdir("projects") == ["p"]
    assert await fs.listdir("projects/p") == ["r"]


async def test_a_run_lists_its_versions_sidecars_run_json_and_latest(fs):
    assert sorted(await fs.listdir("projects/p/r")) == ["latest", "run.json", "v1", "v1.json"]
    assert await fs.ops.readlink(await fs.ino("projects/p/r/latest"), fs.ctx) == b"v1"
    run = json.loads(await fs.read("projects/p/r/run.json"))
    assert [v["version"] for v in run["versions"]] == ["v1"]


async def test_a_sealed_version_lists_what_its_source_holds(fs, sealed_store):
    src = sealed_store[1]
    assert sorted(await fs.listdir(VERSION)) == sorted(os.listdir(src))
    assert await fs.listdir(f"{VERSION}/tokenizer") == ["vocab.txt"]
    link = await fs.ino(f"{VERSION}/latest.safetensors")
    assert await fs.ops.readlink(link, fs.ctx) == os.fsencode(os.readlink(f"{src}/latest.safetensors"))


async def test_every_sealed_file_reads_back_with_the_sha256_of_its_source(fs, sealed_store):
    for path, data in source_files(sealed_store[1]).items():
        read = await fs.read(f"{VERSION}/{path}")
        assert sha256(read) == sha256(data), path
        assert read == data, path
        recorded = await fs.getxattr(f"{VERSION}/{path}", b"user.ckptfs.sha256")
        assert recorded == sha256(data).encode(), path


async def test_reads_at_any_offset_and_past_the_end_match_the_source(fs, sealed_store):
    data = local_bytes(os.path.join(sealed_store[1], "optimizer.pt"))
    info = await fs.ops.open(await fs.ino(f"{VERSION}/optimizer.pt"), os.O_RDONLY, fs.ctx)
    try:
        for offset, size in ((0, 1), (4095, 2), (65_537, 100_000), (len(data) - 10, 4096),
                             (len(data), 4096), (len(data) + 1, 10)):
            assert await fs.ops.read(info.fh, offset, size) == data[offset:offset + size], offset
    finally:
        await fs.ops.release(info.fh)


async def test_attributes_of_a_sealed_file_are_its_sources_without_write_bits(fs, sealed_store):
    src = os.path.join(sealed_store[1], "config.json")
    st = os.stat(src)
    attributes = await fs.stat(f"{VERSION}/config.json")
    assert attributes.st_size == st.st_size
    assert attributes.st_mode == st.st_mode & ~WRITE_BITS
    assert attributes.st_mtime_ns == st.st_mtime_ns
    assert attributes.st_nlink == 1
    assert attributes.st_blocks == (st.st_size + 511) // 512
    # the kernel relies on an inode number naming one file for the daemon's life
    assert await fs.ino(f"{VERSION}/config.json") == attributes.st_ino
    assert (await fs.stat(f"{VERSION}/tokenizer")).st_mode & 0o170000 == 0o040000


async def test_the_sidecar_lists_every_file_with_its_sha256(fs, sealed_store):
    sidecar = json.loads(await fs.read("projects/p/r/v1.json"))
    assert (sidecar["project"], sidecar["run"], sidecar["version"]) == ("p", "r", "v1")
    assert {f["path"]: f["sha256"] for f in sidecar["files"]} == {
        path: sha256(data) for path, data in source_files(sealed_store[1]).items()}


async def test_stats_json_counts_the_sealed_version(fs):
    stats = json.loads(await fs.read(".ckptfs/stats.json"))
    assert stats["versions"] == 1
    assert stats["pending_inbox_versions"] == []


async def test_a_name_that_is_not_there_is_enoent(fs):
    for path in ("nosuch", "projects/q", "projects/p/r/v9", f"{VERSION}/nosuch.bin",
                 f"{VERSION}/tokenizer/nosuch"):
        assert await errno_of(fs.ino(path)) == errno.ENOENT, path
    assert await errno_of(fs.ops.getattr(10_000_000, fs.ctx)) == errno.ENOENT


async def test_a_name_over_255_bytes_is_enametoolong(fs, caplog):
    projects = await fs.ino("projects")
    assert await errno_of(fs.ops.lookup(projects, b"x" * 256, fs.ctx)) == errno.ENAMETOOLONG
    assert "the name is 256 bytes long; the limit is 255 bytes" in caplog.text
    assert await errno_of(fs.ops.lookup(projects, b"x" * 255, fs.ctx)) == errno.ENOENT


def change_calls(fs, version: int, file: int):
    """Every call that changes something, aimed at projects/ (name: call)."""
    ctx = fs.ctx
    return {
        "create": fs.ops.create(version, b"new", 0o644, os.O_WRONLY | os.O_CREAT, ctx),
        "mkdir": fs.ops.mkdir(version, b"new", 0o755, ctx),
        "unlink": fs.ops.unlink(version, b"config.json", ctx),
        "rmdir": fs.ops.rmdir(version, b"tokenizer", ctx),
        "rename": fs.ops.rename(version, b"config.json", version, b"moved.json", 0, ctx),
        "symlink": fs.ops.symlink(version, b"link", b"config.json", ctx),
        "open for writing": fs.ops.open(file, os.O_WRONLY, ctx),
        "truncate": fs.ops.open(file, os.O_RDONLY | os.O_TRUNC, ctx),
        "setxattr": fs.ops.setxattr(file, b"user.note", b"x", ctx),
        "mknod": fs.ops.mknod(version, b"fifo", 0o10644, 0, ctx),
        "link": fs.ops.link(file, version, b"hard", ctx),
    }


@pytest.mark.parametrize("call", ["create", "mkdir", "unlink", "rmdir", "rename", "symlink",
                                  "open for writing", "truncate", "setxattr", "mknod", "link"])
async def test_every_change_under_projects_is_erofs(fs, sealed_store, call):
    version, file = await fs.ino(VERSION), await fs.ino(f"{VERSION}/config.json")
    calls = change_calls(fs, version, file)
    for name, other in calls.items():
        if name != call:
            other.close()  # never awaited: only the call under test is made
    assert await errno_of(calls[call]) == errno.EROFS
    assert sorted(await fs.listdir(VERSION)) == sorted(os.listdir(sealed_store[1]))


async def test_a_sealed_file_opened_for_reading_refuses_writes(fs):
    info = await fs.ops.open(await fs.ino(f"{VERSION}/config.json"), os.O_RDONLY, fs.ctx)
    try:
        assert await errno_of(fs.ops.write(info.fh, 0, b"x")) == errno.EROFS
    finally:
        await fs.ops.release(info.fh)


async def test_labels_and_acls_are_not_supported_and_other_attributes_are_absent(fs):
    for name in (b"security.selinux", b"system.posix_acl_access", b"trusted.x"):
        assert await errno_of(fs.getxattr(f"{VERSION}/config.json", name)) == errno.ENOTSUP
    assert await errno_of(fs.getxattr(f"{VERSION}/config.json", b"user.other")) == \
        pyfuse3.ENOATTR
    assert await errno_of(fs.getxattr(f"{VERSION}/tokenizer", b"user.ckptfs.sha256")) == \
        pyfuse3.ENOATTR
    assert await fs.ops.listxattr(await fs.ino(f"{VERSION}/config.json"), fs.ctx) == \
        [b"user.ckptfs.sha256"]


async def test_a_directory_is_not_a_file_and_a_file_not_a_directory(fs):
    assert await errno_of(fs.ops.open(await fs.ino(f"{VERSION}/tokenizer"), os.O_RDONLY,
                                      fs.ctx)) == errno.EISDIR
    assert await errno_of(fs.ops.opendir(await fs.ino(f"{VERSION}/config.json"), fs.ctx)) == \
        errno.ENOTDIR
    assert await errno_of(fs.ops.readlink(await fs.ino(f"{VERSION}/config.json"), fs.ctx)) == \
        errno.EINVAL


async def test_statfs_says_names_are_up_to_255_bytes(fs):
    assert (await fs.ops.statfs(fs.ctx)).f_namemax == 255


async def test_ln_s_in_a_run_sets_an_alias_and_a_taken_name_is_eexist(fs, daemon):
    await fs.symlink("projects/p/r/production", "v1")
    assert await fs.ops.readlink(await fs.ino("projects/p/r/production"), fs.ctx) == b"v1"
    assert daemon.store.aliases("p", "r")["production"] == "v1"
    assert await errno_of(fs.symlink("projects/p/r/production", "v1")) == errno.EEXIST
    assert await errno_of(fs.symlink("projects/p/r/elsewhere", "../q/v1")) == errno.EINVAL
    await fs.unlink("projects/p/r/production")
    assert await errno_of(fs.ino("projects/p/r/production")) == errno.ENOENT
