"""Real training frameworks writing straight into the mount (issue 12): a job whose output
directory is `MOUNT/inbox/<project>/<run>` runs unchanged, ends with the right weights,
and everything it wrote is archived byte-identical as the versions the inbox names.

Each scenario is one store and one mount (module-scoped fixture) driving the scripts of
tests/mount/frameworks/ as subprocesses, two at a time, next to a reference run of the same
script on local disk; the tests then check what the jobs reported and what projects/
holds. Waits are on events (a process ending, a version appearing under projects/, the
inbox having nothing pending), never fixed sleeps.

What these frameworks do to the file system (strace, transformers 5.24, accelerate 1.16,
Lightning 2.6.6, safetensors 0.8, tensorboard 2.21):
* safetensors' save_file (Trainer, accelerate) writes `.tmpXXXXXX` (mode 0600) in the
  target directory, the run directory itself for save_model(), then renames it to
  model.safetensors, which so stays 0600; load_file/from_pretrained map it
  (mmap PROT_READ|PROT_WRITE, MAP_PRIVATE: it needs the page cache, not direct_io).
* Lightning saves a .ckpt to a mkstemp file in $TMPDIR and shutil.move()s it: rename ->
  EXDEV -> open(O_TRUNC) + sendfile, close, then utimensat (the temp file's times),
  listxattr of the source, chmod 0600, chmod 0644, all after the last close. Any
  EPERM/EACCES there surfaces as "Upgrade fsspec to enable cross-device local checkpoints".
  last.ckpt is rewritten in place the same way each epoch.
* TensorBoard opens its event file "wb" once, then re-opens it O_APPEND, writes and closes
  at every flush (each Trainer log): a file keeps growing after quiet periods.
* The Trainer rotates checkpoints sorted by directory mtime (falling back to step numbers
  only when the mtimes span under a second); the torch loop picks the newest file by mtime;
  Lightning's ckpt_path="last" compares mtimes too.
* Removal is shutil.rmtree (unlinkat of each file, then rmdir), accelerate's before it
  creates the next checkpoint; Lightning removes with os.remove via fsspec.
* makedirs(exist_ok=True) is called again on existing directories everywhere (the output
  dir, runs/<date>, checkpoints/); Python's makedirs then needs isdir() to be true.
* No fsync, no xattrs set, no symlinks (Lightning's save_last="link" would make one)."""
import errno
import os
import shutil

import pytest
import torch
from tests.mount.framework_jobs import (Job, Scenario, inputs_of, parent_of, renamed,
                                        sha256_file, state_sha256, suffix_number)
from safetensors.torch import load_file

if not os.path.exists("/dev/fuse"):
    pytest.skip("/dev/fuse is missing: FUSE tests need it (they run in CI as root)",
                allow_module_level=True)

PREEMPTED = 75  # hf_trainer.py --stop-after-step: the exit status of a preempted job
# Trainer checkpoint files whose bytes depend only on the training (not on paths or time):
TRAINER_DETERMINISTIC = ("config.json", "model.safetensors", "optimizer.pt", "scheduler.pt",
                         "rng_state.pth")
TRAINER_LOOSE = {"model.safetensors", "config.json", "training_args.bin", "trainer_state.json",
                 "all_results.json", "train_results.json", "eval_results.json"}


def assert_finished(done, rc=0):
    assert done.returncode == rc, done.describe()
    assert "Traceback" not in done.stderr, done.describe()
    assert done.report is not None, f"{done.name} wrote no report\n{done.describe()}"


