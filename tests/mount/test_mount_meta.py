"""Lineage metadata through a real mount and the real CLI: the version sidecar
`projects/<p>/<r>/<v>.json` of checkpoints copied in with real tools, the provenance of the
process that wrote them, the user's ckptfs.json over what the files say, project schemas,
aliases made with `ln -s` / `ln -sfn` / `rm`, `run.json`, and `ckptfs find`, `log`,
`lineage`, `show` and `import` over a store with known versions."""
import errno
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
from types import SimpleNamespace

import pytest

from ckptfs.store import Store
from tests.helpers import mount_meta as helpers
from tests.helpers.cli import run_cli_checked, run_cli_many
from tests.helpers.inbox import sh, stats, verify_ok, wait_sealed
from tests.helpers.mount_meta import (
    HF_FILES,
    PICKLES,
    PLAIN_ENV,
    SAFETENSORS,
    git_repo,
    ok,
    paths,
)
from tests.helpers.mounts import unmount
from tests.helpers.samples import make_hf_checkpoint
from tests.helpers.stores import new_store
from tests.helpers.waiting import wait_for

known = helpers.known  # a fixture (tests/helpers/mount_meta.py)


SEAL_AFTER = "0.5"


CKPTFS = os.path.join(os.path.dirname(sys.executable), "ckptfs")


HYPERPARAMETERS = {  # what training_args.json of make_hf_checkpoint holds, seeds and the
    "output_dir": "out", "learning_rate": 5e-05, "weight_decay": 0.01,  # nested dict apart
    "per_device_train_batch_size": 16, "max_steps": 1000, "optim": "adamw_torch",
    "lr_scheduler_type": "linear", "warmup_ratio": 0.1, "report_to": ["none"], "fp16": False,
}


CONFIG = {"path": "config.json", "architectures": ["BertModel"], "model_type": "bert",
          "transformers_version": "4.44.0"}


@pytest.fixture(scope="module")
def module_mount(tmp_path_factory):
    """module_mount(store, *options) -> mount point, kept for the whole module."""
    if not os.path.exists("/dev/fuse"):
        pytest.skip("/dev/fuse is missing: FUSE tests need it (they run in CI as root)")
    mounted = []

    def do_mount(store, *options):
        mountpoint = str(tmp_path_factory.mktemp("mnt"))
        mounted.append(mountpoint)
        run_cli_checked("mount", store, mountpoint, *options)
        return mountpoint
    yield do_mount
    for mountpoint in mounted:
        unmount(mountpoint)


def sidecar(mnt: str, ref: str) -> dict:
    with open(os.path.join(mnt, "projects", ref + ".json")) as f:
        return json.load(f)


def sidecar_text(mnt: str, ref: str) -> str:
    with open(os.path.join(mnt, "projects", ref + ".json")) as f:
        return f.read()


