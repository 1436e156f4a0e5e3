"""The inbox of a real mount seen from outside, as a job sees it: shell commands, what
the mount says of a path, waiting for a seal (an event, polled), comparing what was
sealed with its source."""
import hashlib
import json
import os
import subprocess

from tests.helpers.cli import run_cli_checked
from tests.helpers.samples import make_checkpoint, tree_snapshot
from tests.helpers.stores import new_store
from tests.helpers.waiting import wait_for

WRITE_BITS = 0o222
SEAL_TIMEOUT = 30.0
REF = "p/r/v1"


def sh(cmd, **kw):
    return subprocess.run(cmd, shell=True, capture_output=True, text=True, **kw)


def empty_version(tmp_path, mount, seal_after: str) -> tuple[str, str, str]:
    """A new store mounted with this quiet period and an empty inbox version p/r/v1:
    (store, mount point, version directory)."""
    store = new_store(tmp_path)
    mnt = mount(store, "--seal-after", seal_after)
    version = f"{mnt}/inbox/p/r/v1"
    os.makedirs(version)
    return store, mnt, version


def copied_in(tmp_path, mount, seal_after: str, copy: str) -> tuple[str, str]:
    """A new store mounted with this quiet period, and the shell command `copy` run
    ({mnt} in it stands for the mount point): (store, mount point)."""
    store = new_store(tmp_path)
    mnt = mount(store, "--seal-after", seal_after)
    assert sh(copy.format(mnt=mnt)).returncode == 0
    return store, mnt



def inbox_state(mnt: str, ref: str) -> dict | None:
    """What the mount says of an inbox path (user.ckptfs.state), None if it is not there."""
    try:
        return json.loads(os.getxattr(os.path.join(mnt, "inbox", ref), "user.ckptfs.state"))
    except FileNotFoundError:
        return None


def is_sealed(mnt: str, ref: str) -> bool:
    """Sealed: under projects/, and shown in the inbox as sealed (or hidden from it)."""
    if not os.path.isdir(os.path.join(mnt, "projects", ref)):
        return False
    state = inbox_state(mnt, ref)
    return state is None or state["state"] == "sealed"


def wait_sealed(mnt: str, ref: str = REF, timeout: float = SEAL_TIMEOUT) -> str:
    """Poll until the version is under projects/ and gone from the inbox; its path."""
    wait_for(lambda: is_sealed(mnt, ref), f"{ref} to be sealed", timeout)
    return os.path.join(mnt, "projects", ref)


def a_quiet_period_passes(mnt: str, tmp_path, tag: str, marked: bool = False):
    """Wait for proof that the sealer went through a whole quiet period after this call,
    rather than sleeping for one: a checkpoint written now into a project of its own is
    sealed once quiet, and the sealer, in that same pass, found every unit written before
    it quiet at least as long (it looks at all of them each time). `marked`: with a
    .seal marker, sealed at the sealer's next pass (proof of one more pass only)."""
    canary = make_checkpoint(tmp_path / "canary-src" / tag, step=1, scale=1)
    os.makedirs(f"{mnt}/inbox/canary/r", exist_ok=True)
    copied = sh(f"cp -r {canary} {mnt}/inbox/canary/r/{tag}")
    assert copied.returncode == 0, copied.stderr
    if marked:
        open(f"{mnt}/inbox/canary/r/{tag}/.seal", "w").close()
    wait_sealed(mnt, f"canary/r/{tag}")


def mount_log(store: str) -> str:
    with open(os.path.join(store, "logs", "mount.log"), errors="replace") as f:
        return f.read()


def stats(mnt: str) -> dict:
    with open(os.path.join(mnt, ".ckptfs", "stats.json")) as f:
        return json.load(f)


def stats_once_counted(mnt: str, sealed: int) -> dict:
    """stats.json once the sealer has counted `sealed` versions since the mount: a
    version shows under projects/ (and in the inbox as sealed) from its commit on, a
    moment before the sealer's counters include it."""
    return wait_for(lambda: (st := stats(mnt))["versions_sealed"] >= sealed and st,
                    f"{sealed} seal(s) to be counted in stats.json")


def read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def write(path, data: bytes):
    with open(path, "wb") as f:
        f.write(data)


def archived(snapshot: dict, modes=True, mtime_unit: int | None = 1) -> dict:
    """What a sealed version keeps of a tree_snapshot: modes without write bits (or none),
    mtimes to `mtime_unit` nanoseconds (or none); contents and link targets always."""
    out = {}
    for path, info in snapshot.items():
        if info[0] == "symlink":
            out[path] = info
            continue
        mode = info[1] & ~WRITE_BITS if modes else None
        mtime = info[2] // mtime_unit if mtime_unit else None
        out[path] = (info[0], mode, mtime) + tuple(info[3:])
    return out


def assert_same_files(sealed: str, src: str, *, modes=True, mtime_unit: int | None = 1):
    got, expected = tree_snapshot(sealed), tree_snapshot(src)
    assert sorted(got) == sorted(expected)
    got, expected = archived(got, modes, mtime_unit), archived(expected, modes, mtime_unit)
    for path in expected:
        assert got[path] == expected[path], path


def assert_sha256sum_checks(sealed: str, src: str):
    """sha256sum of every regular file of the source, checked by sha256sum -c inside the
    sealed version."""
    sums = sh("find . -type f -print0 | sort -z | xargs -0 sha256sum", cwd=src)
    assert sums.returncode == 0 and sums.stdout, sums.stderr
    check = sh("sha256sum --strict -c -", cwd=sealed, input=sums.stdout)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.count(": OK") == len(sums.stdout.splitlines()) >= 1


def assert_sidecar_lists(mnt: str, ref: str, src: str):
    with open(os.path.join(mnt, "projects", ref + ".json")) as f:
        sidecar = json.load(f)
    snapshot = tree_snapshot(src)
    assert {f["path"]: f["sha256"] for f in sidecar["files"]} == {
        path: hashlib.sha256(info[3]).hexdigest()
        for path, info in snapshot.items() if info[0] == "file"}
    assert {s["path"]: s["target"] for s in sidecar["symlinks"]} == {
        path: info[1] for path, info in snapshot.items() if info[0] == "symlink"}


def assert_left_the_spool(mnt: str, store: str, ref: str = REF):
    """Sealed: the job still finds the version where it wrote it (read-only), but the
    spool no longer holds a copy, nor an error file."""
    p, r, v = ref.split("/")
    assert v in os.listdir(os.path.join(mnt, "inbox", p, r))
    assert inbox_state(mnt, ref) == {"state": "sealed", "version": ref}
    assert not os.path.exists(os.path.join(store, "spool", "inbox", p, r, v))
    assert not os.path.exists(os.path.join(mnt, "inbox", p, r, v + ".error"))


def assert_daemon_alive(mnt: str):
    assert os.path.ismount(mnt), f"{mnt} is no longer mounted: the daemon died"
    listing = sh(f"ls {mnt}/projects")
    assert listing.returncode == 0, listing.stderr


def verify_ok(store: str):
    out = run_cli_checked("verify", store).stdout.decode()
    assert out.startswith("ok:"), out
