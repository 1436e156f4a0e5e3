"""The write path with the kernel's writeback cache on (docs/mount.md, "The write path").

The kernel keeps a job's written pages and sends them later: at close, fsync, or under
memory pressure, and it owns a cached file's mtime and size. What a job sets must still
be what is sealed: mtimes set by `cp -a`, `rsync -t` and `touch -d`; every byte of a file
closed just before its `.seal` marker; nothing of a file still open when the marker
arrives; mmap'ed, appended, truncated and rewritten files.
"""
import hashlib
import json
import mmap
import os
import shutil
import subprocess

import pytest

from tests.helpers.inbox import (a_quiet_period_passes, empty_version, inbox_state, mount_log,
                                 read, sh, wait_sealed)
from tests.helpers.access import grant, public_dir
from tests.helpers.cli import run_cli_checked
from tests.helpers.mounts import unmount
from tests.helpers.waiting import wait_for

OLD_MTIME_NS = 1_600_000_000_123_456_789   # 2020-09-13, with nanoseconds
TOUCHED_MTIME_NS = 1_500_000_000 * 10**9   # `touch -d @1500000000`
NOBODY = 65534


def random_bytes(n: int, seed: int = 0) -> bytes:
    return hashlib.shake_256(seed.to_bytes(4, "little")).digest(n)


def sidecar_files(mnt: str, ref: str = "p/r/v1") -> dict:
    with open(os.path.join(mnt, "projects", ref + ".json")) as f:
        return {e["path"]: e for e in json.load(f)["files"]}


def assert_sealed_as(mnt: str, expected: dict[str, bytes], ref: str = "p/r/v1"):
    """The sealed version holds exactly these bytes, and its sidecar says so."""
    sealed = os.path.join(mnt, "projects", ref)
    listed = sidecar_files(mnt, ref)
    assert sorted(listed) == sorted(expected)
    for name, data in expected.items():
        assert read(os.path.join(sealed, name)) == data, name
        assert listed[name]["size"] == len(data), name
        assert listed[name]["sha256"] == hashlib.sha256(data).hexdigest(), name


def test_mtimes_set_by_cp_a_rsync_t_and_touch_d_are_kept_in_the_inbox_and_the_version(
        tmp_path, mount):
    _store, mnt, version = empty_version(tmp_path, mount, "60")
    src = tmp_path / "src"
    src.mkdir()
    data = random_bytes(3 << 20)  # larger than one write request: written back in parts
    for name in ("cp.bin", "rsync.bin"):
        (src / name).write_bytes(data)
        os.utime(src / name, ns=(OLD_MTIME_NS, OLD_MTIME_NS))
    assert sh(f"cp -a {src}/cp.bin {version}/cp.bin").returncode == 0
    copied = sh(f"rsync -t {src}/rsync.bin {version}/rsync.bin")
    assert copied.returncode == 0, copied.stderr
    # touch -d while the written pages may still be in the kernel (no close, no fsync yet)
    with open(f"{version}/touched.bin", "wb") as f:
        f.write(data)
        f.flush()
        assert sh(f"touch -d @1500000000 {version}/touched.bin").returncode == 0
    expected = {"cp.bin": OLD_MTIME_NS, "rsync.bin": OLD_MTIME_NS,
                "touched.bin": TOUCHED_MTIME_NS}
    for name, mtime in expected.items():
        assert os.stat(f"{version}/{name}").st_mtime_ns == mtime, name
    os.setxattr(version, "user.ckptfs.seal", b"")
    sealed = wait_sealed(mnt)
    for name, mtime in expected.items():
        assert os.stat(f"{sealed}/{name}").st_mtime_ns == mtime, name
        assert os.stat(f"{version}/{name}").st_mtime_ns == mtime, name  # the working view
    assert_sealed_as(mnt, {name: data for name in expected})


def test_a_file_closed_then_marked_without_fsync_seals_with_every_byte(tmp_path, mount):
    """A job that writes, closes and creates `.seal` at once: close() hands the kernel's
    dirty pages to the daemon before it returns, so the spool holds every byte before the
    marker exists, and the seal takes them all."""
    store, mnt, version = empty_version(tmp_path, mount, "60")
    data = random_bytes(24 << 20, seed=1)
    with open(f"{version}/model.safetensors", "wb") as f:
        for at in range(0, len(data), 1 << 20):
            f.write(data[at:at + (1 << 20)])
    # Read behind the mount's back: what the daemon received by the time close() returned.
    assert read(os.path.join(store, "spool", "inbox", "p", "r", "v1", "model.safetensors")) == data
    open(f"{version}/.seal", "w").close()
    wait_sealed(mnt)
    assert_sealed_as(mnt, {"model.safetensors": data})
    assert "(writeback cache on)" in mount_log(store)


