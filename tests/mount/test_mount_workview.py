"""The run directory as a job's working directory, on a real mount: the Python API
(ckptfs.seal, annotate, state), snapshots of the run's loose files and of its folders,
checkpoint files written again, copy-up, and lineage from what a process read."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from tests.helpers.cli import run_cli_checked
from tests.helpers.waiting import wait_for
from safetensors.numpy import save_file
from tests.helpers.stores import new_store
from tests.helpers.inbox import read, verify_ok, write

import ckptfs
from ckptfs.store import Store

RUN = "p/r"


def sidecar(mnt: str, ref: str) -> dict:
    with open(os.path.join(mnt, "projects", ref + ".json")) as f:
        return json.load(f)


def weights(path: str, seed: int):
    rng = np.random.default_rng(seed)
    save_file({"w": rng.standard_normal((64, 64), dtype=np.float32)}, path)


@pytest.fixture
def run_dir(tmp_path, mount):
    """A mounted store with a long quiet period (only explicit seals happen) and the run
    directory inbox/p/r: (store, mount point, run directory)."""
    store = new_store(tmp_path)
    mnt = mount(store, "--seal-after", "600")
    run = os.path.join(mnt, "inbox", RUN)
    os.makedirs(run)
    return store, mnt, run


def test_annotate_then_seal_returns_the_version_with_the_metadata(run_dir):
    store, mnt, run = run_dir
    ckpt = os.path.join(run, "step_10")
    os.makedirs(ckpt)
    weights(f"{ckpt}/model.safetensors", 1)
    ckptfs.annotate(ckpt, metrics={"eval_loss": 0.31}, step=10, tags=["baseline"],
                    lineage={"data": {"name": "wiki", "version": "v7"}})
    ckptfs.annotate(ckpt, metrics={"accuracy": 0.9})  # later calls merge
    assert ckptfs.state(ckpt)["state"] in ("quiet", "writing")
    assert ckptfs.seal(ckpt) == "p/r/step_10"
    assert ckptfs.state(ckpt) == {"state": "sealed", "version": "p/r/step_10"}
    doc = sidecar(mnt, "p/r/step_10")
    assert doc["metrics"] == {"accuracy": 0.9, "eval_loss": 0.31}
    assert doc["step"] == 10 and "baseline" in doc["tags"]
    assert doc["lineage"]["data"] == {"name": "wiki", "version": "v7"}
    assert [f["path"] for f in doc["files"]] == ["model.safetensors"]  # nothing added
    with pytest.raises(ckptfs.CkptfsError, match="sealed already"):
        ckptfs.annotate(ckpt, notes="too late")
    verify_ok(store)


def test_the_api_refuses_what_it_cannot_do_in_words(run_dir, tmp_path):
    store, mnt, run = run_dir
    with pytest.raises(ckptfs.NotInMountError, match="not in a ckptfs mount"):
        ckptfs.seal(str(tmp_path))
    with pytest.raises(ckptfs.NotInMountError, match="inbox/<project>/<run>/"):
        ckptfs.seal(os.path.join(mnt, "projects"))
    os.makedirs(f"{run}/ckpt")
    with pytest.raises(ValueError, match="metrics.loss"):
        ckptfs.annotate(f"{run}/ckpt", metrics={"loss": "low"})
    with pytest.raises(ckptfs.CkptfsError, match="no such file"):
        ckptfs.seal(f"{run}/missing")
    # setfattr from a shell does what the API does
    weights(f"{run}/ckpt/model.safetensors", 2)
    done = subprocess.run(["setfattr", "-n", "user.ckptfs.seal", "-v", "1", f"{run}/ckpt"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    wait_for(lambda: os.path.isdir(f"{mnt}/projects/p/r/ckpt"), "the seal asked by setfattr")


def test_sealing_the_run_directory_seals_everything_waiting_in_it(run_dir):
    store, mnt, run = run_dir
    for step in (1, 2):
        os.makedirs(f"{run}/checkpoint-{step}")
        weights(f"{run}/checkpoint-{step}/model.safetensors", step)
    os.makedirs(f"{run}/logs")
    write(f"{run}/logs/train.log", b"step 1\nstep 2\n")
    assert ckptfs.seal(run) is None
    assert sorted(v for v in os.listdir(f"{mnt}/projects/p/r") if not v.endswith(".json")) == \
        ["checkpoint-1", "checkpoint-2", "latest", "logs"]
    assert os.readlink(f"{mnt}/projects/p/r/latest") == "checkpoint-2"  # never the logs
    assert sidecar(mnt, "p/r/logs")["kind"] == "files"
    assert sidecar(mnt, "p/r/checkpoint-2")["lineage"]["parent"]["version"] == "checkpoint-1"


def test_the_runs_loose_files_are_archived_whole_each_time_they_change(run_dir):
    store, mnt, run = run_dir
    weights(f"{run}/model.safetensors", 3)  # what save_model() writes
    write(f"{run}/config.json", b'{"hidden": 64}')
    assert ckptfs.seal(run) is None
    assert sidecar(mnt, "p/r/final")["kind"] == "checkpoint"
    write(f"{run}/all_results.json", b'{"eval_loss": 0.25, "epoch": 3.0}')  # save_metrics()
    ckptfs.seal(run)
    again = sidecar(mnt, "p/r/final~2")
    assert sorted(f["path"] for f in again["files"]) == \
        ["all_results.json", "config.json", "model.safetensors"]  # the rest carried over
    assert again["metrics"]["eval_loss"] == 0.25
    assert read(f"{mnt}/projects/p/r/final~2/model.safetensors") == \
        read(f"{mnt}/projects/p/r/final/model.safetensors")
    assert os.readlink(f"{mnt}/projects/p/r/latest") == "final~2"
    # a loose file can be rewritten in place after its seal (copy-up), appended to too
    with open(f"{run}/all_results.json", "w") as f:
        f.write('{"eval_loss": 0.2}')
    with open(f"{run}/config.json", "ab") as f:
        f.write(b"\n")
    ckptfs.seal(run)
    third = sidecar(mnt, "p/r/final~3")
    assert third["metrics"]["eval_loss"] == 0.2
    assert read(f"{run}/config.json") == b'{"hidden": 64}\n'
    assert read(f"{mnt}/projects/p/r/final~3/config.json") == b'{"hidden": 64}\n'
    verify_ok(store)


def test_a_checkpoint_file_written_again_is_its_next_version(run_dir):
    store, mnt, run = run_dir
    write(f"{run}/last.ckpt", b"epoch 1")
    assert ckptfs.seal(f"{run}/last.ckpt") == "p/r/last"
    write(f"{run}/last.ckpt", b"epoch 2")  # O_TRUNC over a sealed file: fine
    assert ckptfs.state(f"{run}/last.ckpt")["state"] != "sealed"
    assert ckptfs.seal(f"{run}/last.ckpt") == "p/r/last~2"
    assert read(f"{mnt}/projects/p/r/last/last.ckpt") == b"epoch 1"
    assert read(f"{mnt}/projects/p/r/last~2/last.ckpt") == b"epoch 2"
    assert read(f"{run}/last.ckpt") == b"epoch 2"
    os.unlink(f"{run}/last.ckpt")
    assert os.listdir(run) == []  # hidden: the older `last` does not show through
    verify_ok(store)


def test_a_folder_of_logs_is_a_files_version_that_grows(run_dir):
    store, mnt, run = run_dir
    os.makedirs(f"{run}/runs/exp1")
    write(f"{run}/runs/exp1/events.1", b"a" * 100)
    ckptfs.seal(f"{run}/runs")
    os.makedirs(f"{run}/runs/exp2")  # a new file in a sealed folder: allowed
    write(f"{run}/runs/exp2/events.2", b"b" * 100)
    with open(f"{run}/runs/exp1/events.1", "ab") as f:  # TensorBoard appends
        f.write(b"c")
    ckptfs.seal(f"{run}/runs")
    second = sidecar(mnt, "p/r/runs~2")
    assert second["kind"] == "files" and second["inbox"] == {"path": "runs", "shape": "group"}
    assert {f["path"]: f["size"] for f in second["files"]} == {"exp1/events.1": 101,
                                                              "exp2/events.2": 100}
    assert not os.path.lexists(f"{mnt}/projects/p/r/latest")  # no checkpoint yet
    assert sorted(os.listdir(f"{run}/runs")) == ["exp1", "exp2"]


def test_lineage_follows_what_a_process_read_before_it_wrote(run_dir, tmp_path):
    store, mnt, run = run_dir
    os.makedirs(f"{run}/base")
    weights(f"{run}/base/model.safetensors", 5)
    ckptfs.seal(f"{run}/base")
    fine_tune = f"""
