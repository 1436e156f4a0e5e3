"""POSIX behaviour of the inbox on a real mount, with python os calls and real tools, as
root: what pjdfstest (scripts/pjdfstest) checks, one behaviour at a time. Each run
directory is mounted with a long quiet period, so nothing here is sealed under a test."""
import errno
import os
import stat
import subprocess
import tempfile
import time

import pytest
from tests.helpers.cli import run_cli_checked
from tests.helpers.inbox import stats
from tests.helpers.waiting import wait_for

from ckptfs.store import Store

NOBODY = 65534
DEADLINE = 30.0

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="POSIX ownership tests run as root")


@pytest.fixture
def run_dir(tmp_path, mount):
    """inbox/p/r/v/ of a fresh store mounted with --allow-other: (its path, the store)."""
    store = str(tmp_path / "store")
    Store.init(store).close()
    mnt = mount(store, "--allow-other", "--seal-after", "3600")
    path = os.path.join(mnt, "inbox", "p", "r", "v")
    os.makedirs(path)
    return path, store


def as_user(uid: int, gid: int, cwd: str, *argv) -> subprocess.CompletedProcess:
    """Run a real tool as another user (setpriv ships with util-linux), in `cwd` (root
    goes there first: pytest's tmp_path is private to root)."""
    return subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
                           *argv], capture_output=True, text=True, cwd=cwd)


def mount_log(store: str) -> str:
    with open(os.path.join(store, "logs", "mount.log")) as f:
        return f.read()


def wait_for_log(store: str, text: str):
    deadline = time.monotonic() + DEADLINE
    while text not in mount_log(store):
        assert time.monotonic() < deadline, f"no log line with {text!r}:\n{mount_log(store)}"
        time.sleep(0.05)


# -- 1. an unlinked open file works until its last close ----------------------------------
def test_unlinked_open_file_keeps_working(run_dir):
    path, _ = run_dir
    name = os.path.join(path, "scratch.bin")
    fd = os.open(name, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"hello world")
        os.unlink(name)
        assert not os.path.exists(name)
        assert os.fstat(fd).st_size == 11
        assert os.pread(fd, 5, 6) == b"world"
        os.ftruncate(fd, 5)
        assert os.fstat(fd).st_size == 5
        os.fchmod(fd, 0o600)
        assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o600
        assert os.fstat(fd).st_nlink == 0
        # the name is free again, for a new file of its own
        with open(name, "wb") as f:
            f.write(b"new")
        assert os.stat(name).st_ino != os.fstat(fd).st_ino
        assert os.pread(fd, 100, 0) == b"hello"
    finally:
        os.close(fd)
    assert open(name, "rb").read() == b"new"


def test_temporary_file_in_the_inbox(run_dir):
    path, _ = run_dir
    with tempfile.TemporaryFile(dir=path) as f:
        f.write(b"x" * 10000)
        f.seek(0)
        assert f.read() == b"x" * 10000
        f.truncate(10)
        assert os.fstat(f.fileno()).st_size == 10
    assert os.listdir(path) == []


def test_a_file_removed_while_open_for_writing_is_not_archived(run_dir):
    """A temporary checkpoint file (unlinked at once, written, closed) is no checkpoint
    to keep: it used to be sealed as a version when closed, like a rotated one."""
    path, store = run_dir
    run_path = os.path.dirname(path)
    with tempfile.TemporaryFile(dir=run_path, suffix=".pt") as f:
        f.write(b"x" * 100_000)
        f.flush()
    out = run_cli_checked("seal", store, "p/r", "--timeout", "30").stdout.decode()
    assert "everything written there is sealed" in out, out
    projects = os.path.join(path.rsplit("/inbox/", 1)[0], "projects")
    assert os.listdir(projects) == []
    assert "was removed while open for writing: not archived" in mount_log(store)


def test_file_replaced_by_rename_stays_readable_while_open(run_dir):
    path, _ = run_dir
    target, tmp = os.path.join(path, "a.txt"), os.path.join(path, "b.txt")
    for name, text in ((target, b"old"), (tmp, b"new!")):
        with open(name, "wb") as f:
            f.write(text)
    with open(target, "rb") as old:
        os.rename(tmp, target)
        assert os.fstat(old.fileno()).st_size == 3
        assert old.read() == b"old"
    assert open(target, "rb").read() == b"new!"