def assert_files_versions_stay_aside(s: Scenario, project: str, run: str, files_bases):
    """Versions of kind `files` (logs) are readable but never `latest`, `best`, a lineage
    parent or a delta base; every other version is a checkpoint."""
    versions = s.versions(project, run)
    kinds = {v: s.sidecar(f"{project}/{run}/{v}").get("kind") for v in versions}
    logs = {v for v in versions if any(suffix_number(v, b) for b in files_bases)}
    assert logs, f"no {files_bases} version in {project}/{run}: {versions}"
    assert {v: kinds[v] for v in logs} == {v: "files" for v in logs}
    assert {v: kinds[v] for v in versions if v not in logs} == \
        {v: "checkpoint" for v in versions if v not in logs}
    run_dir = s.projects(project, run)
    for alias in ("latest", "best"):
        if os.path.islink(os.path.join(run_dir, alias)):
            target = os.readlink(os.path.join(run_dir, alias))
            assert kinds.get(target) == "checkpoint", (alias, target, kinds.get(target))
    assert os.path.islink(os.path.join(run_dir, "latest")), sorted(os.listdir(run_dir))
    for v in versions:
        sidecar = s.sidecar(f"{project}/{run}/{v}")
        parent = parent_of(sidecar)
        if parent and parent.startswith(f"{project}/{run}/"):
            assert kinds.get(parent.split("/")[2]) == "checkpoint", (v, parent)
        delta = (sidecar.get("storage") or {}).get("delta_parent")
        if isinstance(delta, dict):
            delta = delta.get("version")
        if delta:
            assert kinds.get(str(delta).split("/")[-1]) != "files", (v, delta)


def assert_scan_clean(s: Scenario, project: str, run: str):
    status = {v: (s.sidecar(f"{project}/{run}/{v}").get("scan") or {}).get("status")
              for v in s.versions(project, run)}
    assert status == {v: "clean" for v in status}, status


def assert_logs_archived(s: Scenario, project: str, run: str, base: str):
    """Every log file in the run directory's working view (`base`/…) is archived in some
    `base`, `base~n` version; the newest holding it has the same bytes."""
    versions = renamed(s.versions(project, run), base)
    assert versions and versions[0] == base, s.versions(project, run)
    newest = {}
    for v in versions:  # later versions win
        for path, sha in s.archived_files(f"{project}/{run}/{v}").items():
            newest[path] = sha
    top = s.inbox(project, run, base)
    seen = {}
    for dirpath, _, filenames in os.walk(top):
        for name in filenames:
            full = os.path.join(dirpath, name)
            seen[os.path.relpath(full, top)] = sha256_file(full)
    assert seen, f"inbox/{project}/{run}/{base} is empty"
    for path, sha in seen.items():
        assert newest.get(path) == sha or newest.get(f"{base}/{path}") == sha, \
            (path, sorted(newest))


def assert_resumed(s: Scenario, job: str, first_step: int, loaded: str, written: list[str]):
    """`job` went on at `first_step` and ended with the weights of the uninterrupted
    reference run; it read the archived version `loaded`, so each version it wrote has it
    as an input and the first one as its parent."""
    report = s.report(job)
    assert report["first_step"] == first_step
    assert report["final_state_sha256"] == s.report("ref")["final_state_sha256"]
    for ref in written:
        sidecar = s.sidecar(ref)
        assert loaded in inputs_of(sidecar), (ref, sidecar["lineage"])
    first = s.sidecar(written[0])
    assert parent_of(first) == loaded, (written[0], first["lineage"])


def assert_refused_makes_and_writes(sealed_dir: str):
    """In a sealed checkpoint directory of the working view: makedirs(exist_ok=True)
    works, writing a new file is EROFS."""
    assert os.path.isdir(sealed_dir), sealed_dir
    os.makedirs(sealed_dir, exist_ok=True)
    with pytest.raises(OSError) as e:
        with open(os.path.join(sealed_dir, "added-later.txt"), "w") as f:
            f.write("x")
    assert e.value.errno == errno.EROFS, e.value


# == transformers Trainer ==================================================================

