"""The inbox's scheduler in-process: a unit is sealed when the job says so (a .seal
marker, the user.ckptfs.seal attribute) or when it is closed and quiet; what was sealed
is exactly what was written, the working view keeps it where it was written, read-only;
a seal that fails leaves the unit with an error file until it is fixed. Every wait is
on the sealer's own report (user.ckptfs.state), polled. The same through a kernel mount:
tests/mount/test_mount_inbox.py, test_mount_workview.py, test_mount_prepare.py."""
import errno
import json
import os

import pytest
import trio

from tests.fs.driver import QUIET, errno_of, local_bytes, poll, serving, sha256
from tests.helpers.samples import make_checkpoint, tree_snapshot

pytestmark = pytest.mark.trio

RUN = "inbox/p/r"
SCHEMA = {"type": "object", "required": ["lineage"], "properties": {"lineage": {
    "type": "object", "required": ["data"], "properties": {"data": {
        "type": "object", "required": ["version"],
        "properties": {"version": {"type": "string", "pattern": "^v[0-9]+$"}}}}}}}


def files_of(src: str) -> dict:
    """{relative path: sha256} of the regular files of a directory."""
    return {path: sha256(info[3]) for path, info in tree_snapshot(src).items()
            if info[0] == "file"}


@pytest.fixture
def source(tmp_path):
    """A sample checkpoint to copy into the inbox, other than the sealed v1."""
    return make_checkpoint(tmp_path / "src" / "v2", step=200, seed=1)


async def sealed_files(fs, version: str) -> dict:
    """{relative path: sha256} of the regular files of projects/<version>, read back."""
    sidecar = json.loads(await fs.read(f"projects/{version}.json"))
    out = {}
    for entry in sidecar["files"]:
        out[entry["path"]] = sha256(await fs.read(f"projects/{version}/{entry['path']}"))
    return out


async def test_a_seal_marker_seals_at_once_and_is_not_archived(fs, daemon, source):
    await fs.copy_in(source, f"{RUN}/v2")
    await fs.write(f"{RUN}/v2/.seal", b"")
    assert await fs.wait_sealed("p/r/v2") == {"state": "sealed", "version": "p/r/v2"}
    assert await sealed_files(fs, "p/r/v2") == files_of(source)
    assert sorted(await fs.listdir("projects/p/r/v2")) == sorted(os.listdir(source))
    assert ".seal" not in await fs.listdir(f"{RUN}/v2")
    # the job still finds it where it wrote it; the spool holds no copy any more
    assert "v2" in await fs.listdir(RUN)
    assert not os.path.exists(os.path.join(daemon.store_path, "spool", "inbox", "p", "r", "v2"))
    assert daemon.inbox.counters["versions_sealed"] == 1


async def test_the_seal_attribute_seals_a_version(fs, source):
    await fs.copy_in(source, f"{RUN}/v2")
    await fs.setxattr(f"{RUN}/v2", b"user.ckptfs.seal")
    await fs.wait_sealed("p/r/v2")
    assert await sealed_files(fs, "p/r/v2") == files_of(source)


async def test_sealing_the_run_directory_seals_every_unit_in_it(fs, source):
    await fs.copy_in(source, f"{RUN}/v2")
    await fs.copy_in(source, f"{RUN}/v3")
    await fs.setxattr(RUN, b"user.ckptfs.seal")
    for version in ("p/r/v2", "p/r/v3"):
        await fs.wait_sealed(version)
    assert sorted(await fs.listdir("projects/p/r")) == [
        "latest", "run.json", "v1", "v1.json", "v2", "v2.json", "v3", "v3.json"]


async def test_a_closed_version_is_sealed_when_its_quiet_period_ends(eager_fs, source):
    await eager_fs.copy_in(source, f"{RUN}/v2")  # no marker, no request: the close wakes it
    await eager_fs.wait_sealed("p/r/v2")
    assert await sealed_files(eager_fs, "p/r/v2") == files_of(source)


async def test_a_file_held_open_keeps_its_version_in_the_inbox(eager_fs):
    fs = eager_fs
    await fs.makedirs(f"{RUN}/v2")
    await fs.write(f"{RUN}/v2/config.json", b"{}")
    parent, name = await fs.parent_and_name(f"{RUN}/v2/model.safetensors")
    info, _ = await fs.ops.create(parent, name, 0o644, os.O_WRONLY | os.O_CREAT, fs.ctx)
    await fs.ops.write(info.fh, 0, b"weights")
    await fs.wait_sealer_rounds(3)  # the sealer has looked at it, and passed it by
    assert (await fs.inbox_state("p/r/v2"))["state"] != "sealed"
    assert "v2" not in await fs.listdir("projects/p/r")
    await fs.ops.release(info.fh)
    await fs.wait_sealed("p/r/v2")
    assert await fs.read("projects/p/r/v2/model.safetensors") == b"weights"


