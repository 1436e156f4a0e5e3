"""Ingest behind the writer: a file written into the inbox from its start is chunked and
packed while it is written, so its seal only commits; anything else a writer does
(rewrite, truncate, hole, append, mmap, rename) falls back to the prepare at close and
seals right. Real mounts and real tools; the figures come from MOUNT/.ckptfs/stats.json
(`files_streamed`, `files_prepared`, `files_reused_at_seal`) and the store's packs."""
import hashlib
import mmap
import os
import re
import signal
import subprocess
import sys

import pytest

from tests.helpers.cli import run_cli_checked
from tests.helpers.inbox import (assert_daemon_alive, empty_version, read, stats,
                                 stats_once_counted, verify_ok, wait_sealed)
from tests.helpers.mounts import unmount
from tests.helpers.stores import new_store
from tests.helpers.waiting import wait_for

MiB = 1 << 20


def packed_bytes(store: str) -> int:
    return sum(os.path.getsize(os.path.join(d, n))
               for d, _, names in os.walk(os.path.join(store, "packs")) for n in names)


def seal_now(mnt: str, ref: str = "p/r/v1") -> str:
    open(os.path.join(mnt, "inbox", ref, ".seal"), "w").close()
    return wait_sealed(mnt, ref)


def written_and_packed(f, store: str, data: bytes, at_least: int):
    """Write `data` to the open file `f` and wait until the store's packs hold at least
    `at_least` bytes while `f` is still open (fsync: the bytes reach the daemon). The
    stream keeps up to a window of two largest chunks (8 MiB) and a pack's buffer
    (4 MiB) off the disk: `at_least` allows for both."""
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
    wait_for(lambda: packed_bytes(store) >= at_least, "the written bytes to be packed", 30)


def test_a_file_is_packed_while_it_is_written_and_its_seal_reuses_it(tmp_path, mount):
    store, mnt, version = empty_version(tmp_path, mount, "600")
    first, second = os.urandom(24 * MiB), os.urandom(9 * MiB + 12345)
    with open(f"{version}/model.bin", "wb") as f:
        written_and_packed(f, store, first, 8 * MiB)  # packed before the close
        f.write(second)
    wait_for(lambda: stats(mnt)["files_streamed"] == 1, "the stream to finish", 30)
    assert stats(mnt)["files_prepared"] == 1
    sealed = seal_now(mnt)
    assert stats_once_counted(mnt, 1)["files_reused_at_seal"] == 1
    assert read(f"{sealed}/model.bin") == first + second
    assert packed_bytes(store) < len(first + second) + MiB  # each chunk stored once
    verify_ok(store)


def rewrite_in_the_middle(f, store):
    written_and_packed(f, store, os.urandom(12 * MiB), MiB)
    f.seek(MiB)
    f.write(b"rewritten" * 1000)
    f.seek(0, os.SEEK_END)
    f.write(os.urandom(3 * MiB))


def truncate_and_go_on(f, store):
    written_and_packed(f, store, os.urandom(12 * MiB), MiB)
    f.truncate(2 * MiB)
    f.seek(6 * MiB)  # a hole where the stream had read bytes
    f.write(os.urandom(3 * MiB))


def write_past_a_hole(f, store):
    f.write(os.urandom(4 * MiB))
    f.seek(MiB, os.SEEK_CUR)
    f.write(os.urandom(4 * MiB))


def mmap_writes(f, store):
    f.truncate(8 * MiB)
    f.flush()
    with mmap.mmap(f.fileno(), 8 * MiB) as m:
        for offset in range(0, 8 * MiB, MiB):
            m[offset:offset + MiB] = os.urandom(MiB)
        m.flush()


@pytest.mark.parametrize("how", [rewrite_in_the_middle, truncate_and_go_on, write_past_a_hole,
                                 mmap_writes])
def test_a_file_not_written_in_one_go_is_prepared_at_close_and_seals_right(tmp_path, mount, how):
    store, mnt, version = empty_version(tmp_path, mount, "600")
    with open(f"{version}/model.bin", "w+b") as f:
        how(f, store)
    expected = hashlib.sha256(read(f"{version}/model.bin")).hexdigest()
    wait_for(lambda: stats(mnt)["files_prepared"] == 1, "the file to be prepared at close", 30)
    sealed = seal_now(mnt)
    assert hashlib.sha256(read(f"{sealed}/model.bin")).hexdigest() == expected
    counted = stats_once_counted(mnt, 1)
    assert (counted["files_streamed"], counted["files_reused_at_seal"]) == (0, 1)
    verify_ok(store)


def test_an_append_to_a_closed_file_is_prepared_at_close(tmp_path, mount):
    store, mnt, version = empty_version(tmp_path, mount, "600")
    first, more = os.urandom(5 * MiB), os.urandom(3 * MiB)
    with open(f"{version}/model.bin", "wb") as f:
        f.write(first)
    wait_for(lambda: stats(mnt)["files_streamed"] == 1, "the first writing to stream", 30)
    with open(f"{version}/model.bin", "ab") as f:  # O_APPEND: the next bytes start at 5 MiB
        f.write(more)
    wait_for(lambda: stats(mnt)["files_prepared"] == 2, "the append to be prepared", 30)
    sealed = seal_now(mnt)
    assert read(f"{sealed}/model.bin") == first + more
    counted = stats_once_counted(mnt, 1)
    assert (counted["files_streamed"], counted["files_reused_at_seal"]) == (1, 1)
    verify_ok(store)