@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    """hf/a: preempted after checkpoint-6, then resumed (resume_from_checkpoint=True);
    hf/b: resumed from projects/hf/a/checkpoint-6; ft/r: fine-tuned from
    projects/hf/a/final; a reference run on local disk beside the first. No project
    names a primary metric: `best` follows the Trainer's metric_for_best_model."""
    with Scenario(tmp_path_factory, "trainer") as s:
        a, b = s.inbox("hf", "a"), s.inbox("hf", "b")
        s.run(Job("ref", "hf_trainer.py", s.local("hf")),
              Job("a1", "hf_trainer.py", a, ["--stop-after-step", 6]))
        if s.ok("a1", rc=PREEMPTED) and s.wait_versions("hf/a/checkpoint-6"):
            s.run(Job("a2", "hf_trainer.py", a, ["--resume-from-checkpoint", "true"]),
                  Job("b", "hf_trainer.py", b,
                      ["--resume-from-checkpoint", s.projects("hf", "a", "checkpoint-6")]))
        if s.ok("a2") and s.wait_versions("hf/a/final"):
            s.run(Job("ft", "hf_trainer.py", s.inbox("ft", "r"),
                      ["--init-from", s.projects("hf", "a", "final"), "--max-steps", 4]))
        expected = [f"{p}/{name}" for p, job in (("hf/a", "a1"), ("hf/a", "a2"), ("hf/b", "b"),
                                                  ("ft/r", "ft"))
                    if s.ok(job, rc=PREEMPTED if job == "a1" else 0)
                    for name in s.jobs[job].report["checkpoints"]]
        s.wait_versions(*expected)
        s.settle()
        yield s


def test_trainer_jobs_finish(trainer):
    assert_finished(trainer.job("ref"))
    ref = trainer.report("ref")
    # the premise of the best-model checks: evaluation loss falls, then rises
    assert ref["best_model_checkpoint"] == "checkpoint-8", ref["evaluations"]
    assert ref["evaluations"][-1][0] == 12 and ref["evaluations"][-1][1] > ref["best_metric"]
    a1 = trainer.job("a1")
    assert_finished(a1, rc=PREEMPTED)
    assert a1.report["stopped_after"] == 6
    for name in ("a2", "b", "ft"):
        assert_finished(trainer.job(name))
    assert not trainer.problems, trainer.problems


def test_trainer_checkpoints_are_archived_byte_identical(trainer):
    """Every checkpoint each job saved, those rotated away by save_total_limit too, is a
    version named after its directory holding exactly the bytes the job wrote; the
    deterministic files equal the reference run's."""
    ref = trainer.report("ref")["checkpoints"]
    for project, run, jobs in (("hf", "a", ("a1", "a2")), ("hf", "b", ("b",))):
        saved = {}
        for job in jobs:
            saved.update(trainer.report(job)["checkpoints"])
        assert sorted(saved, key=lambda n: int(n.split("-")[1])) == [
            f"checkpoint-{n}" for n in ((2, 4, 6, 8, 10, 12) if run == "a" else (8, 10, 12))]
        for name, written in saved.items():
            version = f"{project}/{run}/{name}"
            sidecar = trainer.sidecar(version)
            assert sidecar["kind"] == "checkpoint", (version, sidecar.get("kind"))
            assert sidecar["inbox"]["path"] == name, (version, sidecar.get("inbox"))
            assert trainer.archived_files(version) == written, version
            for f in TRAINER_DETERMINISTIC:
                assert written[f] == ref[name][f], (version, f)


def test_trainer_ends_with_the_best_checkpoints_weights(trainer):
    """load_best_model_at_end: the model the job ends with (and saves as `final`) is
    checkpoint-8's, the best, not checkpoint-12, the last."""
    best = state_sha256(load_file(trainer.projects("hf", "a", "checkpoint-8", "model.safetensors")))
    last = state_sha256(load_file(trainer.projects("hf", "a", "checkpoint-12",
                                                   "model.safetensors")))
    assert best != last
    for job in ("ref", "a2", "b"):
        report = trainer.report(job)
        assert report["best_model_checkpoint"] == "checkpoint-8", (job, report["evaluations"])
        assert report["final_state_sha256"] == best, job
    for run in ("a", "b"):
        final = trainer.projects("hf", run, "final", "model.safetensors")
        assert sha256_file(final) == trainer.report("ref")["loose_files"]["model.safetensors"]
        assert state_sha256(load_file(final)) == best