async def test_an_annotation_is_in_the_sealed_versions_metadata(fs, source):
    await fs.copy_in(source, f"{RUN}/v2")
    note = {"metrics": {"eval_loss": 0.25}, "tags": ["candidate"]}
    await fs.setxattr(f"{RUN}/v2", b"user.ckptfs.annotate", json.dumps(note).encode())
    await fs.setxattr(f"{RUN}/v2", b"user.ckptfs.seal")
    await fs.wait_sealed("p/r/v2")
    sidecar = json.loads(await fs.read("projects/p/r/v2.json"))
    assert sidecar["metrics"]["eval_loss"] == 0.25
    assert "candidate" in sidecar["tags"]
    # sealed: its metadata is final
    late = fs.setxattr(f"{RUN}/v2", b"user.ckptfs.annotate", b'{"tags": ["late"]}')
    assert await errno_of(late) == errno.EROFS


async def test_the_writer_is_the_provenance_of_what_it_wrote(fs, source):
    await fs.copy_in(source, f"{RUN}/v2")
    await fs.write(f"{RUN}/v2/.seal", b"")
    await fs.wait_sealed("p/r/v2")
    provenance = json.loads(await fs.read("projects/p/r/v2.json"))["provenance"]
    assert provenance["via"] == "mount"
    assert provenance["pid"] == os.getpid()


async def test_a_sealed_checkpoint_directory_is_read_only_where_it_was_written(fs, source):
    await fs.copy_in(source, f"{RUN}/v2")
    await fs.write(f"{RUN}/v2/.seal", b"")
    await fs.wait_sealed("p/r/v2")
    assert await fs.read(f"{RUN}/v2/config.json") == local_bytes(f"{source}/config.json")
    version = await fs.ino(f"{RUN}/v2")
    created = fs.ops.create(version, b"new", 0o644, os.O_WRONLY | os.O_CREAT, fs.ctx)
    assert await errno_of(created) == errno.EROFS
    written = fs.ops.open(await fs.ino(f"{RUN}/v2/config.json"), os.O_WRONLY, fs.ctx)
    assert await errno_of(written) == errno.EROFS
    assert await fs.getxattr(f"{RUN}/v2/config.json", b"user.ckptfs.version") == b"p/r/v2"


async def test_removing_a_sealed_checkpoint_only_hides_it_from_the_inbox(fs, source):
    await fs.copy_in(source, f"{RUN}/v2")
    await fs.write(f"{RUN}/v2/.seal", b"")
    await fs.wait_sealed("p/r/v2")
    await fs.rm_r(f"{RUN}/v2")
    assert "v2" not in await fs.listdir(RUN)
    assert await sealed_files(fs, "p/r/v2") == files_of(source)


async def test_a_seal_that_fails_keeps_the_version_with_an_error_file_until_fixed(
        fs, daemon, source):
    daemon.store.set_project_schema("p", SCHEMA)
    await fs.copy_in(source, f"{RUN}/v2")
    await fs.setxattr(f"{RUN}/v2", b"user.ckptfs.seal")
    state = await fs.wait_state("p/r/v2", lambda state: state.get("error"), "the seal to fail")
    assert "does not satisfy the schema of project p" in state["error"]
    assert "v2.error" in await fs.listdir(RUN)
    assert "lineage" in (await fs.read(f"{RUN}/v2.error")).decode()
    assert "v2" not in await fs.listdir("projects/p/r")
    # the fix, through the inbox: an annotation that satisfies the schema, then a seal
    fixed = {"lineage": {"data": {"name": "wiki", "version": "v7"}}}
    await fs.setxattr(f"{RUN}/v2", b"user.ckptfs.annotate", json.dumps(fixed).encode())
    assert "v2.error" not in await fs.listdir(RUN)  # a change clears it
    await fs.setxattr(f"{RUN}/v2", b"user.ckptfs.seal")
    await fs.wait_sealed("p/r/v2")
    assert json.loads(await fs.read("projects/p/r/v2.json"))["lineage"]["data"]["version"] == "v7"


async def test_the_kernel_is_told_to_forget_the_sealed_path(fs, kernel, source):
    await fs.copy_in(source, f"{RUN}/v2")
    await fs.write(f"{RUN}/v2/.seal", b"")
    await fs.wait_sealed("p/r/v2")
    # the job's next lookup of inbox/p/r/v2 must find the sealed version, not the cache
    run = await fs.ino(RUN)

    async def forgotten():
        return (run, "v2") in kernel.invalidated
    await poll(forgotten, "the kernel to be told")