# -- 2. ownership is kept ------------------------------------------------------------------
def test_chown_is_kept_and_shown(run_dir):
    path, _ = run_dir
    name = os.path.join(path, "owned.txt")
    open(name, "w").close()
    os.chown(name, NOBODY, NOBODY - 1)
    st = os.stat(name)
    assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY - 1)
    os.chown(name, -1, 0)
    assert (os.stat(name).st_uid, os.stat(name).st_gid) == (NOBODY, 0)
    link = os.path.join(path, "link")
    os.symlink("owned.txt", link)
    os.lchown(link, NOBODY, NOBODY)
    assert (os.lstat(link).st_uid, os.stat(name).st_uid, os.stat(name).st_gid) == (NOBODY, NOBODY, 0)


def test_chowned_directory_lets_its_owner_write(run_dir):
    """With real chown, the kernel's permission checks follow: a directory given to
    nobody takes nobody's files (as `install -o` or a job's setup script expect)."""
    path, _ = run_dir
    sub = os.path.join(path, "nobodys")
    os.mkdir(sub, 0o755)
    os.chown(sub, NOBODY, NOBODY)
    made = as_user(NOBODY, NOBODY, path, "touch", "nobodys/mine")
    assert made.returncode == 0, made.stderr
    st = os.stat(os.path.join(sub, "mine"))
    assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY)
    refused = as_user(NOBODY, NOBODY, path, "touch", "not-mine")
    assert refused.returncode != 0 and "Permission denied" in refused.stderr


def test_chown_and_owner_write_clear_setuid(run_dir):
    path, _ = run_dir
    name = os.path.join(path, "tool")
    open(name, "w").close()
    os.chown(name, NOBODY, NOBODY)
    os.chmod(name, 0o4755)
    assert stat.S_IMODE(os.stat(name).st_mode) == 0o4755
    # a user may not give a file away
    given = as_user(NOBODY, NOBODY, path, "chown", "0", "tool")
    assert given.returncode != 0 and "not permitted" in given.stderr
    os.chown(name, NOBODY, 0)  # root changing the group: set-user-ID goes, as on ext4
    assert stat.S_IMODE(os.stat(name).st_mode) == 0o755
    os.chmod(name, 0o4755)
    # its owner writing to it: set-user-ID goes too (the kernel asks, the inbox does it)
    written = as_user(NOBODY, NOBODY, path, "sh", "-c", "echo more >> tool")
    assert written.returncode == 0, written.stderr
    assert stat.S_IMODE(os.stat(name).st_mode) == 0o755
    assert open(name).read() == "more\n"


def test_set_group_id_directory_passes_its_group_on(run_dir):
    path, _ = run_dir
    shared = os.path.join(path, "shared")
    os.mkdir(shared)
    os.chown(shared, 0, 1234)
    os.chmod(shared, 0o2777)
    made = as_user(NOBODY, NOBODY, path, "mkdir", "shared/sub")
    assert made.returncode == 0, made.stderr
    st = os.stat(os.path.join(shared, "sub"))
    assert (st.st_uid, st.st_gid) == (NOBODY, 1234)
    assert st.st_mode & stat.S_ISGID


# -- 3. atime, mtime and ctime are each their own -------------------------------------------
def test_times_are_kept_apart(run_dir):
    path, _ = run_dir
    name = os.path.join(path, "times.txt")
    with open(name, "w") as f:
        f.write("x")
    os.utime(name, ns=(1_000_000_000, 2_000_000_000))
    st = os.stat(name)
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_000, 2_000_000_000)
    assert st.st_ctime_ns > 2_000_000_000  # set by utimensat itself: now
    # UTIME_OMIT for mtime (touch -a): only atime changes
    assert subprocess.run(["touch", "-a", "-d", "@5", name]).returncode == 0
    st = os.stat(name)
    assert (st.st_atime_ns, st.st_mtime_ns) == (5_000_000_000, 2_000_000_000)
    ctime = st.st_ctime_ns
    # a chmod changes ctime only
    deadline = time.monotonic() + DEADLINE
    while os.stat(name).st_ctime_ns == ctime:  # (ctime has the clock's granularity)
        assert time.monotonic() < deadline
        os.chmod(name, 0o600 if os.stat(name).st_mode & 0o044 else 0o644)
    st = os.stat(name)
    assert st.st_ctime_ns > ctime and st.st_mtime_ns == 2_000_000_000