def test_trainer_version_names_and_kinds(trainer):
    """checkpoint-N per checkpoint, `final` for save_model/save_metrics/save_state in the
    run directory, `runs`, `runs~2`… (kind files) for TensorBoard; latest and best are
    checkpoints."""
    for run, job, checkpoints in (("a", "a2", (2, 4, 6, 8, 10, 12)), ("b", "b", (8, 10, 12))):
        versions = trainer.versions("hf", run)
        logs = renamed(versions, "runs")
        assert logs and logs[0] == "runs", versions
        assert sorted(set(versions) - set(logs)) == sorted(
            [f"checkpoint-{n}" for n in checkpoints] + ["final"]), versions
        final = trainer.sidecar(f"hf/{run}/final")
        assert final["inbox"]["path"] == "", final.get("inbox")
        loose = trainer.report(job)["loose_files"]
        assert set(loose) == TRAINER_LOOSE
        assert trainer.archived_files(f"hf/{run}/final") == loose
        assert_files_versions_stay_aside(trainer, "hf", run, ["runs"])
        assert_logs_archived(trainer, "hf", run, "runs")
        assert os.readlink(trainer.projects("hf", run, "best")) in ("checkpoint-8", "final")
        assert trainer.sidecar(f"hf/{run}/checkpoint-8")["best_by"] == {
            "metric": "eval_loss", "mode": "min",
            "source": "TrainingArguments.metric_for_best_model"}


def test_trainer_working_view_after_rotation(trainer):
    """The run directory reads like the local reference's: the checkpoints rotation kept
    (it sorts them by mtime, sealed ones too), the final files, runs/; what rotation
    removed is still archived."""
    for run in ("a", "b"):
        assert sorted(os.listdir(trainer.inbox("hf", run))) == \
            sorted(os.listdir(trainer.local("hf"))), run
    assert sorted(os.listdir(trainer.local("hf"))) == sorted(
        TRAINER_LOOSE | {"checkpoint-8", "checkpoint-12", "runs"})
    for name in ("checkpoint-2", "checkpoint-4", "checkpoint-6", "checkpoint-10"):
        assert os.path.isdir(trainer.projects("hf", "a", name))


def test_trainer_resumes_from_the_inbox(trainer):
    """resume_from_checkpoint=True finds checkpoint-6 (sealed) in the working view."""
    assert_resumed(trainer, "a2", 7, "hf/a/checkpoint-6", ["hf/a/checkpoint-8"])


def test_trainer_resumes_from_projects_into_another_run(trainer):
    assert_resumed(trainer, "b", 7, "hf/a/checkpoint-6", ["hf/b/checkpoint-8", "hf/b/checkpoint-10"])


def test_fine_tune_of_an_archived_model_records_its_base(trainer):
    ft = trainer.report("ft")
    base = trainer.projects("hf", "a", "final", "model.safetensors")
    assert ft["init_state_sha256"] == state_sha256(load_file(base))
    assert sorted(ft["checkpoints"]) == ["checkpoint-2", "checkpoint-4"]
    first = trainer.sidecar("ft/r/checkpoint-2")
    assert parent_of(first) == "hf/a/final", first["lineage"]
    for name in ("checkpoint-2", "checkpoint-4", "final"):
        sidecar = trainer.sidecar(f"ft/r/{name}")
        assert "hf/a/final" in inputs_of(sidecar), (name, sidecar["lineage"])


def test_trainer_metadata(trainer):
    """step and eval metrics from trainer_state.json, hyperparameters and seeds from
    training_args.bin, final metrics from all_results.json; every pickle scans clean."""
    evaluations = dict(trainer.report("ref")["evaluations"])
    for n in (2, 4, 6, 8, 10, 12):
        sidecar = trainer.sidecar(f"hf/a/checkpoint-{n}")
        assert sidecar["step"] == n
        assert sidecar["metrics"].get("eval_loss") == pytest.approx(evaluations[n], rel=1e-6)
        lineage = sidecar["lineage"]
        hyper = lineage.get("hyperparameters") or {}
        assert {k: hyper.get(k) for k in ("learning_rate", "per_device_train_batch_size",
                                          "max_steps")} == \
            {"learning_rate": 1e-2, "per_device_train_batch_size": 4, "max_steps": 12}, hyper
        assert {k: (lineage.get("seeds") or {}).get(k) for k in ("seed", "data_seed")} == \
            {"seed": 7, "data_seed": 7}, lineage.get("seeds")
    final = trainer.sidecar("hf/a/final")
    a2 = trainer.report("a2")
    assert final["metrics"].get("eval_loss") == pytest.approx(a2["final_eval_loss"], rel=1e-6)
    assert "train_loss" in final["metrics"], final["metrics"]
    for project, run in (("hf", "a"), ("hf", "b"), ("ft", "r")):
        assert_scan_clean(trainer, project, run)