async def test_a_checkpoint_file_written_again_is_its_next_version(fs):
    await fs.makedirs(RUN)
    await fs.write(f"{RUN}/last.ckpt", b"epoch 1")
    await fs.setxattr(f"{RUN}/last.ckpt", b"user.ckptfs.seal")
    await fs.wait_sealed("p/r/last.ckpt")
    assert await fs.getxattr(f"{RUN}/last.ckpt", b"user.ckptfs.version") == b"p/r/last"
    # A seal asked for before the sealer has done its bookkeeping of the last one is
    # lost (the unit's old state, popped when that ends, carried the request): wait.
    await fs.wait_versions_sealed(1)
    await fs.write(f"{RUN}/last.ckpt", b"epoch 2")  # O_TRUNC over a sealed file: fine
    assert (await fs.inbox_state("p/r/last.ckpt"))["state"] != "sealed"
    await fs.setxattr(f"{RUN}/last.ckpt", b"user.ckptfs.seal")
    await fs.wait_sealed("p/r/last.ckpt")
    assert await fs.read("projects/p/r/last/last.ckpt") == b"epoch 1"
    assert await fs.read("projects/p/r/last~2/last.ckpt") == b"epoch 2"
    assert await fs.read(f"{RUN}/last.ckpt") == b"epoch 2"
    await fs.unlink(f"{RUN}/last.ckpt")
    assert "last.ckpt" not in await fs.listdir(RUN)  # hidden: the older one does not show


async def test_a_seal_asked_for_while_the_last_one_finishes_is_not_lost(fs):
    """The job writes the file again and asks for its seal the moment the last seal's
    spool copy is gone, before the sealer has done its bookkeeping of that seal: the
    request passes to the new content (it was dropped with the old state, and the new
    version then waited for its quiet period: here an hour). Several rounds, since the
    window is short."""
    await fs.makedirs(RUN)
    for epoch in range(1, 9):
        await fs.write(f"{RUN}/last.ckpt", b"epoch %d" % epoch)
        await fs.setxattr(f"{RUN}/last.ckpt", b"user.ckptfs.seal")
        await fs.wait_sealed("p/r/last.ckpt")
    await fs.wait_versions_sealed(8)
    assert await fs.read("projects/p/r/last~8/last.ckpt") == b"epoch 8"


async def test_a_checkpoint_removed_before_its_seal_is_sealed_first(fs, source):
    """A job rotating its checkpoints faster than the quiet period loses none."""
    await fs.copy_in(source, f"{RUN}/v2")
    await fs.rm_r(f"{RUN}/v2")
    assert "v2" not in await fs.listdir(RUN)
    await fs.wait_listed("projects/p/r", "v2")
    assert await sealed_files(fs, "p/r/v2") == files_of(source)
    assert "v2" not in await fs.listdir(RUN)  # still hidden from the working view


async def test_the_version_a_process_read_is_the_parent_of_what_it_writes(fs):
    await fs.read("projects/p/r/v1/model.safetensors")  # loads the base weights
    await fs.makedirs("inbox/p/ft/step_1")
    await fs.write("inbox/p/ft/step_1/model.safetensors", b"fine-tuned")
    await fs.setxattr("inbox/p/ft/step_1", b"user.ckptfs.seal")
    await fs.wait_sealed("p/ft/step_1")
    lineage = json.loads(await fs.read("projects/p/ft/step_1.json"))["lineage"]
    assert lineage["parent"] == {"project": "p", "run": "r", "version": "v1", "source": "read"}
    assert lineage["inputs"] == [{"project": "p", "run": "r", "version": "v1"}]


async def test_a_version_left_by_a_clean_stop_is_sealed_after_the_restart(daemon, source):
    async with trio.open_nursery() as nursery:
        fs = serving(daemon, nursery, QUIET)
        await fs.copy_in(source, f"{RUN}/v2")
        nursery.cancel_scope.cancel()
    daemon.stop()
    async with trio.open_nursery() as nursery:
        fs = serving(daemon, nursery, 0.0)  # quiet since before the restart
        await fs.wait_sealed("p/r/v2")
        assert await sealed_files(fs, "p/r/v2") == files_of(source)
        nursery.cancel_scope.cancel()


async def test_after_a_crash_the_version_is_held_until_asked(daemon, source):
    """Complete files stay in the spool; a copy may have been cut short, so the version
    waits for more writes or an explicit seal."""
    async with trio.open_nursery() as nursery:
        fs = serving(daemon, nursery, QUIET)
        await fs.copy_in(source, f"{RUN}/v2")
        nursery.cancel_scope.cancel()
    daemon.stop(clean=False)
    async with trio.open_nursery() as nursery:
        fs = serving(daemon, nursery, 0.0)
        await fs.wait_sealer_rounds(3)
        assert (await fs.inbox_state("p/r/v2"))["state"] != "sealed"
        assert "v2" not in await fs.listdir("projects/p/r")
        await fs.setxattr(f"{RUN}/v2", b"user.ckptfs.seal")
        await fs.wait_sealed("p/r/v2")
        assert await sealed_files(fs, "p/r/v2") == files_of(source)
        nursery.cancel_scope.cancel()
