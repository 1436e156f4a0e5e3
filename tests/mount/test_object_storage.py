"""Mounts of one store on object storage (a bucket of the real S3 server), each with a
cache directory of its own, as many machines mount it: what one seals the others see
and read, a name two of them seal at once, the server going down under a mount."""
import json
import os

import pytest

from tests.helpers.inbox import assert_sha256sum_checks, inbox_state, sh, stats
from tests.helpers.cli import run_cli_checked
from tests.helpers.object_storage import Mounts, Relay, environment_with, machines
from tests.helpers.samples import make_checkpoint
from tests.helpers.waiting import wait_for

POLL = "0.5"


@pytest.fixture
def mounts(tmp_path):
    if not os.path.exists("/dev/fuse"):
        pytest.skip("/dev/fuse is missing: FUSE tests need it (they run in CI as root)")
    made = Mounts(tmp_path)
    yield made
    made.unmount_all()


def seal_by_copy(mnt: str, src: str, project: str, run: str, step: str):
    """`cp -a` a checkpoint into the inbox, then a `.seal` marker: seal now."""
    os.makedirs(f"{mnt}/inbox/{project}/{run}", exist_ok=True)
    copied = sh(f"cp -a {src} {mnt}/inbox/{project}/{run}/{step}")
    assert copied.returncode == 0, copied.stderr
    open(f"{mnt}/inbox/{project}/{run}/{step}/.seal", "w").close()


def listed(mnt: str, ref: str) -> bool:
    """`ls` of the version's run lists it (what a user on that machine sees)."""
    project, run, version = ref.split("/")
    out = sh(f"ls {mnt}/projects/{project}/{run}")
    return out.returncode == 0 and version in out.stdout.split()


def wait_listed(mnt: str, ref: str):
    wait_for(lambda: listed(mnt, ref), f"{ref} to be listed in {mnt}")


def sealed_in(mnt: str, ref: str) -> bool:
    state = inbox_state(mnt, ref)
    return listed(mnt, ref) and (state is None or state["state"] == "sealed")


def seal_and_see(sealer: str, others: list[str], src: str):
    """Seal `src` (a step directory) as p/r/<its name> through the mount `sealer`; every
    other mount lists it (its poll of the journal) and reads the same bytes."""
    ref = f"p/r/{os.path.basename(src)}"
    seal_by_copy(sealer, src, *ref.split("/"))
    wait_for(lambda: sealed_in(sealer, ref), f"the seal of {ref} in {sealer}")
    for mnt in others:
        wait_listed(mnt, ref)
        assert_sha256sum_checks(f"{mnt}/projects/{ref}", src)


def sidecar(mnt: str, ref: str) -> dict:
    with open(os.path.join(mnt, "projects", ref + ".json")) as f:
        return json.load(f)


def test_three_machines_see_and_read_what_each_seals(mounts, s3_store_url, tmp_path):
    a, b, c = machines(s3_store_url, tmp_path, "a", "b", "c")
    a.ckptfs("init")
    mnt_a, mnt_b, mnt_c = (mounts.mount(m, "--poll-interval", POLL) for m in (a, b, c))
    seal_and_see(mnt_a, [mnt_b, mnt_c], make_checkpoint(tmp_path / "src" / "step-100", step=100))
    seal_and_see(mnt_b, [mnt_a, mnt_c], make_checkpoint(tmp_path / "src" / "step-200", step=200))
    parent = sidecar(mnt_c, "p/r/step-200")["lineage"]["parent"]
    assert (parent["project"], parent["run"], parent["version"]) == ("p", "r", "step-100")
    assert parent["source"] == "previous"
    # each machine's own cache: B's mount read A's version from the bucket, not A's disk
    assert a.cache_dir != b.cache_dir and os.listdir(b.cache_dir)


def outcome(mnt: str) -> str | None:
    """How this mount's seal of p/r/step-1 ended: "error" (an `.error` beside the unit),
    "sealed" (the mount sealed a version), None while it has not ended."""
    if os.path.exists(f"{mnt}/inbox/p/r/step-1.error"):
        return "error"
    return "sealed" if stats(mnt)["versions_sealed"] else None