def test_reading_a_file_ahead_keeps_the_atime_the_job_set(run_dir):
    """Once a file is closed the daemon reads it into the store ahead of its seal; that
    read is not a use of the file and must not move the atime the job set (with relatime
    it did, since the atime was older than the mtime: test_times_are_kept_apart failed
    when the read came between its utime and its stat)."""
    path, _ = run_dir
    mnt = path.split("/inbox/")[0]
    name = os.path.join(path, "weights.bin")
    with open(name, "wb") as f:
        f.write(b"w" * 100_000)
        os.utime(f.fileno(), ns=(1_000_000_000, 2_000_000_000))
    wait_for(lambda: stats(mnt)["files_prepared"] >= 1, "the file prepared ahead")
    assert os.stat(name).st_atime_ns == 1_000_000_000


def test_directory_times_are_its_own(run_dir):
    path, _ = run_dir
    sub = os.path.join(path, "d")
    os.mkdir(sub)
    os.utime(sub, ns=(3_000_000_000, 4_000_000_000))
    st = os.stat(sub)
    assert (st.st_atime_ns, st.st_mtime_ns) == (3_000_000_000, 4_000_000_000)
    assert st.st_ctime_ns not in (3_000_000_000, 4_000_000_000)


# -- 4. names, paths, link counts, special files -----------------------------------------
def test_name_too_long(run_dir):
    path, store = run_dir
    longest = os.path.join(path, "n" * 255)
    open(longest, "w").close()
    assert os.path.exists(longest)
    for call in (lambda p: open(p, "w"), os.mkdir, os.stat, os.unlink,
                 lambda p: os.symlink("x", p), lambda p: os.rename(longest, p)):
        with pytest.raises(OSError) as e:
            call(os.path.join(path, "n" * 256))
        assert e.value.errno == errno.ENAMETOOLONG
    wait_for_log(store, "the name is 256 bytes long; the limit is 255 bytes")


def test_long_names_can_be_rewritten(run_dir):
    """Temporary names the inbox makes beside a file must fit too (a copy-up of a sealed
    file, a file rewritten while it is being sealed)."""
    path, store = run_dir
    base = "m" * 250 + ".pt"  # a checkpoint file of the run: writable after its seal
    name = os.path.join(os.path.dirname(path), base)
    with open(name, "wb") as f:
        f.write(b"a" * 100)
    run_cli_checked("seal", store, "p/r/" + base)
    assert os.getxattr(name, "user.ckptfs.version").decode().startswith("p/r/")
    with open(name, "r+b") as f:  # sealed now: opened for writing, it is copied up
        f.write(b"b")
    assert open(name, "rb").read() == b"b" + b"a" * 99