def test_a_file_still_open_for_writing_when_the_marker_arrives_is_sealed_once_closed(
        tmp_path, mount):
    """The marker asks for the seal; the unit waits until every writer has closed its files
    (their data may still be in the kernel): then it is sealed whole, never half-written."""
    _store, mnt, version = empty_version(tmp_path, mount, "60")
    data = random_bytes(8 << 20, seed=2)
    with open(f"{version}/model.safetensors", "wb") as f:
        f.write(data[:len(data) // 2])
        open(f"{version}/.seal", "w").close()
        a_quiet_period_passes(mnt, tmp_path, "c1", marked=True)  # the sealer passed by it
        assert not os.path.exists(f"{mnt}/projects/p/r/v1")
        assert inbox_state(mnt, "p/r/v1")["state"] == "writing"
        f.write(data[len(data) // 2:])
    wait_sealed(mnt)
    assert_sealed_as(mnt, {"model.safetensors": data})


def test_mmap_writes_reach_the_sealed_version(tmp_path, mount):
    _store, mnt, version = empty_version(tmp_path, mount, "60")
    data = random_bytes(5 << 20, seed=3)
    fd = os.open(f"{version}/weights.bin", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.ftruncate(fd, len(data))
        with mmap.mmap(fd, len(data), mmap.MAP_SHARED) as mapped:
            mapped[:] = data
            mapped.flush()  # msync
    finally:
        os.close(fd)
    open(f"{version}/.seal", "w").close()
    wait_sealed(mnt)
    assert_sealed_as(mnt, {"weights.bin": data})


def test_appended_truncated_and_rewritten_files_are_sealed_as_written(tmp_path, mount):
    _store, mnt, version = empty_version(tmp_path, mount, "60")
    parts = [random_bytes(300_000 + i, seed=10 + i) for i in range(3)]
    for part in parts:  # O_APPEND: the kernel places each write at the end it knows
        with open(f"{version}/log.bin", "ab") as f:
            f.write(part)
    assert sh(f"printf tail >> {version}/log.bin").returncode == 0
    old = random_bytes(4 << 20, seed=20)
    with open(f"{version}/cut.bin", "wb") as f:
        f.write(old)
    with open(f"{version}/cut.bin", "r+b") as f:  # cut short, then a new tail
        f.truncate(1 << 20)
        f.seek(0, os.SEEK_END)
        f.write(b"new tail")
    with open(f"{version}/rewritten.bin", "wb") as f:
        f.write(old)
    with open(f"{version}/rewritten.bin", "wb") as f:  # O_TRUNC, shorter
        f.write(b"short")
    open(f"{version}/.seal", "w").close()
    wait_sealed(mnt)
    assert_sealed_as(mnt, {"log.bin": b"".join(parts) + b"tail",
                           "cut.bin": old[:1 << 20] + b"new tail",
                           "rewritten.bin": b"short"})


@pytest.mark.skipif(shutil.which("setpriv") is None or os.getuid() != 0,
                    reason="needs root and setpriv (util-linux)")
def test_a_file_its_writer_may_not_read_is_still_written_through_the_cache(tmp_path):
    """The kernel turns an O_WRONLY open into O_RDWR (it reads the pages a partial write
    touches): a writer (nobody, granted the role) writing a file of mode 0200 must still
    succeed, and the file keeps its mode."""
    base = public_dir()
    store, mnt = os.path.join(base, "store"), os.path.join(base, "mnt")
    os.mkdir(mnt)
    run_cli_checked("init", "--shared", store)
    grant(store, "p", "writer")
    run_cli_checked("mount", store, mnt, "--allow-other", "--seal-after", "60")
    try:
        written_by_nobody_unreadable(mnt)
    finally:
        unmount(mnt)
        shutil.rmtree(base, ignore_errors=True)


def as_nobody(script: str):
    done = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                           "sh", "-c", script], capture_output=True, text=True, cwd="/")
    assert done.returncode == 0, done.stderr


def written_by_nobody_unreadable(mnt: str):
    version = f"{mnt}/inbox/p/r/v1"
    sh(f"setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups mkdir -p {version}")
    path = f"{version}/secret.bin"
    as_nobody(f"umask 0577 && head -c 10000 /dev/zero | tr '\\0' a > {path}")  # mode 0200
    fd = os.open(path, os.O_RDONLY)  # (root may)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # its pages leave the page cache
    os.close(fd)
    # O_WRONLY, 100 bytes inside a page the kernel no longer has: it reads it first
    as_nobody(f"head -c 100 /dev/zero | tr '\\0' b | "
              f"dd of={path} bs=100 seek=50 conv=notrunc status=none")
    expected = b"a" * 5000 + b"b" * 100 + b"a" * 4900
    assert os.stat(f"{version}/secret.bin").st_mode & 0o777 == 0o200
    assert read(f"{version}/secret.bin") == expected
    open(f"{version}/.seal", "w").close()
    wait_sealed(mnt)
    assert_sealed_as(mnt, {"secret.bin": expected})


def test_a_sealed_file_appended_to_and_asked_again_is_copied_up_only_when_written(
        tmp_path, mount):
    """Appending to a sealed loose file copies it into the spool; the kernel then reads,
    through the job's write-only handle, the page its first write lands in. A seal request
    (setxattr) on a sealed file changes its ctime in the kernel, which sends the cached
    times back later (a SETATTR with the same mtime): that alone is no change of it."""
    _store, mnt, run = empty_version(tmp_path, mount, "60")
    run = os.path.dirname(run)  # inbox/p/r: a loose file of the run
    first = random_bytes(10_000, seed=30)
    with open(f"{run}/notes.bin", "wb") as f:
        f.write(first)
    os.setxattr(f"{run}/notes.bin", "user.ckptfs.seal", b"")
    wait_for(lambda: inbox_state(mnt, "p/r/notes.bin")["state"] == "sealed", "the first seal")
    os.setxattr(f"{run}/notes.bin", "user.ckptfs.seal", b"")  # asked again: already sealed
    os.sync()  # the kernel writes its dirty inodes back: the ctime, as a SETATTR
    assert inbox_state(mnt, "p/r/notes.bin")["state"] == "sealed"
    with open(f"{run}/notes.bin", "ab") as f:
        f.write(b"appended")
    assert read(f"{run}/notes.bin") == first + b"appended"
    os.setxattr(f"{run}/notes.bin", "user.ckptfs.seal", b"")
    wait_for(lambda: inbox_state(mnt, "p/r/notes.bin")["state"] == "sealed", "the second seal")
    versions = sorted(v for v in os.listdir(f"{mnt}/projects/p/r") if not v.endswith(".json")
                      and v not in ("latest", "run.json"))
    assert len(versions) == 2, versions