def test_one_name_sealed_on_two_machines_at_once_is_one_version(mounts, s3_store_url, tmp_path):
    """Both machines seal p/r/step-1 at once. What the sealer does: a machine that
    already knows the other's version when its seal starts names its own `step-1~2`; a
    machine whose commit loses the race for the name keeps its data in the inbox with
    an `.error`. Either way one version is named step-1 and nothing is lost."""
    a, b = machines(s3_store_url, tmp_path, "a", "b")
    a.ckptfs("init")
    mnt_a, mnt_b = (mounts.mount(m, "--poll-interval", POLL) for m in (a, b))
    sources = {mnt_a: make_checkpoint(tmp_path / "src-a" / "step-1", step=1, seed=1),
               mnt_b: make_checkpoint(tmp_path / "src-b" / "step-1", step=1, seed=2)}
    for mnt, src in sources.items():
        os.makedirs(f"{mnt}/inbox/p/r", exist_ok=True)
        assert sh(f"cp -a {src} {mnt}/inbox/p/r/step-1").returncode == 0
    for mnt in sources:  # both markers as close together as two writes can be
        open(f"{mnt}/inbox/p/r/step-1/.seal", "w").close()
    ends = {mnt: wait_for(lambda mnt=mnt: outcome(mnt), f"the seal in {mnt} to end")
            for mnt in sources}
    assert sorted(ends.values()) in (["error", "sealed"], ["sealed", "sealed"]), ends
    sealed = [mnt for mnt, end in ends.items() if end == "sealed"]
    names = ["step-1"] if len(sealed) == 1 else ["step-1", "step-1~2"]
    for mnt in sources:
        wait_for(lambda mnt=mnt: all(listed(mnt, f"p/r/{n}") for n in names),
                 f"{names} listed in {mnt}")
        versions = [n for n in sh(f"ls {mnt}/projects/p/r").stdout.split()
                    if not n.endswith(".json") and n != "latest"]
        assert versions == names
    # every source is in exactly one version, or (its seal refused) still in its inbox
    versions_of = {}
    for name in names:
        owner = next(m for m in sealed if sha256_of(f"{mnt_a}/projects/p/r/{name}") ==
                     sha256_of(sources[m]))
        versions_of[owner] = name
    assert sorted(versions_of) == sorted(sealed)
    for mnt in set(sources) - set(sealed):
        with open(f"{mnt}/inbox/p/r/step-1.error") as f:
            error = f.read()
        assert "created by another import meanwhile" in error or "already exists" in error, error
        assert_sha256sum_checks(f"{mnt}/inbox/p/r/step-1", sources[mnt])


def sha256_of(tree: str) -> str:
    """sha256sum of every file of a tree, by relative path (one text)."""
    out = sh("find . -type f ! -name .seal -print0 | sort -z | xargs -0 sha256sum", cwd=tree)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture
def relay(s3_server):
    """The S3 server behind a relay the test can take down and bring back (its data
    kept, as a real server restarted keeps it)."""
    made = Relay(s3_server.port)
    yield made
    made.close()


def test_the_server_down_under_a_mount(mounts, relay, s3_store_url, tmp_path):
    """Reads of cached data go on; a new checkpoint waits in the inbox and `status` says
    why; once the server is back the seal happens and reads back."""
    env = environment_with(AWS_ENDPOINT_URL=relay.endpoint)
    machine = machines(s3_store_url, tmp_path, "a")[0]
    machine.ckptfs("init", env=env)
    first = make_checkpoint(tmp_path / "src" / "step-1", step=1)
    machine.ckptfs("import", first, "p/r/step-1", env=env)
    mnt = mounts.mount(machine, "--poll-interval", POLL, env=env)
    assert_sha256sum_checks(f"{mnt}/projects/p/r/step-1", first)  # now in the chunk cache

    relay.down()
    wait_for(lambda: not stats(mnt)["store"]["reachable"], "the mount to find the store gone")
    assert_sha256sum_checks(f"{mnt}/projects/p/r/step-1", first)
    second = make_checkpoint(tmp_path / "src" / "step-2", step=2)
    seal_by_copy(mnt, second, "p", "r", "step-2")
    wait_for(lambda: (inbox_state(mnt, "p/r/step-2") or {}).get("state") ==
             "waiting for the store", "the seal to wait for the store")
    status = run_cli_checked("status", mnt).stdout.decode()
    assert f"store {s3_store_url}: UNREACHABLE since" in status, status
    assert "step-2" in status and "waiting for the store" in status, status
    assert_sha256sum_checks(f"{mnt}/inbox/p/r/step-2", second)  # kept, readable

    relay.up()
    wait_for(lambda: sealed_in(mnt, "p/r/step-2"), "the seal once the store is back", 120)
    assert stats(mnt)["store"]["reachable"]
    assert_sha256sum_checks(f"{mnt}/projects/p/r/step-2", second)
    assert "reachable" in run_cli_checked("status", mnt).stdout.decode()