def test_a_file_renamed_into_another_version_while_written_seals_right(tmp_path, mount):
    store, mnt, version = empty_version(tmp_path, mount, "600")
    os.makedirs(f"{mnt}/inbox/p/r/v2")
    data = os.urandom(10 * MiB), os.urandom(4 * MiB)
    with open(f"{version}/model.bin", "wb") as f:
        written_and_packed(f, store, data[0], MiB)
        os.rename(f"{version}/model.bin", f"{mnt}/inbox/p/r/v2/model.bin")
        f.write(data[1])
    wait_for(lambda: stats(mnt)["files_prepared"] == 1, "the file to be prepared at close", 30)
    sealed = seal_now(mnt, "p/r/v2")
    assert read(f"{sealed}/model.bin") == b"".join(data)
    assert stats_once_counted(mnt, 1)["files_streamed"] == 0
    verify_ok(store)


def test_shards_written_in_parallel_seal_moments_after_the_marker(tmp_path, mount):
    """Each `shard_N.pt` is a checkpoint file of its own until `.seal` makes v1 one
    checkpoint directory: its seal takes over what was streamed for each shard."""
    store, mnt, version = empty_version(tmp_path, mount, "600")
    sources = []
    for i in range(4):
        sources.append(tmp_path / f"shard_{i}.pt")
        sources[-1].write_bytes(os.urandom(6 * MiB + i) + bytes(2 * MiB))
    writers = [subprocess.Popen(["dd", f"if={src}", f"of={version}/{src.name}", "bs=1M",
                                 "status=none"]) for src in sources]
    assert [w.wait() for w in writers] == [0] * 4
    wait_for(lambda: stats(mnt)["files_streamed"] == 4, "every shard to be streamed", 30)
    sealed = seal_now(mnt)
    assert stats_once_counted(mnt, 1)["files_reused_at_seal"] == 4
    for src in sources:
        assert read(f"{sealed}/{src.name}") == src.read_bytes()
    assert packed_bytes(store) < sum(s.stat().st_size for s in sources) + MiB
    verify_ok(store)


WRITER = """
import os, sys
with open(sys.argv[1], "wb") as f:
    while True:
        f.write(os.urandom(1 << 20))
        f.flush()
        os.fsync(f.fileno())
"""


def killed_writer(path: str, store: str) -> None:
    """A writer process killed (SIGKILL) once some of what it wrote is packed."""
    writer = subprocess.Popen([sys.executable, "-c", WRITER, path])
    try:
        wait_for(lambda: packed_bytes(store) >= 4 * MiB, "the writer's bytes to be packed", 30)
    finally:
        writer.kill()
        writer.wait()


def test_a_writer_killed_mid_file_leaves_its_unit_unsealed_and_no_pack_behind(tmp_path, mount):
    store, mnt, version = empty_version(tmp_path, mount, "600")
    killed_writer(f"{version}/model.bin", store)
    written = read(f"{version}/model.bin")
    assert os.listdir(f"{mnt}/projects") == []  # waits for its quiet period, as before
    unmount(mnt)
    wait_for(lambda: not os.path.exists(os.path.join(store, "spool", "daemon.running")),
             "the daemon to stop", 30)
    assert packed_bytes(store) == 0  # what was streamed went with the unsealed unit
    mnt = mount(store, "--seal-after", "0.5")
    assert read(f"{wait_sealed(mnt)}/model.bin") == written
    verify_ok(store)


def test_a_daemon_killed_mid_stream_leaves_no_pack_and_its_unit_waits(tmp_path, mount):
    store = new_store(tmp_path)
    mnt = str(tmp_path / "dead")
    os.mkdir(mnt)
    said = run_cli_checked("mount", store, mnt, "--seal-after", "600").stdout.decode()
    pid = int(re.search(r"daemon pid (\d+)", said).group(1))
    os.makedirs(f"{mnt}/inbox/p/r/v1")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, f"{mnt}/inbox/p/r/v1/model.bin"],
                              stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: packed_bytes(store) >= 4 * MiB, "the writer's bytes to be packed", 30)
        os.kill(pid, signal.SIGKILL)
        writer.wait(30)  # its next write fails: the mount is gone
    finally:
        writer.kill()
        subprocess.run(["umount", "-l", mnt], capture_output=True)
    spooled = read(os.path.join(store, "spool", "inbox", "p", "r", "v1", "model.bin"))
    mnt = mount(store, "--seal-after", "0.5")
    assert_daemon_alive(mnt)
    assert packed_bytes(store) == 0  # the dead daemon's packs are gone
    open(f"{mnt}/inbox/p/r/v1/.seal", "w").close()  # held after the crash: asked to seal
    assert read(f"{wait_sealed(mnt)}/model.bin") == spooled
    verify_ok(store)