import shutil, sys
base = {mnt!r} + "/projects/p/r/base"
open(base + "/config.json", "rb").read() if False else None
data = open(base + "/model.safetensors", "rb").read()          # loads the base weights
import os
os.makedirs({mnt!r} + "/inbox/p/ft/step_1")
open({mnt!r} + "/inbox/p/ft/step_1/model.safetensors", "wb").write(data[::-1])
"""
    done = subprocess.run([sys.executable, "-c", fine_tune], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert ckptfs.seal(f"{mnt}/inbox/p/ft/step_1") == "p/ft/step_1"
    lineage = sidecar(mnt, "p/ft/step_1")["lineage"]
    assert lineage["parent"] == {"project": "p", "run": "r", "version": "base", "source": "read"}
    assert lineage["inputs"] == [{"project": "p", "run": "r", "version": "base"}]
    # a process that read nothing gets no read parent (and its run has no earlier version)
    copy = subprocess.run([sys.executable, "-c", f"""
import os
os.makedirs({mnt!r} + "/inbox/p/other/step_1")
open({mnt!r} + "/inbox/p/other/step_1/model.safetensors", "wb").write(b"x" * 1000)
"""], capture_output=True, text=True)
    assert copy.returncode == 0, copy.stderr
    ckptfs.seal(f"{mnt}/inbox/p/other/step_1")
    assert "parent" not in sidecar(mnt, "p/other/step_1")["lineage"]
    assert "inputs" not in sidecar(mnt, "p/other/step_1")["lineage"]
    run_cli_checked("umount", mnt)
    verify_ok(store)


def test_checkpoints_written_config_first_are_delta_coded_in_order(run_dir):
    """save_pretrained writes config.json before the weights: until the weights come,
    the directory looks like a folder of files; the delta base must still be chosen."""
    store, mnt, run = run_dir
    rng = np.random.default_rng(0)
    base = rng.standard_normal((256, 256), dtype=np.float32)
    for step in (1, 2):
        ckpt = f"{run}/checkpoint-{step}"
        os.makedirs(ckpt)
        write(f"{ckpt}/config.json", b'{"hidden": 256}')
        wait_for(lambda: json.loads(os.getxattr(ckpt, "user.ckptfs.state"))["state"]
                 in ("quiet", "writing"), "config.json to be seen")
        save_file({"w": base + step * 1e-3}, f"{ckpt}/model.safetensors")
        assert ckptfs.seal(ckpt) == f"p/r/checkpoint-{step}"
    with Store.open(store) as s:
        assert s.version_record("p", "r", "checkpoint-2")["delta_parent"] == "p/r/checkpoint-1"


def test_a_checkpoint_file_another_process_overwrites_is_sealed_first(run_dir):
    """A job resumed at once from the last.ckpt its predecessor left (not quiet long
    enough to be sealed) and rewriting it: the checkpoint it resumed from is archived."""
    store, mnt, run = run_dir

    def job(content: bytes):
        code = f"open({run + '/last.ckpt'!r}, 'wb').write({content!r})"
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr

    job(b"first job, epoch 3")
    job(b"resumed job, epoch 4")  # another process overwrites it before it was sealed
    wait_for(lambda: os.path.isdir(f"{mnt}/projects/p/r/last"), "the first last.ckpt's seal")
    assert read(f"{mnt}/projects/p/r/last/last.ckpt") == b"first job, epoch 3"
    assert read(f"{run}/last.ckpt") == b"resumed job, epoch 4"  # the working view
    assert ckptfs.seal(f"{run}/last.ckpt") == "p/r/last~2"
    assert read(f"{mnt}/projects/p/r/last~2/last.ckpt") == b"resumed job, epoch 4"
    verify_ok(store)


def test_a_seal_committed_by_a_daemon_that_died_is_not_sealed_twice(tmp_path, mount):
    """The daemon died between a seal's commit and the removal of its spool copy: the
    next start finishes the clean-up from the seal's intent file (no ghost version)."""
    store = new_store(tmp_path)
    spooled = os.path.join(store, "spool", "inbox", "p", "r", "v1")
    os.makedirs(spooled)
    weights(f"{spooled}/model.safetensors", 9)
    write(f"{spooled}/config.json", b"{}")
    with Store.open(store) as s:  # the commit the dead daemon made
        s.import_directory(spooled, "p", "r", "v1",
                           metadata={"inbox": {"path": "v1", "shape": "dir"}})
    staged = {f"v1/{n}": os.stat(f"{spooled}/{n}").st_ino for n in os.listdir(spooled)}
    os.makedirs(os.path.join(store, "spool", "sealing"))
    with open(os.path.join(store, "spool", "sealing", "1.json"), "w") as f:
        json.dump({"project": "p", "run": "r", "version": "v1", "unit": "v1", "shape": "dir",
                   "kind": "checkpoint", "source": os.path.dirname(spooled),
                   "staged": {"files": staged, "links": {}}, "batch": None}, f)
    open(os.path.join(store, "spool", "daemon.running"), "w").close()  # it died
    mnt = mount(store, "--seal-after", "0.2")
    assert not os.path.exists(spooled)
    assert os.listdir(os.path.join(store, "spool", "sealing")) == []
    assert ckptfs.state(f"{mnt}/inbox/p/r/v1") == {"state": "sealed", "version": "p/r/v1"}
    assert "nothing waits in the inbox" in run_cli_checked("status", mnt).stdout.decode()
    assert sorted(os.listdir(f"{mnt}/projects/p/r")) == ["latest", "run.json", "v1", "v1.json"]


def test_a_checkpoint_removed_before_its_seal_never_shows_again(run_dir):
    """A job that rotates its checkpoints (accelerate's total_limit) lists them right
    after removing one. The removed one, sealed at once, used to show again in the
    listing between the seal's commit and its clean-up, and the job's next rotation
    failed to remove it (ENOENT). A reader lists the directory without pause from the
    removal until the seal is done."""
    store, mnt, run = run_dir
    base = os.path.join(run, "checkpoints")
    for attempt in range(5):
        name = f"checkpoint_{attempt}"
        os.makedirs(os.path.join(base, name))
        for member in ("model.safetensors", "optimizer.bin", "random_states_0.pkl"):
            write(os.path.join(base, name, member), os.urandom(4096))
        shutil.rmtree(os.path.join(base, name))
        sealed = os.path.join(mnt, "projects", RUN, name)
        reappeared = 0
        while not os.path.isdir(sealed):  # the seal follows the removal at once
            reappeared += name in os.listdir(base)
        reappeared += name in os.listdir(base)
        assert reappeared == 0, f"{name} showed again {reappeared} times after its removal"
    assert os.listdir(base) == []