def test_trainer_sealed_checkpoint_in_the_working_view(trainer):
    """A sealed checkpoint directory stays at its path: makedirs(exist_ok=True) works,
    writing into it is EROFS, rmtree hides it from the inbox and the archive keeps it."""
    sealed = trainer.inbox("hf", "b", "checkpoint-12")
    assert_refused_makes_and_writes(sealed)
    shutil.rmtree(sealed)
    assert "checkpoint-12" not in os.listdir(trainer.inbox("hf", "b"))
    assert trainer.archived_files("hf/b/checkpoint-12") == \
        trainer.report("b")["checkpoints"]["checkpoint-12"]


# == output_dir at the wrong depth =========================================================

@pytest.fixture(scope="module")
def wrong_depth(tmp_path_factory):
    """The Trainer with output_dir=inbox/<project>, Lightning with output_dir=inbox."""
    with Scenario(tmp_path_factory, "depth") as s:
        s.run(Job("trainer", "hf_trainer.py", s.inbox("hf")),
              Job("lightning", "lightning_ckpt.py", s.inbox()))
        yield s


@pytest.mark.parametrize("job, where, refused", [("trainer", ("hf",), "runs"),
                                                 ("lightning", (), "lightning_logs")])
def test_output_dir_at_the_wrong_depth_fails_fast(wrong_depth, job, where, refused):
    """The job's first log/checkpoint directory at the project or run-creating level is
    refused (EPERM) before any training, with `<name>.error` beside it saying why, and
    no project or run is left behind."""
    done = wrong_depth.job(job)
    assert done.returncode not in (0, None), done.describe()
    assert "Operation not permitted" in done.stderr or "PermissionError" in done.stderr, \
        done.describe()
    assert done.report is None  # it never got to the end…
    assert "'loss'" not in done.stdout and "Epoch 0" not in done.stdout  # …nor trained
    parent = wrong_depth.inbox(*where)
    left = set(os.listdir(parent)) - ({"hf"} if not where else set())
    assert left == {f"{refused}.error"}, left
    with open(os.path.join(parent, f"{refused}.error")) as f:
        assert f.read().strip(), "the .error file is empty"
    assert os.listdir(wrong_depth.projects()) == []
    assert not [d for d in os.listdir(wrong_depth.inbox()) if d not in ("hf",)
                and not d.endswith(".error")]


# == accelerate ==============================================================================

ACCELERATE_STEPS = {f"checkpoint_{i}": 2 * (i + 1) for i in range(4)}


@pytest.fixture(scope="module")
def accelerate(tmp_path_factory):
    """acc/x: save_state to explicit dirs (step_2, step_4); acc/y: load_state of
    projects/acc/x/step_4 and on to step 8; acc/auto: automatic naming, total_limit=2."""
    with Scenario(tmp_path_factory, "accelerate") as s:
        s.run(Job("ref", "accelerate_state.py", s.local("acc")),
              Job("x", "accelerate_state.py", s.inbox("acc", "x"),
                  ["--naming", "explicit", "--steps", 4]))
        if s.ok("x") and s.wait_versions("acc/x/step_4"):
            s.run(Job("auto", "accelerate_state.py", s.inbox("acc", "auto")),
                  Job("y", "accelerate_state.py", s.inbox("acc", "y"),
                      ["--naming", "explicit", "--resume-from", s.projects("acc", "x", "step_4")]))
        if s.ok("auto", "y"):
            s.wait_versions(*[f"acc/auto/checkpoint_{i}" for i in range(4)], "acc/y/step_8")
        s.settle()
        yield s


