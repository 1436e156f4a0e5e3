"""A gc while the store is mounted: kept versions still read through the mount. Garbage
collection itself: tests/cli/test_gc.py and tests/store/test_gc.py."""
import errno
import json
import os

import pytest

from tests.helpers import gc as helpers
from tests.helpers.cli import run_cli_checked
from tests.helpers.gc import KEPT, RUN
from tests.helpers.inbox import sh
from tests.helpers.stores import copy_store
from tests.helpers.waiting import wait_for

pristine = helpers.pristine  # a fixture (tests/helpers/gc.py)


# -- through a mount ---------------------------------------------------------------------------
def test_gc_while_mounted(pristine, mount, tmp_path):
    path = copy_store(pristine.path, tmp_path / "store")
    mnt = mount(path)
    run = os.path.join(mnt, "projects", "p", "r")
    # the kernel caches these for an hour: the daemon must tell it they are gone
    assert sorted(os.listdir(os.path.join(run, "v3"))) == sorted(os.listdir(pristine.sources["p/r/v3"]))
    assert os.path.isfile(os.path.join(run, "v3.json"))
    held = os.open(os.path.join(run, "v3", "own.bin"), os.O_RDONLY)   # opened, never read
    try:
        run_cli_checked("gc", path)
        wait_for(lambda: not os.path.exists(os.path.join(run, "v3")), "v3 to leave the mount")
        assert sorted(os.listdir(run)) == ["latest", "production", "run.json", "v1", "v1.json",
                                           "v2", "v2.json", "v4", "v4.json"]
        with pytest.raises(OSError) as failed:
            os.pread(held, 4096, 0)                  # its chunks were reclaimed
        assert failed.value.errno == errno.EIO
    finally:
        os.close(held)
    deleted = os.path.join(mnt, ".ckptfs", "deleted", "p", "r")
    assert sorted(os.listdir(deleted)) == ["v0.json", "v3.json"]
    grep = sh(f"grep -c '\"sha256\"' {deleted}/v3.json && grep '\"reason\"' {deleted}/v3.json")
    assert grep.returncode == 0
    assert grep.stdout.splitlines()[1].strip() == '"reason": "not among the newest 1",'
    tomb = json.loads(sh(f"cat {deleted}/v0.json").stdout)
    assert tomb["deleted_at"] and tomb["deletion"]["policy"]["scope"] == "p"
    assert {f["path"] for f in tomb["files"]} >= {"own.bin", "model.safetensors"}
    with open(os.path.join(run, "run.json")) as f:
        versions = {v["version"]: v for v in json.load(f)["versions"]}
    assert list(versions) == RUN
    assert versions["v0"]["deleted"] is True and versions["v0"]["deleted_at"] == tomb["deleted_at"]
    assert versions["v3"]["deleted"] is True and "deleted" not in versions["v4"]
    for ref in KEPT:      # the mount reads the kept versions, some now in new packs
        rel = ref.split("/", 1)[1]
        check = sh(f"cd {pristine.sources[ref]} && sha256sum model.safetensors own.bin "
                   f"optimizer.pt > {tmp_path}/sums && cd {mnt}/projects/p/{rel} && "
                   f"sha256sum -c {tmp_path}/sums")
        assert check.returncode == 0, check.stdout + check.stderr
    # The deleted version leaves the run's working view too; its name is never reused:
    # a new v3 written there is sealed as v3~2.
    assert "v3" not in os.listdir(f"{mnt}/inbox/p/r")
    remade = sh(f"mkdir -p {mnt}/inbox/p/r/v3 && cp -r {pristine.sources['p/r/v3']}/. "
                f"{mnt}/inbox/p/r/v3/ && touch {mnt}/inbox/p/r/v3/.seal")
    assert remade.returncode == 0, remade.stderr
    wait_for(lambda: os.path.isdir(os.path.join(run, "v3~2")), "v3 written again to be sealed")