def test_deep_paths_work_or_say_too_long(run_dir):
    """Every path the inbox takes works, down to the deepest; one deeper is refused
    with ENAMETOOLONG (never ENOENT), and the log says why."""
    path, store = run_dir
    component = "d" * 200
    depth, refused = 0, None
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        while refused is None:
            try:
                os.mkdir(component, dir_fd=fd)
            except OSError as e:
                refused = e
                break
            new = os.open(component, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd, depth = new, depth + 1
            with open(os.open("f", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as f:
                f.write(b"deep")
            assert depth < 40, "no limit reached"
        assert refused.errno == errno.ENAMETOOLONG
        assert depth >= 15  # most of PATH_MAX is usable
        with open(os.open("f", os.O_RDONLY, dir_fd=fd), "rb") as f:
            assert f.read() == b"deep"
        os.rename("f", "g", src_dir_fd=fd, dst_dir_fd=fd)
        os.unlink("g", dir_fd=fd)
    finally:
        os.close(fd)
    wait_for_log(store, "too long for the spool")


def test_directory_link_count_counts_subdirectories(run_dir):
    path, _ = run_dir
    assert os.stat(path).st_nlink == 2
    for name in ("a", "b", "c"):
        os.mkdir(os.path.join(path, name))
    open(os.path.join(path, "file"), "w").close()
    assert os.stat(path).st_nlink == 5
    os.rmdir(os.path.join(path, "b"))
    assert os.stat(path).st_nlink == 4
    assert os.stat(os.path.dirname(path)).st_nlink == 3  # inbox/p/r holds v


def test_fifo_and_socket_are_kept_and_never_sealed(run_dir):
    path, store = run_dir
    fifo = os.path.join(path, "pipe")
    os.mkfifo(fifo, 0o640)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert stat.S_IMODE(os.stat(fifo).st_mode) == 0o640
    sock = os.path.join(path, "sock")
    made = subprocess.run(["python3", "-c", "import socket; s = socket.socket(socket.AF_UNIX); "
                           f"s.bind({sock!r})"], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    assert stat.S_ISSOCK(os.stat(sock).st_mode)
    # the FIFO works (the kernel serves it)
    writer = subprocess.Popen(["sh", "-c", f"echo through > {fifo}"])
    with open(fifo) as f:
        assert f.read() == "through\n"
    assert writer.wait() == 0
    with open(os.path.join(path, "model.bin"), "wb") as f:
        f.write(b"w" * 1000)
    run_cli_checked("seal", store, "p/r/v")
    s = Store.open(store)
    try:
        names = {e["path"] for e in s.walk("p", "r", "v")}
    finally:
        s.close()
    assert names == {"model.bin"}
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)  # still in the working directory
    os.unlink(fifo)
    os.unlink(sock)
    assert not os.path.lexists(fifo) and not os.path.lexists(sock)


def test_device_files_are_kept_inert_and_never_sealed(run_dir):
    """Root may make a device file (as on ext4); the mount is nodev, so it cannot be
    opened through it, and no version holds it."""
    path, store = run_dir
    null = os.path.join(path, "null")
    os.mknod(null, 0o640 | stat.S_IFCHR, os.makedev(1, 3))
    st = os.stat(null)
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    assert stat.S_IMODE(st.st_mode) == 0o640
    with pytest.raises(PermissionError):
        open(null, "rb")
    with open(os.path.join(path, "model.bin"), "wb") as f:  # v: a checkpoint directory
        f.write(b"w" * 100)
    run_cli_checked("seal", store, "p/r/v")
    s = Store.open(store)
    try:
        assert {e["path"] for e in s.walk("p", "r", "v")} == {"model.bin"}
    finally:
        s.close()
    assert stat.S_ISCHR(os.lstat(null).st_mode)
    os.unlink(null)
    assert not os.path.lexists(null)


def test_regular_file_made_with_mknod(run_dir):
    path, _ = run_dir
    name = os.path.join(path, "plain")
    os.mknod(name, 0o600 | stat.S_IFREG)
    st = os.stat(name)
    assert stat.S_ISREG(st.st_mode) and st.st_size == 0 and stat.S_IMODE(st.st_mode) == 0o600
    with open(name, "ab") as f:
        f.write(b"x")
    assert open(name, "rb").read() == b"x"


def test_a_name_removed_as_a_file_then_used_as_a_directory(run_dir):
    """rm x; mkdir x; touch x/y; rm x/y; rmdir x: the file kept aside from the first
    removal must not stand in the way of the second."""
    path, _ = run_dir
    x = os.path.join(path, "x")
    for kind in ("file", "fifo"):
        open(x, "w").close() if kind == "file" else os.mkfifo(x)
        os.unlink(x)
        os.mkdir(x)
        open(os.path.join(x, "y"), "w").close()
        os.unlink(os.path.join(x, "y"))
        os.rmdir(x)
        assert not os.path.lexists(x)


def test_with_roles_enforced_the_inbox_applies_chown_rules_itself(tmp_path, mount):
    """A shared store's mount has no default_permissions (roles decide), so the kernel
    checks no chown: a writer must still not give a file to root, nor take another
    user's file, nor give its own to a group it is not in."""
    store = str(tmp_path / "store")
    run_cli_checked("init", "--shared", store)
    with Store.open(store) as s:
        s.grant("p", f"user:{NOBODY}", "writer")
    mnt = mount(store, "--allow-other", "--seal-after", "3600")
    path = os.path.join(mnt, "inbox", "p", "r", "v")
    os.makedirs(path)
    os.chmod(path, 0o777)
    made = as_user(NOBODY, NOBODY, path, "touch", "mine")
    assert made.returncode == 0, made.stderr
    open(os.path.join(path, "roots"), "w").close()
    for command in (["chown", "0", "mine"], ["chgrp", "0", "mine"], ["chown", str(NOBODY), "roots"]):
        refused = as_user(NOBODY, NOBODY, path, *command)
        assert refused.returncode != 0 and "not permitted" in refused.stderr, command
    assert (os.stat(os.path.join(path, "mine")).st_uid, os.stat(os.path.join(path, "mine")).st_gid) \
        == (NOBODY, NOBODY)
    assert os.stat(os.path.join(path, "roots")).st_uid == 0
    assert as_user(NOBODY, NOBODY, path, "chgrp", str(NOBODY), "mine").returncode == 0
    wait_for_log(store, "only root gives a file away")