def test_accelerate_states_are_archived_byte_identical(accelerate):
    s = accelerate
    for name in ("ref", "x", "auto", "y"):
        assert_finished(s.job(name))
    assert not s.problems, s.problems
    ref = {v["step"]: v["files"] for v in s.report("ref")["saved"].values()}
    assert sorted(ref) == [2, 4, 6, 8]
    for run, names in (("auto", [f"checkpoints/checkpoint_{i}" for i in range(4)]),
                       ("x", ["step_2", "step_4"]), ("y", ["step_6", "step_8"])):
        saved = s.report(run)["saved"]
        assert sorted(saved) == names
        assert s.versions("acc", run) == sorted(os.path.basename(n) for n in names)
        for path, written in saved.items():
            version = f"acc/{run}/{os.path.basename(path)}"
            sidecar = s.sidecar(version)
            assert sidecar["kind"] == "checkpoint" and sidecar["inbox"]["path"] == path, \
                (version, sidecar.get("kind"), sidecar.get("inbox"))
            assert s.archived_files(version) == written["files"] == ref[written["step"]], version
        assert_scan_clean(s, "acc", run)
        assert os.readlink(s.projects("acc", run, "latest")) == os.path.basename(names[-1])
    # total_limit=2 removed the oldest two from the working view; the archive keeps them
    assert sorted(os.listdir(s.inbox("acc", "auto", "checkpoints"))) == \
        ["checkpoint_2", "checkpoint_3"]


def test_accelerate_load_state_from_projects(accelerate):
    assert_resumed(accelerate, "y", 5, "acc/x/step_4", ["acc/y/step_6", "acc/y/step_8"])
    assert_refused_makes_and_writes(accelerate.inbox("acc", "y", "step_6"))


# == Lightning ===============================================================================

@pytest.fixture(scope="module")
def lightning(tmp_path_factory):
    """lt/r: 3 epochs, then fit(ckpt_path="last") up to 5; a 5-epoch reference run."""
    with Scenario(tmp_path_factory, "lightning") as s:
        s.run_then_resume("lightning_ckpt.py", "lt", "r", ["--max-epochs", 3], ["--resume"])
        yield s


def lightning_saved(s: Scenario) -> list[dict]:
    return s.report("a")["saved"] + s.report("b")["saved"]


def test_lightning_checkpoints_are_archived(lightning):
    """Each `*.ckpt` is a version named after the file; the tensors equal the reference
    run's at the same step; `last.ckpt`, rewritten every epoch, is `last`, `last~2`…, each
    one a complete last.ckpt the job wrote, the newest its final one."""
    s = lightning
    for name in ("ref", "a", "b"):
        assert_finished(s.job(name))
    assert not s.problems, s.problems
    ref = {(x["path"], x["step"]): x["state_sha256"] for x in s.report("ref")["saved"]}
    saved = lightning_saved(s)
    named = [x for x in saved if x["path"] != "last.ckpt"]
    assert [x["path"] for x in named] == ["epoch=0-step=3.ckpt", "epoch=1-step=6.ckpt",
                                          "epoch=2-step=9.ckpt", "epoch=4-step=15.ckpt"]
    for x in named:
        version = f"lt/r/{x['path'][:-len('.ckpt')]}"
        sidecar = s.sidecar(version)
        assert sidecar["kind"] == "checkpoint" and sidecar["inbox"]["path"] == x["path"], \
            (version, sidecar.get("kind"), sidecar.get("inbox"))
        assert s.archived_files(version) == {x["path"]: x["sha256"]}
        assert x["state_sha256"] == ref[(x["path"], x["step"])]
        loaded = torch.load(s.projects(version, x["path"]), weights_only=False)
        assert state_sha256(loaded["state_dict"]) == x["state_sha256"]
    versions = s.versions("lt", "r")
    lasts = renamed(versions, "last")
    assert lasts and lasts[0] == "last", versions
    written = [x["sha256"] for x in saved if x["path"] == "last.ckpt"]
    for v in lasts:
        files = s.archived_files(f"lt/r/{v}")
        assert list(files) == ["last.ckpt"] and files["last.ckpt"] in written, v
        assert s.sidecar(f"lt/r/{v}")["inbox"]["path"] == "last.ckpt"
    assert s.archived_files(f"lt/r/{lasts[-1]}")["last.ckpt"] == written[-1]
    assert set(versions) - set(lasts) - set(renamed(versions, "lightning_logs")) == \
        {x["path"][:-len(".ckpt")] for x in named}
    assert_files_versions_stay_aside(s, "lt", "r", ["lightning_logs"])
    assert_logs_archived(s, "lt", "r", "lightning_logs")
    assert_scan_clean(s, "lt", "r")