def journal(store: str) -> list[dict]:
    with open(os.path.join(store, "journal", "journal.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


# ref -> (step, eval_loss, loss, eval_accuracy, data version, user tags)
HF_VERSIONS = {
    "nlp/run-a/checkpoint-100": (100, 0.45, 0.9, 0.70, "v3", ["nightly"]),
    "nlp/run-a/checkpoint-200": (200, 0.35, 0.6, 0.78, "v2", []),
    "nlp/run-a/checkpoint-300": (300, 0.30, 0.5, 0.80, "v3.1", []),
    "cv/run-b/ckpt-1": (50, 0.60, 1.2, 0.55, "v3", ["vision", "nightly"]),
}


@pytest.fixture(scope="module")
def hf(tmp_path_factory, module_mount):
    """Four HF checkpoints copied with one `cp -r` per run into a fresh mount, sealed."""
    root = tmp_path_factory.mktemp("hf")
    sources = {}
    for ref, (step, eval_loss, loss, accuracy, data, tags) in HF_VERSIONS.items():
        p, _r, v = ref.split("/")
        sources[ref] = make_hf_checkpoint(
            root / "src" / p / v, step, seed=7, eval_loss=eval_loss, loss=loss,
            eval_accuracy=accuracy,
            user={"lineage": {"data": {"name": "wiki", "version": data}}, "tags": tags})
    store = new_store(root)
    mnt = module_mount(store, "--seal-after", SEAL_AFTER)
    copy = (f"mkdir -p {mnt}/inbox/nlp/run-a {mnt}/inbox/cv/run-b && "
            f"cp -r src/nlp/checkpoint-100 src/nlp/checkpoint-200 src/nlp/checkpoint-300 "
            f"{mnt}/inbox/nlp/run-a/ && cp -r src/cv/ckpt-1 {mnt}/inbox/cv/run-b/")
    ok(sh(copy, cwd=root, env=PLAIN_ENV))
    for ref in HF_VERSIONS:
        wait_sealed(mnt, ref)
    return SimpleNamespace(store=store, mnt=mnt, root=os.path.realpath(root), sources=sources)


def test_sidecar_facts_of_copied_hf_checkpoints(hf):
    docs = {ref: sidecar(hf.mnt, ref) for ref in HF_VERSIONS}
    for ref, (step, eval_loss, loss, accuracy, data, tags) in HF_VERSIONS.items():
        doc = docs[ref]
        p, r, v = ref.split("/")
        assert (doc["schema"], doc["project"], doc["run"], doc["version"]) == \
            ("ckptfs.version/1", p, r, v)
        assert doc["step"] == step
        assert doc["epoch"] == step / 100
        # loss: the last train entry; eval_*: the last eval entry, bookkeeping left out
        assert doc["metrics"] == {"eval_accuracy": accuracy, "eval_loss": eval_loss, "loss": loss}
        lineage = doc["lineage"]
        assert lineage["hyperparameters"] == HYPERPARAMETERS
        assert lineage["seeds"] == {"seed": 7, "data_seed": 8}
        assert lineage["data"] == {"name": "wiki", "version": data}
        assert lineage["environment"] == {"host": socket.gethostname(),
                                          "packages": {"transformers": "4.44.0"}}
        assert "code" not in lineage  # cp ran outside any git repository
        assert doc["extracted"]["safetensors"] == SAFETENSORS
        assert doc["extracted"]["config"] == CONFIG
        assert doc["extracted"]["pickles"] == PICKLES
        assert doc["extracted"]["trainer_state"] == {
            "path": "trainer_state.json", "global_step": step, "epoch": step / 100,
            "max_steps": 1000, "best_metric": eval_loss,
            "best_model_checkpoint": f"out/checkpoint-{step}", "log_entries": 4,
            "last_loss": loss, "last_eval": {"eval_loss": eval_loss, "eval_accuracy": accuracy}}
        assert doc["extracted"]["training_args"] == {"path": "training_args.json", "keys": 13}
        assert doc["warnings"] == []
        assert doc["sealed_by"] == {"uid": 0, "user": "root"}
        assert doc["notes"] is None
        prov = doc["provenance"]
        assert prov["via"] == "mount"
        assert prov["command_line"][:2] == ["cp", "-r"]
        assert os.path.basename(prov["executable"]) == "cp"
        assert prov["cwd"] == hf.root
        assert prov["environment"] == {}
        assert prov["git"] is None
        assert doc["storage"]["logical_bytes"] == sum(
            os.path.getsize(os.path.join(hf.sources[ref], name)) for name in HF_FILES)
        assert re.fullmatch(r"[0-9a-f]{64}", doc["digest"])
    # parents: a run's versions descend from each other; the first has none
    assert docs["nlp/run-a/checkpoint-100"]["lineage"].get("parent") is None
    assert docs["nlp/run-a/checkpoint-200"]["lineage"]["parent"] == {
        "project": "nlp", "run": "run-a", "version": "checkpoint-100", "source": "previous"}
    assert docs["nlp/run-a/checkpoint-300"]["lineage"]["parent"] == {
        "project": "nlp", "run": "run-a", "version": "checkpoint-200", "source": "previous"}
    assert docs["cv/run-b/ckpt-1"]["lineage"].get("parent") is None
    # tags: the user's, plus every alias naming the version; latest only on the newest
    assert docs["nlp/run-a/checkpoint-100"]["tags"] == ["nightly"]
    assert docs["nlp/run-a/checkpoint-200"]["tags"] == []
    assert docs["nlp/run-a/checkpoint-300"]["tags"] == ["latest"]
    assert docs["nlp/run-a/checkpoint-300"]["aliases"] == ["latest"]
    assert docs["nlp/run-a/checkpoint-100"]["aliases"] == []
    assert docs["cv/run-b/ckpt-1"]["tags"] == ["latest", "nightly", "vision"]
    assert os.readlink(f"{hf.mnt}/projects/nlp/run-a/latest") == "checkpoint-300"


def test_sidecar_files_match_sha256sum_of_the_sources(hf):
    for ref, src in hf.sources.items():
        sums = ok(sh("sha256sum *", cwd=src)).stdout.splitlines()
        expected = {line.split()[1]: line.split()[0] for line in sums}
        assert sorted(expected) == HF_FILES
        doc = sidecar(hf.mnt, ref)
        assert {f["path"]: f["sha256"] for f in doc["files"]} == expected
        for f in doc["files"]:
            st = os.stat(os.path.join(src, f["path"]))
            assert (f["size"], f["mode"]) == (st.st_size, st.st_mode & 0o7777)
            assert isinstance(f["stored_bytes"], int) and f["stored_bytes"] >= 0
        assert doc["symlinks"] == []
        # and the sealed bytes are those sha256sum saw
        check = sh("sha256sum --strict -c -", cwd=f"{hf.mnt}/projects/{ref}", input="\n".join(sums) + "\n")
        assert check.returncode == 0 and check.stdout.count(": OK") == len(HF_FILES), check.stdout


def test_sidecar_is_pretty_json_with_identity_first(hf):
    text = sidecar_text(hf.mnt, "nlp/run-a/checkpoint-200")
    assert text.startswith('{\n  "schema": "ckptfs.version/1",\n  "project": "nlp",\n'
                           '  "run": "run-a",\n  "version": "checkpoint-200",\n  "sealed_at": ')
    assert text.endswith("}\n")
    doc = json.loads(text)
    assert list(doc) == ["schema", "project", "run", "version", "sealed_at", "sealed_by", "digest",
                         "signature", "kind", "inbox", "tags", "aliases", "notes", "step", "epoch",
                         "metrics", "best_by",
                         "lineage", "storage", "provenance", "extracted", "scan", "warnings",
                         "files", "symlinks"]
    assert '\n      "version": "v2"\n' in text  # lineage.data.version, greppable as written
    assert os.path.getsize(f"{hf.mnt}/projects/nlp/run-a/checkpoint-200.json") == len(text.encode())


def test_grep_finds_the_sidecars_by_data_version(hf):
    found = sh(f"""grep -rl '"version": "v3"' {hf.mnt}/projects/*/*/*.json""", executable="/bin/bash")
    assert found.returncode == 0, found.stderr
    assert sorted(found.stdout.splitlines()) == [
        f"{hf.mnt}/projects/cv/run-b/ckpt-1.json",
        f"{hf.mnt}/projects/nlp/run-a/checkpoint-100.json"]


def test_run_json_lists_the_versions_in_sealing_order(hf):
    with open(f"{hf.mnt}/projects/nlp/run-a/run.json") as f:
        text = f.read()
    run = json.loads(text)
    assert text.startswith('{\n  "schema": "ckptfs.run/1",\n')
    assert (run["schema"], run["project"], run["run"]) == ("ckptfs.run/1", "nlp", "run-a")
    assert run["aliases"] == {"latest": "checkpoint-300"}
    refs = [f"nlp/run-a/{v['version']}" for v in run["versions"]]
    assert refs == ["nlp/run-a/checkpoint-100", "nlp/run-a/checkpoint-200", "nlp/run-a/checkpoint-300"]
    for entry, ref in zip(run["versions"], refs):
        step, eval_loss, loss, accuracy, _data, tags = HF_VERSIONS[ref]
        doc = sidecar(hf.mnt, ref)
        assert entry["step"] == step and entry["epoch"] == step / 100
        assert entry["metrics"] == {"eval_accuracy": accuracy, "eval_loss": eval_loss, "loss": loss}
        assert entry["sealed_at"] == doc["sealed_at"]
        assert entry["logical_bytes"] == doc["storage"]["logical_bytes"]
        assert entry["stored_bytes"] == doc["storage"]["new_stored_bytes"]
        assert isinstance(entry["stored_bytes"], int) and entry["stored_bytes"] > 0
        assert entry["parent"] == doc["lineage"].get("parent")
        assert entry["tags"] == doc["tags"]
    assert [e["sealed_at"] for e in run["versions"]] == sorted(e["sealed_at"] for e in run["versions"])
    with open(f"{hf.mnt}/projects/cv/run-b/run.json") as f:
        other = json.load(f)
    assert [v["version"] for v in other["versions"]] == ["ckpt-1"]
    assert other["versions"][0]["parent"] is None
    assert sorted(os.listdir(f"{hf.mnt}/projects/nlp/run-a")) == [
        "checkpoint-100", "checkpoint-100.json", "checkpoint-200", "checkpoint-200.json",
        "checkpoint-300", "checkpoint-300.json", "latest", "run.json"]


@pytest.fixture(scope="module")
def meta(tmp_path_factory, module_mount):
    root = tmp_path_factory.mktemp("meta")
    store = new_store(root)
    mnt = module_mount(store, "--seal-after", SEAL_AFTER)
    return SimpleNamespace(store=store, mnt=mnt, root=root)


SECRET = "hf_secret_value_4af1c2"


def test_provenance_of_a_python_writer_in_a_git_repository(meta, tmp_path):
    repo, head = git_repo(tmp_path / "repo")
    branch = ok(sh("git rev-parse --abbrev-ref HEAD", cwd=repo)).stdout.strip()
    env = {"PATH": os.environ["PATH"], "SLURM_JOB_ID": "77", "HF_TOKEN": SECRET,
           "MY_API_KEY": SECRET, "UNLISTED_VAR": "x"}
    script = os.path.join(repo, "train.py")
    dest = f"{meta.mnt}/inbox/prov/run-1/v1"
    ok(subprocess.run([sys.executable, script, dest], cwd=repo, env=env, capture_output=True, text=True))
    wait_sealed(meta.mnt, "prov/run-1/v1")
    text = sidecar_text(meta.mnt, "prov/run-1/v1")
    assert SECRET not in text and "HF_TOKEN" not in text and "MY_API_KEY" not in text
    doc = json.loads(text)
    prov = doc["provenance"]
    assert prov["via"] == "mount"
    assert prov["git"]["commit"] == head
    assert prov["git"]["branch"] == branch
    assert prov["git"]["root"] == repo and prov["git"]["repository"] == repo
    assert prov["command_line"] == [sys.executable, script, dest]
    assert prov["cwd"] == repo
    assert prov["environment"] == {"SLURM_JOB_ID": "77"}
    assert prov["uid"] == 0 and prov["user"] == "root"
    assert prov["python"] == f"{sys.version_info.major}.{sys.version_info.minor}"
    import numpy
    assert prov["packages"]["numpy"] == numpy.__version__
    assert doc["sealed_by"] == {"uid": 0, "user": "root"}
    assert doc["lineage"]["code"] == {"git_commit": head, "branch": branch, "repository": repo}
    assert doc["lineage"]["environment"]["python"] == prov["python"]
    assert doc["lineage"]["environment"]["packages"]["numpy"] == numpy.__version__
    assert (doc["step"], doc["metrics"]) == (3, {"eval_loss": 0.25})
    assert [f["path"] for f in doc["files"]] == ["ckptfs.json", "weights.bin"]
    assert doc["warnings"] == []


def test_provenance_survives_a_remount_and_follows_the_projects_env_allow(tmp_path, mount):
    repo, head = git_repo(tmp_path / "repo")
    store = new_store(tmp_path)
    run_cli_checked("config", "set", store, "prov", "env_allow=MY_*,SLURM_JOB_ID")
    mnt = mount(store, "--seal-after", "60")
    env = {"PATH": os.environ["PATH"], "SLURM_JOB_ID": "5", "MY_VAR": "1", "MY_TOKEN": SECRET,
           "CUDA_VISIBLE_DEVICES": "0"}  # allowed by default, not by this project's list
    script = os.path.join(repo, "train.py")
    dest = f"{mnt}/inbox/prov/r/v1"
    ok(subprocess.run([sys.executable, script, dest], cwd=repo, env=env, capture_output=True,
                      text=True))
    ok(sh(f"echo more > {dest}/notes.txt", cwd=tmp_path, env=PLAIN_ENV,  # a second writer
          executable="/bin/bash"))
    assert "unmounted" in run_cli_checked("umount", mnt).stdout.decode()
    wait_for(lambda: not os.path.exists(os.path.join(store, "spool", "daemon.running")),
             "the daemon to finish", 15)
    mnt = mount(store, "--seal-after", SEAL_AFTER)
    wait_sealed(mnt, "prov/r/v1")
    text = sidecar_text(mnt, "prov/r/v1")
    assert SECRET not in text
    prov = json.loads(text)["provenance"]
    assert prov["command_line"] == [sys.executable, script, dest]
    assert prov["git"]["commit"] == head
    assert prov["environment"] == {"MY_VAR": "1", "SLURM_JOB_ID": "5"}
    assert [os.path.basename(w["executable"]) for w in prov["other_writers"]] == ["bash"]
    assert not os.path.exists(os.path.join(store, "spool", "provenance", "prov", "r", "v1.json"))


def test_writers_working_inside_the_mount_do_not_hang_it(meta, tmp_path):
    """rsync's receiver changes into its destination, and a script may run in the version
    directory: the daemon must not look for .git there (it would wait for the writer)."""
    src = make_hf_checkpoint(tmp_path / "src" / "v1", 10)
    inbox = f"{meta.mnt}/inbox/inside/r"
    os.makedirs(f"{inbox}/v2")
    copy = subprocess.run(["rsync", "-a", f"{src}/", f"{inbox}/v1/"], cwd=tmp_path, env=PLAIN_ENV,
                          capture_output=True, text=True, timeout=20)
    ok(copy)
    writer = subprocess.run([sys.executable, "-c", "open('notes.txt', 'wb').write(b'w' * 100)"],
                            cwd=f"{inbox}/v2", env=PLAIN_ENV, capture_output=True, text=True,
                            timeout=20)
    ok(writer)
    for v in ("v1", "v2"):
        wait_sealed(meta.mnt, f"inside/r/{v}")
    rsynced = sidecar(meta.mnt, "inside/r/v1")["provenance"]
    assert os.path.basename(rsynced["executable"]) == "rsync"
    assert rsynced["git"] is None
    assert sidecar(meta.mnt, "inside/r/v1")["step"] == 10
    scripted = sidecar(meta.mnt, "inside/r/v2")["provenance"]
    assert scripted["cwd"] == os.path.realpath(f"{inbox}/v2")  # where it ran, as it was then
    assert scripted["git"] is None


def test_ckptfs_json_wins_over_extracted_facts_and_provenance(meta, tmp_path):
    repo, head = git_repo(tmp_path / "repo")
    src = tmp_path / "src"
    make_hf_checkpoint(src / "base" / "v1", 100, eval_loss=0.5)
    make_hf_checkpoint(src / "ft" / "v0", 100, eval_loss=0.6)
    make_hf_checkpoint(src / "ft" / "v1", 500, eval_loss=0.42, loss=0.7, eval_accuracy=0.81, user={
        "step": 777, "epoch": 9.5, "notes": "fine-tuned on squad",
        "tags": ["candidate"],
        "metrics": {"eval_loss": 0.111, "bleu": 30.5},
        "lineage": {"parent": "base/run-0/v1",
                    "code": {"git_commit": "abc123def"},
                    "data": {"name": "squad", "version": "v2"},
                    "hyperparameters": {"learning_rate": 1e-4, "lora_rank": 8},
                    "seeds": {"seed": 99}}})
    make_hf_checkpoint(src / "ft" / "v2", 600, user={"lineage": {"parent": "ghost/run/v9"}})
    ok(sh(f"mkdir -p {meta.mnt}/inbox/base/run-0 {meta.mnt}/inbox/merge/ft && "
          f"cp -r {src}/base/v1 {meta.mnt}/inbox/base/run-0/ && "
          f"cp -r {src}/ft/v0 {src}/ft/v1 {src}/ft/v2 {meta.mnt}/inbox/merge/ft/",
          cwd=repo, env=PLAIN_ENV))
    for ref in ("base/run-0/v1", "merge/ft/v0", "merge/ft/v1", "merge/ft/v2"):
        wait_sealed(meta.mnt, ref)
    doc = sidecar(meta.mnt, "merge/ft/v1")
    assert doc["step"] == 777 and doc["epoch"] == 9.5
    assert doc["metrics"] == {"bleu": 30.5, "eval_accuracy": 0.81, "eval_loss": 0.111, "loss": 0.7}
    assert doc["notes"] == "fine-tuned on squad"
    assert doc["tags"] == ["candidate"]  # v2 is the latest
    lineage = doc["lineage"]
    assert lineage["parent"] == {"project": "base", "run": "run-0", "version": "v1",
                                 "source": "explicit"}
    # ckptfs.json over provenance: its commit wins, provenance fills in the rest
    assert doc["provenance"]["git"]["commit"] == head
    assert lineage["code"]["git_commit"] == "abc123def"
    assert lineage["code"]["repository"] == repo
    assert lineage["data"] == {"name": "squad", "version": "v2"}
    assert lineage["hyperparameters"] == {**HYPERPARAMETERS, "learning_rate": 1e-4, "lora_rank": 8}
    assert lineage["seeds"] == {"seed": 99, "data_seed": 1}
    # what the files say is still there, as they say it
    assert doc["extracted"]["trainer_state"]["global_step"] == 500
    assert doc["extracted"]["trainer_state"]["last_eval"] == {"eval_loss": 0.42, "eval_accuracy": 0.81}
    assert doc["warnings"] == []
    ghost = sidecar(meta.mnt, "merge/ft/v2")
    assert ghost["lineage"]["parent"] == {"project": "ghost", "run": "run", "version": "v9",
                                          "source": "explicit"}
    assert ghost["warnings"] == ["lineage.parent ghost/run/v9 is not in this store (kept as given)"]
    assert sidecar(meta.mnt, "merge/ft/v0")["lineage"].get("parent") is None
    base, ghostly = run_cli_many(
        ("lineage", meta.store, "base/run-0/v1", "--format", "json"),
        ("lineage", meta.store, "merge/ft/v2", "--format", "text"))
    assert json.loads(base.stdout)["descendants"] == [
        {"ref": "merge/ft/v1", "parent": "base/run-0/v1", "source": "explicit"}]
    assert ghostly.stdout.decode() == ("  ghost/run/v9 (not in this store)  (explicit parent)\n"
                                       "* merge/ft/v2 [latest]\n")
    assert sidecar(meta.mnt, "base/run-0/v1")["lineage"]["code"]["git_commit"] == head


def test_malformed_inputs_never_block_the_seal(meta, tmp_path):
    src = tmp_path / "src"
    bad_st = make_hf_checkpoint(src / "bad-st", 10)
    with open(os.path.join(bad_st, "model.safetensors"), "r+b") as f:
        f.truncate(40)  # the header says it is longer than the whole file
        f.seek(0)
        header_len = int.from_bytes(f.read(8), "little")
    bad_ts = make_hf_checkpoint(src / "bad-ts", 20)
    with open(os.path.join(bad_ts, "trainer_state.json"), "w") as f:
        f.write('{"global_step": 20, "log_history": [')
    with open(os.path.join(bad_ts, "ckptfs.json"), "w") as f:
        f.write("{not json")
    make_hf_checkpoint(src / "bad-user", 30, eval_loss=0.33, user={
        "metrics": {"eval_loss": "abc", "bleu": 31.5}, "step": "thirty", "tags": ["ok", 5],
        "colour": "blue"})
    big = make_hf_checkpoint(src / "big-config", 40)
    os.unlink(os.path.join(big, "config.json"))
    inbox = f"{meta.mnt}/inbox/mal/r"
    ok(sh(f"mkdir -p {inbox} && cp -r {src}/bad-st {src}/bad-ts {src}/bad-user {src}/big-config "
          f"{inbox}/ && truncate -s 64M {inbox}/big-config/config.json", cwd=tmp_path, env=PLAIN_ENV))
    for v in ("bad-st", "bad-ts", "bad-user", "big-config"):
        wait_sealed(meta.mnt, f"mal/r/{v}")
    assert not [n for n in os.listdir(inbox) if n.endswith(".error")]

    doc = sidecar(meta.mnt, "mal/r/bad-st")
    assert doc["warnings"] == [f"model.safetensors: safetensors header length {header_len} is "
                               "larger than the file (40 bytes): skipped"]
    assert "safetensors" not in doc["extracted"]
    assert doc["step"] == 10 and doc["extracted"]["config"] == CONFIG  # the rest is read

    doc = sidecar(meta.mnt, "mal/r/bad-ts")
    assert len(doc["warnings"]) == 2
    assert doc["warnings"][0].startswith("trainer_state.json: not valid JSON (line 1 column ")
    assert doc["warnings"][0].endswith("): skipped")
    assert doc["warnings"][1] == "ckptfs.json: not valid JSON (line 1 column 2): ignored"
    assert doc["step"] is None and doc["epoch"] is None and doc["metrics"] == {}
    assert "trainer_state" not in doc["extracted"]
    assert doc["lineage"]["hyperparameters"] == HYPERPARAMETERS

    doc = sidecar(meta.mnt, "mal/r/bad-user")
    assert sorted(doc["warnings"]) == [
        "ckptfs.json: metrics.eval_loss: 'abc' is not of type 'number': ignored",
        "ckptfs.json: step: 'thirty' is not of type 'integer': ignored",
        "ckptfs.json: tags.1: 5 is not of type 'string': ignored",
        "ckptfs.json: unknown field 'colour' ignored"]
    # each bad value is dropped on its own: the extracted ones stand, the good ones are kept
    assert doc["metrics"] == {"bleu": 31.5, "eval_accuracy": 0.75, "eval_loss": 0.33, "loss": 1.0}
    assert doc["step"] == 30
    assert doc["tags"] == ["ok"]

    doc = sidecar(meta.mnt, "mal/r/big-config")
    assert doc["warnings"] == ["config.json: file is 67108864 bytes; JSON files over 16 MiB are "
                               "not read: skipped"]
    assert "config" not in doc["extracted"]
    assert doc["lineage"]["environment"].get("packages") is None  # no transformers_version read
    files = {f["path"]: f for f in doc["files"]}
    assert files["config.json"]["size"] == 64 << 20
    assert files["config.json"]["sha256"] == hashlib.sha256(bytes(64 << 20)).hexdigest()
    assert stats(meta.mnt)["seal_failures"] == 0


SCHEMA = {
    "type": "object", "required": ["lineage"],
    "properties": {"lineage": {
        "type": "object", "required": ["code", "data"],
        "properties": {
            "code": {"type": "object", "required": ["git_commit"]},
            "data": {"type": "object", "required": ["version"],
                     "properties": {"version": {"type": "string", "pattern": "^v[0-9]+$"}}}}}},
}


NOT_SATISFIED = {"lineage": {"code": {"branch": "main"}, "data": {"name": "wiki", "version": "three"}}}


SATISFIED = {"lineage": {"code": {"branch": "main", "git_commit": "abc123"},
                         "data": {"name": "wiki", "version": "v7"}}}


def test_schema_keeps_a_failing_version_in_the_inbox_until_fixed(meta, tmp_path):
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps(SCHEMA))
    out = run_cli_checked("schema", "set", meta.store, "gov", schema_file).stdout.decode()
    assert out == "schema of gov set: new versions are validated against it at seal\n"
    src = tmp_path / "src"
    make_hf_checkpoint(src / "v1", 10, user=NOT_SATISFIED)
    make_hf_checkpoint(src / "v2", 20, user=SATISFIED)
    inbox = f"{meta.mnt}/inbox/gov/r"
    ok(sh(f"mkdir -p {inbox} && cp -r {src}/v1 {src}/v2 {inbox}/", cwd=tmp_path, env=PLAIN_ENV))
    wait_sealed(meta.mnt, "gov/r/v2")  # the one that satisfies the schema passes at once
    assert not os.path.exists(f"{inbox}/v2.error")
    error_file = wait_for(lambda: os.path.exists(f"{inbox}/v1.error") and f"{inbox}/v1.error",
                          "gov/r/v1.error")
    with open(error_file) as f:
        error = f.read()
    assert "version gov/r/v1 does not satisfy the schema of project gov:\n" \
           "  lineage.code.git_commit: missing (rule: required)\n" \
           "  lineage.data.version: 'three' does not match '^v[0-9]+$' (rule: pattern)\n" in error
    assert "ckptfs schema show STORE gov" in error
    assert sorted(os.listdir(inbox)) == ["v1", "v1.error", "v2"]  # v2 sealed, where it was written
    assert sorted(os.listdir(f"{meta.mnt}/projects/gov/r")) == ["latest", "run.json", "v2", "v2.json"]
    status = run_cli_checked("status", meta.mnt).stdout.decode()
    assert "gov/r/v1: failed" in status and "lineage.code.git_commit: missing" in status

    # the fix: ckptfs.json rewritten in place, through the mount
    with open(f"{inbox}/v1/ckptfs.json", "w") as f:
        json.dump(SATISFIED, f)
    assert "v1.error" not in os.listdir(inbox)  # a change clears it
    wait_sealed(meta.mnt, "gov/r/v1")
    assert sorted(os.listdir(inbox)) == ["v1", "v2"]
    doc = sidecar(meta.mnt, "gov/r/v1")
    assert doc["lineage"]["code"]["git_commit"] == "abc123"
    assert doc["lineage"]["data"] == {"name": "wiki", "version": "v7"}
    assert doc["lineage"]["parent"]["version"] == "v2"  # sealed after v2
    assert doc["warnings"] == []

    # cleared: the same failing metadata now seals
    run_cli_checked("schema", "clear", meta.store, "gov")
    make_hf_checkpoint(src / "v3", 30, user=NOT_SATISFIED)
    ok(sh(f"cp -r {src}/v3 {inbox}/", cwd=tmp_path, env=PLAIN_ENV))
    wait_sealed(meta.mnt, "gov/r/v3")
    assert sidecar(meta.mnt, "gov/r/v3")["lineage"]["data"]["version"] == "three"


def test_schema_commands(meta, tmp_path):
    invalid = tmp_path / "invalid.json"
    invalid.write_text('{"type": 12}')
    proc = run_cli_checked("schema", "set", meta.store, "schemas", invalid, rc=1)
    assert proc.stderr.decode().startswith("ckptfs: error: not a valid JSON Schema: at type: 12 ")
    not_json = tmp_path / "not.json"
    not_json.write_text("{type: object")
    proc = run_cli_checked("schema", "set", meta.store, "schemas", not_json, rc=1)
    assert "not.json is not valid JSON" in proc.stderr.decode()
    proc = run_cli_checked("schema", "show", meta.store, "schemas", rc=1)
    assert proc.stderr.decode() == "ckptfs: error: project schemas has no schema\n"

    good = tmp_path / "schema.json"
    good.write_text(json.dumps(SCHEMA))
    run_cli_checked("schema", "set", meta.store, "schemas", good)
    shown = run_cli_checked("schema", "show", meta.store, "schemas")
    assert json.loads(shown.stdout) == SCHEMA
    assert run_cli_checked("schema", "set", meta.store, "schemas", "-",
                           input=b'{"type": "object"}').returncode == 0
    assert json.loads(run_cli_checked("schema", "show", meta.store, "schemas").stdout) == \
        {"type": "object"}
    assert run_cli_checked("schema", "clear", meta.store, "schemas").stdout == \
        b"schema of schemas cleared\n"
    run_cli_checked("schema", "show", meta.store, "schemas", rc=1)
    proc = run_cli_checked("schema", "clear", meta.store, "schemas", rc=1)
    assert b"has no schema of its own" in proc.stderr
    events = [(e["project"], e["schema"]) for e in journal(meta.store)
              if e["type"] == "project.schema" and e["project"] == "schemas"]
    assert events == [("schemas", SCHEMA), ("schemas", {"type": "object"}), ("schemas", None)]


@pytest.fixture(scope="module")
def alias_run(meta, tmp_path_factory):
    """nlp/r with step-1 (eval_loss 0.4) and step-2 (eval_loss 0.3), sealed in that order."""
    src = tmp_path_factory.mktemp("alias-src")
    make_hf_checkpoint(src / "step-1", 1, eval_loss=0.4)
    make_hf_checkpoint(src / "step-2", 2, eval_loss=0.3)
    ok(sh(f"mkdir -p {meta.mnt}/inbox/nlp/r && cp -r {src}/step-1 {src}/step-2 "
          f"{meta.mnt}/inbox/nlp/r/", cwd=src, env=PLAIN_ENV))
    wait_sealed(meta.mnt, "nlp/r/step-1")
    wait_sealed(meta.mnt, "nlp/r/step-2")
    return f"{meta.mnt}/projects/nlp/r"


def alias_events(store: str, alias: str) -> list[tuple]:
    return [(e["type"], e["version"], e.get("previous")) for e in journal(store)
            if e["type"].startswith("alias.") and e["alias"] == alias]


def test_ln_s_sets_ln_sfn_moves_rm_removes_an_alias(meta, alias_run):
    ok(sh("ln -s step-1 production", cwd=alias_run))
    assert os.readlink(f"{alias_run}/production") == "step-1"
    assert os.listdir(f"{alias_run}/production") == os.listdir(f"{alias_run}/step-1")
    step1 = sidecar(meta.mnt, "nlp/r/step-1")
    assert (step1["tags"], step1["aliases"]) == (["production"], ["production"])

    ok(sh("ln -sfn step-2 production", cwd=alias_run))
    assert os.readlink(f"{alias_run}/production") == "step-2"
    assert alias_events(meta.store, "production") == [("alias.set", "step-1", None),
                                                      ("alias.set", "step-2", "step-1")]
    assert sidecar(meta.mnt, "nlp/r/step-1")["tags"] == []
    assert sidecar(meta.mnt, "nlp/r/step-2")["tags"] == ["latest", "production"]
    # ln's temporary name is gone: only the two aliases are left
    assert run_cli_checked("tags", meta.store, "nlp/r").stdout.decode() == \
        "latest -> step-2\nproduction -> step-2\n"
    assert sorted(os.listdir(alias_run)) == ["latest", "production", "run.json", "step-1",
                                             "step-1.json", "step-2", "step-2.json"]

    ok(sh("rm production", cwd=alias_run))
    assert not os.path.lexists(f"{alias_run}/production")
    assert alias_events(meta.store, "production")[-1] == ("alias.removed", "step-2", None)
    assert sidecar(meta.mnt, "nlp/r/step-2")["tags"] == ["latest"]
    with open(f"{alias_run}/run.json") as f:
        assert json.load(f)["aliases"] == {"latest": "step-2"}


@pytest.mark.parametrize("command, message", [
    ("ln -s step-1 latest", "Read-only file system"),       # ln makes latest/step-1
    ("ln -sn step-1 latest", "File exists"),
    ("ln -sfn step-1 latest", "Operation not permitted"),   # symlink + rename onto latest
    ("ln -sfn step-1 best", "Operation not permitted"),
    ("rm latest", "Operation not permitted"),
    ("ln -s nosuch tag1", "Invalid argument"),
    ("ln -s ../../other/r/v1 tag1", "Invalid argument"),
    ("ln -s step-1 run.json", "File exists"),
    ("ln -s step-1 step-2.json", "File exists"),
    ("ln -sT step-1 step-2", "File exists"),
    ("ln -s step-1 notes.json", "Invalid argument"),
    ("ln -s step-1 notes.error", "Invalid argument"),
    ("touch newfile", "Read-only file system"),
    ("mkdir newdir", "Read-only file system"),
    ("rm step-1.json", "Read-only file system"),
    ("rm run.json", "Read-only file system"),
    ("rm -r step-1", "Read-only file system"),
    ("mv step-1.json renamed.json", "Read-only file system"),
    ("mv step-1 step-9", "Read-only file system"),
    ("touch step-1/new", "Read-only file system"),
    ("ln -s step-1 ../link", "Read-only file system"),
    ("ln -s nlp ../../newlink", "Read-only file system"),
    ("mkdir ../newrun", "Read-only file system"),
])
def test_what_the_run_directory_refuses(meta, alias_run, command, message):
    before = sorted(os.listdir(alias_run))
    seq = len(journal(meta.store))
    proc = sh(command, cwd=alias_run)
    assert proc.returncode != 0, command
    assert message in proc.stderr, proc.stderr
    assert sorted(os.listdir(alias_run)) == before
    assert os.readlink(f"{alias_run}/latest") == "step-2"
    # nothing changed. Over an existing name `ln -sfn` makes a temporary alias and renames
    # it over (refused): the journal then shows that alias set and removed again
    events = [(e["type"], e.get("alias")) for e in journal(meta.store)[seq:]]
    if command == "ln -sfn step-1 latest":
        assert len(events) == 2 and events[0][0] == "alias.set" and \
            events[1] == ("alias.removed", events[0][1]), events
    else:
        assert events == []


def test_renaming_an_alias_onto_latest_or_best_is_refused(meta, alias_run):
    ok(sh("ln -s step-1 tmp-alias", cwd=alias_run))
    try:
        for name in ("latest", "best"):
            with pytest.raises(PermissionError) as caught:
                os.rename(f"{alias_run}/tmp-alias", f"{alias_run}/{name}")
            assert caught.value.errno == errno.EPERM
        with pytest.raises(FileExistsError):  # a sidecar's name is taken too
            os.rename(f"{alias_run}/tmp-alias", f"{alias_run}/step-2.json")
        with pytest.raises(OSError) as caught:  # and so is run.json
            os.rename(f"{alias_run}/tmp-alias", f"{alias_run}/run.json")
        assert caught.value.errno == errno.EEXIST
        os.rename(f"{alias_run}/tmp-alias", f"{alias_run}/renamed-alias")  # a free name is fine
        assert os.readlink(f"{alias_run}/renamed-alias") == "step-1"
        assert not os.path.lexists(f"{alias_run}/tmp-alias")
    finally:
        sh("rm -f tmp-alias renamed-alias", cwd=alias_run)
    assert run_cli_checked("tags", meta.store, "nlp/r").stdout.decode() == "latest -> step-2\n"


def test_ckptfs_tag_while_mounted_shows_up_in_ls(meta, alias_run):
    out = run_cli_checked("tag", meta.store, "nlp/r/step-1", "staging").stdout.decode()
    assert out == "nlp/r/staging -> step-1\n"
    wait_for(lambda: "staging -> step-1" in sh("ls -l", cwd=alias_run).stdout,
             "staging in ls -l")
    out = run_cli_checked("tag", meta.store, "nlp/r/step-2", "staging").stdout.decode()
    assert out == "nlp/r/staging: step-1 -> step-2\n"
    wait_for(lambda: "staging -> step-2" in sh("ls -l", cwd=alias_run).stdout,
             "staging moved in ls -l")
    assert sidecar(meta.mnt, "nlp/r/step-2")["tags"] == ["latest", "staging"]
    out = run_cli_checked("untag", meta.store, "nlp/r", "staging").stdout.decode()
    assert out == "removed nlp/r/staging (was step-2)\n"
    wait_for(lambda: "staging" not in sh("ls -l", cwd=alias_run).stdout,
             "staging gone from ls -l")
    proc = run_cli_checked("tag", meta.store, "nlp/r/step-1", "latest", rc=1)
    assert b"'latest' is maintained by ckptfs" in proc.stderr
    proc = run_cli_checked("untag", meta.store, "nlp/r", "nosuch", rc=1)
    assert proc.stderr == b"ckptfs: error: nlp/r has no alias 'nosuch'\n"


def test_best_follows_the_primary_metric(meta, alias_run):
    assert not os.path.lexists(f"{alias_run}/best")
    try:
        run_cli_checked("config", "set", meta.store, "nlp", "primary_metric=eval_loss", "mode=min")
        wait_for(lambda: os.path.lexists(f"{alias_run}/best") and
                 os.readlink(f"{alias_run}/best") == "step-2", "best -> step-2")
        assert "best" in sidecar(meta.mnt, "nlp/r/step-2")["tags"]
        run_cli_checked("config", "set", meta.store, "nlp", "mode=max")
        wait_for(lambda: os.readlink(f"{alias_run}/best") == "step-1", "best -> step-1")
        assert sidecar(meta.mnt, "nlp/r/step-1")["tags"] == ["best"]
        assert "best" not in sidecar(meta.mnt, "nlp/r/step-2")["tags"]
        assert "best -> step-1\n" in run_cli_checked("tags", meta.store, "nlp/r").stdout.decode()
        proc = sh("ln -sn step-2 best", cwd=alias_run)
        assert proc.returncode != 0 and "File exists" in proc.stderr
        proc = sh("rm best", cwd=alias_run)
        assert proc.returncode != 0 and "Operation not permitted" in proc.stderr
        proc = run_cli_checked("config", "set", meta.store, "nlp", "mode=sideways", rc=1)
        assert proc.stderr == (b"ckptfs: error: setting 'mode' must be 'min' or 'max', "
                               b"not 'sideways'\n")
    finally:
        run_cli_checked("config", "unset", meta.store, "nlp", "primary_metric", "mode")
    wait_for(lambda: not os.path.lexists(f"{alias_run}/best"), "best gone")


def test_a_version_named_like_an_alias_gets_a_name_of_its_own(meta, alias_run, tmp_path):
    run_cli_checked("tag", meta.store, "nlp/r/step-1", "prod")
    try:
        src = make_hf_checkpoint(tmp_path / "prod", 3)
        ok(sh(f"cp -r {src} {meta.mnt}/inbox/nlp/r/", env=PLAIN_ENV, cwd=tmp_path))
        wait_for(lambda: os.path.isdir(f"{alias_run}/prod~2"), "nlp/r/prod~2")
        assert os.readlink(f"{alias_run}/prod") == "step-1"  # the alias is left alone
        assert sidecar(meta.mnt, "nlp/r/prod~2")["inbox"] == {"path": "prod", "shape": "dir"}
        state = json.loads(os.getxattr(f"{meta.mnt}/inbox/nlp/r/prod", "user.ckptfs.state"))
        assert state == {"state": "sealed", "version": "nlp/r/prod~2"}
    finally:
        run_cli_checked("untag", meta.store, "nlp/r", "prod")


def spooled_by_a_stopped_mount(tmp_path, mount, ref: str, user: dict) -> str:
    """A store whose inbox holds `ref` (an HF checkpoint with ckptfs.json `user`, copied in
    through a mount that was then unmounted cleanly, so nothing sealed it)."""
    store = new_store(tmp_path)
    mnt = mount(store, "--seal-after", "60")
    p, r, v = ref.split("/")
    src = make_hf_checkpoint(tmp_path / "src" / v, 100, eval_loss=0.2, user=user)
    ok(sh(f"mkdir -p {mnt}/inbox/{p}/{r} && cp -r {src} {mnt}/inbox/{p}/{r}/", cwd=tmp_path,
          env=PLAIN_ENV))
    assert "unmounted" in run_cli_checked("umount", mnt).stdout.decode()
    wait_for(lambda: not os.path.exists(os.path.join(store, "spool", "daemon.running")),
             "the daemon to finish", 15)
    return store


def test_offline_ckptfs_seal_records_the_metadata(tmp_path, mount):
    store = spooled_by_a_stopped_mount(tmp_path, mount, "p/r/v1",
                                       {"lineage": {"data": {"version": "v3"}}})
    assert run_cli_checked("seal", store, "p/r/v1").stdout.decode().startswith("sealed p/r/v1")
    doc = json.loads(run_cli_checked("show", store, "p/r/v1").stdout)
    assert doc.get("step") == 100
    assert doc.get("metrics") == {"eval_accuracy": 0.75, "eval_loss": 0.2, "loss": 1.0}
    assert (doc.get("lineage") or {}).get("data") == {"version": "v3"}
    assert (doc.get("provenance") or {}).get("command_line", [None])[0] == "cp"
    assert doc.get("sealed_by") == {"uid": 0, "user": "root"}
    assert not os.path.exists(os.path.join(store, "spool", "provenance", "p", "r", "v1.json"))


def test_offline_ckptfs_seal_checks_the_project_schema(tmp_path, mount):
    store = spooled_by_a_stopped_mount(tmp_path, mount, "gov/r/v1", NOT_SATISFIED)
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps(SCHEMA))
    run_cli_checked("schema", "set", store, "gov", schema_file)
    proc = run_cli_checked("seal", store, "gov/r/v1", rc=1)
    assert "lineage.code.git_commit: missing (rule: required)" in proc.stderr.decode()
    with Store.open(store) as s:
        assert s.version_record("gov", "r", "v1") is None


def test_the_meta_store_verifies(meta):
    verify_ok(meta.store)


def test_find_paths_feed_xargs_ls_in_the_mount(known, mount):
    mnt = mount(known.store)
    proc = sh(f"{CKPTFS} find {known.store} 'metrics.eval_loss < 0.3' --format paths "
              f"| (cd {mnt} && xargs ls -d)")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == paths(
        "nlp/run-a/step-2", "nlp/run-a/step-3", "vision/base/b-1", "vision/ft-x/ft-1")
    listing = sh(f"{CKPTFS} find {known.store} 'tags == production' --format paths "
                 f"| (cd {mnt} && xargs -I{{}} ls {{}})")
    assert listing.returncode == 0, listing.stderr
    assert sorted(listing.stdout.split()) == sorted(HF_FILES)