def test_lightning_resumes_from_last_and_loads_the_best(lightning):
    s = lightning
    ref, a, b = (s.report(n) for n in ("ref", "a", "b"))
    assert b["best_model_path"] == ref["best_model_path"] == "epoch=2-step=9.ckpt"
    assert b["best_state_sha256"] == ref["best_state_sha256"] != ref["final_state_sha256"]
    assert b["global_step"] == 15
    # the last.ckpt it resumed from: the `last` version holding the first job's final one
    resumed = [v for v in renamed(s.versions("lt", "r"), "last")
               if s.archived_files(f"lt/r/{v}")["last.ckpt"] == a["saved"][-1]["sha256"]]
    assert resumed, "the last.ckpt of the first job is not archived"
    assert_resumed(s, "b", 10, f"lt/r/{resumed[-1]}", ["lt/r/epoch=4-step=15"])
    # rotation (save_top_k=2) removed files from the working view, not from the archive
    assert sorted(os.listdir(s.inbox("lt", "r"))) == sorted(os.listdir(s.local("lt")))
    for x in a["removed"] + b["removed"]:
        assert os.path.isdir(s.projects("lt", "r", x[:-len(".ckpt")])), x


def test_lightning_hyperparameters_and_seed(lightning):
    for v in ("epoch=2-step=9", "epoch=4-step=15"):
        lineage = lightning.sidecar(f"lt/r/{v}")["lineage"]
        hyper = lineage.get("hyperparameters") or {}
        assert {k: hyper.get(k) for k in ("hidden", "lr")} == {"hidden": 16, "lr": 0.05}, hyper
        assert (lineage.get("seeds") or {}).get("seed") == 7, lineage.get("seeds")


# == a plain torch.save loop =================================================================

@pytest.fixture(scope="module")
def torch_loop(tmp_path_factory):
    """tl/r: 4 steps, then --resume (the newest ckpts/model_*.pt by mtime) to step 8."""
    with Scenario(tmp_path_factory, "torchloop") as s:
        s.run_then_resume("torch_loop.py", "tl", "r", ["--steps", 4], ["--resume"],
                          ["tl/r/model_2", "tl/r/model_4"], ["tl/r/model_6", "tl/r/model_8"])
        yield s


def test_torch_save_loop_files_are_versions(torch_loop):
    s = torch_loop
    for name in ("ref", "a", "b"):
        assert_finished(s.job(name))
    assert not s.problems, s.problems
    ref = s.report("ref")["saved"]
    saved = {**s.report("a")["saved"], **s.report("b")["saved"]}
    assert sorted(saved) == sorted(ref) == [f"ckpts/model_{n}.pt" for n in (2, 4, 6, 8)]
    assert s.versions("tl", "r") == ["model_2", "model_4", "model_6", "model_8"]
    for path, x in saved.items():
        version = f"tl/r/{os.path.basename(path)[:-3]}"
        sidecar = s.sidecar(version)
        assert sidecar["kind"] == "checkpoint" and sidecar["inbox"]["path"] == path, \
            (version, sidecar.get("kind"), sidecar.get("inbox"))
        assert s.archived_files(version) == {os.path.basename(path): x["sha256"]} \
            or s.archived_files(version) == {path: x["sha256"]}
        assert x["sha256"] == ref[path]["sha256"], path
    assert os.readlink(s.projects("tl", "r", "latest")) == "model_8"
    assert_scan_clean(s, "tl", "r")
    assert sorted(os.listdir(s.inbox("tl", "r", "ckpts"))) == \
        sorted(os.listdir(os.path.join(s.local("tl"), "ckpts")))


def test_torch_save_loop_resumes_from_the_newest_file(torch_loop):
    """The newest file by mtime in ckpts/ (sealed, mtimes kept) is model_4.pt; ckpts/ was
    made again with makedirs(exist_ok=True)."""
    assert torch_loop.report("b")["resumed_from"] == "ckpts/model_4.pt"
    assert_resumed(torch_loop, "b", 5, "tl/r/model_4", ["tl/r/model_6", "tl/r/model_8"])
