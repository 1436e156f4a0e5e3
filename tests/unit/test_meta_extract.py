"""ckptfs.meta.extract and ckptfs.meta.user on real checkpoint directories, good and broken."""
import json
import math
import os
import pickle
import struct
import time
import zipfile
from types import SimpleNamespace

import numpy as np
import pytest
from tests.helpers.pickles import Torch, stand_in_class, stand_in_dict_class, stand_in_enum
from safetensors.numpy import save_file

from ckptfs.meta.extract import extract_facts
from ckptfs.meta.user import USER_METADATA_SCHEMA, read_user_metadata

TRAINER_STATE = {
    "best_metric": 0.412,
    "best_model_checkpoint": "out/checkpoint-20",
    "epoch": 2.0,
    "global_step": 30,
    "max_steps": 30,
    "log_history": [
        {"epoch": 0.67, "step": 10, "loss": 1.25, "learning_rate": 4e-05, "grad_norm": 3.1},
        {"epoch": 0.67, "step": 10, "eval_loss": 0.61, "eval_accuracy": 0.71,
         "eval_runtime": 1.5, "eval_samples_per_second": 100.0, "eval_steps_per_second": 12.5},
        {"epoch": 1.33, "step": 20, "loss": 0.52, "learning_rate": 2e-05},
        {"epoch": 1.33, "step": 20, "eval_loss": 0.412, "eval_accuracy": 0.83,
         "eval_runtime": 1.4},
        {"epoch": 2.0, "step": 30, "loss": 0.33, "learning_rate": 0.0},
        {"epoch": 2.0, "step": 30, "train_runtime": 60.1, "train_loss": 0.7},
    ],
}
TRAINING_ARGS = {
    "output_dir": "out", "learning_rate": 5e-05, "weight_decay": 0.01,
    "per_device_train_batch_size": 16, "max_steps": 30, "seed": 42, "data_seed": None,
    "optim": "adamw_torch", "report_to": ["none"], "fp16": False,
    "lr_scheduler_kwargs": {}, "resume_from_checkpoint": None,
}
CONFIG = {"architectures": ["BertForSequenceClassification"], "model_type": "bert",
          "transformers_version": "4.46.1", "hidden_size": 8}


class WouldRunCode:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def write_json(path, doc):
    with open(path, "w") as f:
        json.dump(doc, f)


def make_trainer_checkpoint(path, marker):
    os.makedirs(path, exist_ok=True)
    save_file({"bert.embeddings.weight": np.ones((10, 4), dtype=np.float32),
               "bert.pooler.bias": np.zeros(4, dtype=np.float32),
               "classifier.weight": np.zeros((2, 4), dtype=np.float16)},
              os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    write_json(os.path.join(path, "config.json"), CONFIG)
    write_json(os.path.join(path, "trainer_state.json"), TRAINER_STATE)
    write_json(os.path.join(path, "training_args.json"), TRAINING_ARGS)
    evil = pickle.dumps({"state": WouldRunCode(marker)})
    with zipfile.ZipFile(os.path.join(path, "optimizer.pt"), "w") as archive:
        archive.writestr("archive/data.pkl", evil)
        archive.writestr("archive/version", "3\n")
        archive.writestr("archive/data/0", b"\0" * 64)
    with open(os.path.join(path, "rng_state.pth"), "wb") as f:
        f.write(pickle.dumps({"python": [1, 2, 3], "hook": WouldRunCode(marker)}, protocol=4))
    with open(os.path.join(path, "scheduler.pt"), "wb") as f:
        f.write(b"not a pickle at all")
    return str(path)


@pytest.fixture
def marker(tmp_path):
    return str(tmp_path / "UNPICKLED")


@pytest.fixture
def ckpt(tmp_path, marker):
    return make_trainer_checkpoint(tmp_path / "checkpoint-30", marker)


def test_trainer_checkpoint_facts(ckpt, marker):
    facts, warnings = extract_facts(ckpt)
    assert warnings == []
    assert facts["step"] == 30 and facts["epoch"] == 2.0
    assert facts["metrics"] == {"loss": 0.33, "eval_loss": 0.412, "eval_accuracy": 0.83}
    lineage = facts["lineage"]
    assert lineage["seeds"] == {"seed": 42}
    assert lineage["hyperparameters"] == {
        "output_dir": "out", "learning_rate": 5e-05, "weight_decay": 0.01,
        "per_device_train_batch_size": 16, "max_steps": 30, "optim": "adamw_torch",
        "report_to": ["none"], "fp16": False, "resume_from_checkpoint": None}
    assert lineage["environment"] == {"packages": {"transformers": "4.46.1"}}
    extracted = facts["extracted"]
    assert extracted["safetensors"] == {"model.safetensors": {
        "tensors": 3, "parameters": 52, "dtypes": {"F32": 2, "F16": 1},
        "metadata": {"format": "pt"}}}
    assert extracted["config"] == {"path": "config.json", **{k: CONFIG[k] for k in (
        "architectures", "model_type", "transformers_version")}}
    assert extracted["trainer_state"] == {
        "path": "trainer_state.json", "global_step": 30, "epoch": 2.0, "max_steps": 30,
        "best_metric": 0.412, "best_model_checkpoint": "out/checkpoint-20",
        "last_loss": 0.33, "last_eval": {"eval_loss": 0.412, "eval_accuracy": 0.83},
        "log_entries": 6}
    assert extracted["training_args"] == {"path": "training_args.json", "keys": 12}
    assert extracted["pickles"] == {
        "optimizer.pt": {"format": "torch-zip", "entries": 3, "pickles": ["archive/data.pkl"]},
        "rng_state.pth": {"format": "pickle", "protocol": 4},
        "scheduler.pt": {"format": "unknown"}}
    assert not os.path.exists(marker), "something was unpickled"
    json.dumps(facts, allow_nan=False)


def test_nested_files_symlinks_and_dot_files(ckpt, tmp_path):
    nested = os.path.join(ckpt, "sub", "deeper")
    os.makedirs(nested)
    save_file({"w": np.zeros((3, 3), dtype=np.int8)}, os.path.join(nested, "part.safetensors"))
    outside = tmp_path / "outside"
    outside.mkdir()
    save_file({"x": np.zeros(5, dtype=np.float32)}, str(outside / "secret.safetensors"))
    os.symlink(outside, os.path.join(ckpt, "linked-dir"))
    os.symlink(outside / "secret.safetensors", os.path.join(ckpt, "link.safetensors"))
    os.remove(os.path.join(ckpt, "config.json"))
    write_json(outside / "config.json", {"model_type": "evil"})
    os.symlink(outside / "config.json", os.path.join(ckpt, "config.json"))
    save_file({"y": np.zeros(1, dtype=np.float32)}, os.path.join(ckpt, ".hidden.safetensors"))
    os.mkfifo(os.path.join(ckpt, "pipe.safetensors"))  # opening it would block
    facts, warnings = extract_facts(ckpt)
    assert warnings == []
    assert sorted(facts["extracted"]["safetensors"]) == ["model.safetensors",
                                                         "sub/deeper/part.safetensors"]
    assert facts["extracted"]["safetensors"]["sub/deeper/part.safetensors"] == {
        "tensors": 1, "parameters": 9, "dtypes": {"I8": 1}}
    assert "config" not in facts["extracted"]
    assert "environment" not in facts["lineage"]


def write_raw_safetensors(path, header: bytes, declared_len=None, payload=b""):
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header) if declared_len is None else declared_len))
        f.write(header + payload)


def test_broken_safetensors_headers(ckpt):
    write_raw_safetensors(os.path.join(ckpt, "truncated.safetensors"), b'{"a": {"dtype"',
                          declared_len=200)
    write_raw_safetensors(os.path.join(ckpt, "huge-len.safetensors"), b"{}",
                          declared_len=1 << 40)
    write_raw_safetensors(os.path.join(ckpt, "garbage.safetensors"), b"\xff\xfe{{{{ junk")
    write_raw_safetensors(os.path.join(ckpt, "bad-shape.safetensors"), json.dumps(
        {"t": {"dtype": "F32", "shape": [2, "x"], "data_offsets": [0, 8]}}).encode())
    write_raw_safetensors(os.path.join(ckpt, "bool-shape.safetensors"), json.dumps(
        {"t": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}).encode())
    write_raw_safetensors(os.path.join(ckpt, "not-object.safetensors"), b"[1, 2]")
    write_raw_safetensors(os.path.join(ckpt, "bad-meta.safetensors"), json.dumps(
        {"t": {"dtype": "BF16", "shape": [], "data_offsets": [0, 2]},
         "__metadata__": {"n": 1}}).encode(), payload=b"\0\0")
    with open(os.path.join(ckpt, "tiny.safetensors"), "wb") as f:
        f.write(b"\1\2\3")
    facts, warnings = extract_facts(ckpt)
    text = "\n".join(warnings)
    assert "truncated.safetensors: safetensors header length 200 is larger than the file" in text
    assert f"huge-len.safetensors: safetensors header of {1 << 40} bytes is over 100 MiB" in text
    assert "garbage.safetensors: safetensors header is not valid JSON" in text
    assert "bad-shape.safetensors: tensor 't' has an invalid shape: skipped" in text
    assert "bool-shape.safetensors: tensor 't' has an invalid shape: skipped" in text
    assert "not-object.safetensors: safetensors header is not a JSON object: skipped" in text
    assert "bad-meta.safetensors: __metadata__ is not a map of strings: ignored" in text
    assert "tiny.safetensors: truncated safetensors file (3 bytes" in text
    assert len(warnings) == 8
    found = facts["extracted"]["safetensors"]
    assert sorted(found) == ["bad-meta.safetensors", "model.safetensors"]
    assert found["bad-meta.safetensors"] == {"tensors": 1, "parameters": 1, "dtypes": {"BF16": 1}}
    assert facts["step"] == 30 and "trainer_state" in facts["extracted"]


def test_invalid_json_and_huge_json_are_skipped(ckpt):
    with open(os.path.join(ckpt, "trainer_state.json"), "w") as f:
        f.write('{\n  "global_step": 10,\n    oops\n}')
    with open(os.path.join(ckpt, "config.json"), "wb") as f:
        f.truncate(1 << 30)  # sparse: costs no disk
    with open(os.path.join(ckpt, "training_args.json"), "w") as f:
        f.write("[1, 2, 3]")
    facts, warnings = extract_facts(ckpt)
    assert "trainer_state.json: not valid JSON (line 3 column 5): skipped" in warnings
    assert ("config.json: file is 1073741824 bytes; JSON files over 16 MiB are not read: "
            "skipped") in warnings
    assert "training_args.json: top level is not a JSON object: skipped" in warnings
    assert len(warnings) == 3
    assert "step" not in facts and "lineage" not in facts
    assert set(facts["extracted"]) == {"safetensors", "pickles"}


def test_wrong_types_skip_only_that_field(ckpt):
    state = dict(TRAINER_STATE, global_step="ten", epoch=True, max_steps=30.5,
                 best_metric=float("nan"), best_model_checkpoint=7)
    state["log_history"] = TRAINER_STATE["log_history"][:4] + [
        "junk", {"step": 30, "loss": float("inf")},
        {"step": 30, "eval_loss": "abc", "eval_accuracy": 0.9, "eval_f1": float("nan")}]
    write_json(os.path.join(ckpt, "trainer_state.json"), state)
    write_json(os.path.join(ckpt, "config.json"),
               {"architectures": "Bert", "model_type": 3, "transformers_version": "4.0"})
    write_json(os.path.join(ckpt, "training_args.json"),
               {"seed": "42", "data_seed": 7, "learning_rate": float("inf"), "warmup": 0})
    facts, warnings = extract_facts(ckpt)
    assert sorted(warnings) == sorted([
        "trainer_state.json: global_step is not an integer ('ten'): skipped",
        "trainer_state.json: epoch is not a number (True): skipped",
        "trainer_state.json: max_steps is not an integer (30.5): skipped",
        "trainer_state.json: best_metric is not finite (nan): skipped",
        "trainer_state.json: best_model_checkpoint is not a string (7): skipped",
        "trainer_state.json: 1 log_history entries are not objects: skipped",
        "trainer_state.json: log_history: last loss is not finite (inf): skipped",
        "trainer_state.json: log_history: eval_loss is not a number ('abc'): skipped",
        "trainer_state.json: log_history: eval_f1 is not finite (nan): skipped",
        "config.json: architectures is not a list of strings ('Bert'): skipped",
        "config.json: model_type is not a string (3): skipped",
        "training_args.json: learning_rate holds a non-finite number: skipped",
        "training_args.json: seed is not an integer ('42'): skipped",
    ])
    assert "step" not in facts and "epoch" not in facts
    assert facts["metrics"] == {"eval_accuracy": 0.9}
    assert facts["extracted"]["trainer_state"] == {
        "path": "trainer_state.json", "last_eval": {"eval_accuracy": 0.9}, "log_entries": 7}
    assert facts["extracted"]["config"] == {"path": "config.json", "transformers_version": "4.0"}
    assert facts["lineage"] == {"hyperparameters": {"warmup": 0}, "seeds": {"data_seed": 7},
                                "environment": {"packages": {"transformers": "4.0"}}}
    json.dumps(facts, allow_nan=False)


def test_log_history_not_a_list(ckpt):
    write_json(os.path.join(ckpt, "trainer_state.json"), {"global_step": 5, "log_history": {}})
    facts, warnings = extract_facts(ckpt)
    assert warnings == ["trainer_state.json: log_history is not a list ({}): skipped"]
    assert facts["step"] == 5 and "metrics" not in facts


def test_bad_zip_and_binary_junk(ckpt):
    with open(os.path.join(ckpt, "optimizer.pt"), "r+b") as f:
        f.seek(20)
        f.write(b"\xde\xad" * 40)  # the local header is broken, the end record intact
    data = open(os.path.join(ckpt, "optimizer.pt"), "rb").read()
    with open(os.path.join(ckpt, "broken.bin"), "wb") as f:
        f.write(data[:-30])  # end-of-central-directory record cut short
    with open(os.path.join(ckpt, "junk.ckpt"), "wb") as f:
        f.write(b"\x00\x01binary junk\xff" * 300)
    eocd_only = b"PK\x05\x06" + b"\0" * 4 + struct.pack("<HHIIH", 5, 5, 1000, 999999, 0)
    with open(os.path.join(ckpt, "fake.pkl"), "wb") as f:
        f.write(eocd_only)
    facts, warnings = extract_facts(ckpt)
    pickles = facts["extracted"]["pickles"]
    assert pickles["broken.bin"] == {"format": "unknown"}
    assert pickles["junk.ckpt"] == {"format": "unknown"}
    assert pickles["optimizer.pt"]["format"] == "torch-zip"
    assert pickles["fake.pkl"] == {"format": "unknown"}
    assert any(w.startswith("fake.pkl: looks like a zip file") for w in warnings)
    assert facts["step"] == 30


def test_file_limit(tmp_path):
    for i in range(10_001):
        open(tmp_path / f"f{i:05}.txt", "w").close()
    facts, warnings = extract_facts(str(tmp_path))
    assert facts == {}
    assert warnings == [f"{tmp_path}: more than 10000 files; only the first ones were examined"]


def test_missing_directory_and_unreadable_file(tmp_path):
    facts, warnings = extract_facts(str(tmp_path / "nope"))
    assert facts == {} and len(warnings) == 1 and "cannot be listed" in warnings[0]
    if os.geteuid() == 0:
        pytest.skip("root reads files whatever their mode")
    write_json(tmp_path / "config.json", CONFIG)
    os.chmod(tmp_path / "config.json", 0)
    facts, warnings = extract_facts(str(tmp_path))
    assert warnings == ["config.json: cannot be read (Permission denied): skipped"]


# -- ckptfs.json ---------------------------------------------------------------------------

FULL_USER_DOC = {
    "step": 30, "epoch": 2.0,
    "metrics": {"eval_loss": 0.41, "bleu": 31},
    "tags": ["baseline", "fp16"], "notes": "first run on v3",
    "lineage": {
        "parent": {"project": "nlp", "run": "run-41", "version": "step-1000"},
        "code": {"git_commit": "a" * 40, "repository": "git@example.com:x/y.git",
                 "branch": "main", "dirty": False},
        "data": {"name": "squad", "version": "v3", "split": "train", "hash": "sha256:00"},
        "hyperparameters": {"lr": 1e-4, "sched": {"kind": "cosine", "warmup": [1, 2]}},
        "seeds": {"seed": 1, "data_seed": 2},
        "environment": {"python": "3.11", "packages": {"torch": "2.5.0"}, "cuda": "12.1",
                        "host": "gpu-7"},
    },
    "provenance": {"user": "alice", "anything": [1, {"x": None}]},
}


def user_doc(tmp_path, doc) -> tuple[dict, list[str]]:
    with open(tmp_path / "ckptfs.json", "w") as f:
        f.write(doc if isinstance(doc, str) else json.dumps(doc))
    return read_user_metadata(str(tmp_path))


def test_user_metadata_absent(tmp_path):
    assert read_user_metadata(str(tmp_path)) == ({}, [])


def test_user_metadata_full_document_round_trips(tmp_path):
    doc, warnings = user_doc(tmp_path, FULL_USER_DOC)
    assert warnings == []
    assert doc == FULL_USER_DOC
    assert USER_METADATA_SCHEMA["$schema"].endswith("2020-12/schema")


def test_user_metadata_bad_fields_are_dropped_one_by_one(tmp_path):
    bad = json.loads(json.dumps(FULL_USER_DOC))
    bad.update(step=-1, epoch="two", foo=1, tags=["ok", 3, "fine", None])
    bad["metrics"].update(eval_loss="abc", acc=True)
    bad["lineage"]["code"].update(dirty="yes", extra="x")
    bad["lineage"]["seeds"]["seed"] = 1.5
    bad["lineage"]["environment"]["packages"]["numpy"] = 2
    doc, warnings = user_doc(tmp_path, bad)
    assert sorted(warnings) == sorted([
        "ckptfs.json: unknown field 'foo' ignored",
        "ckptfs.json: unknown field 'lineage.code.extra' ignored",
        "ckptfs.json: step: -1 is less than the minimum of 0: ignored",
        "ckptfs.json: epoch: 'two' is not of type 'number': ignored",
        "ckptfs.json: tags.1: 3 is not of type 'string': ignored",
        "ckptfs.json: tags.3: None is not of type 'string': ignored",
        "ckptfs.json: metrics.eval_loss: 'abc' is not of type 'number': ignored",
        "ckptfs.json: metrics.acc: True is not of type 'number': ignored",
        "ckptfs.json: lineage.code.dirty: 'yes' is not of type 'boolean': ignored",
        "ckptfs.json: lineage.seeds.seed: 1.5 is not of type 'integer': ignored",
        "ckptfs.json: lineage.environment.packages.numpy: 2 is not of type 'string': ignored",
    ])
    expected = json.loads(json.dumps(FULL_USER_DOC))
    del expected["step"], expected["epoch"], expected["metrics"]["eval_loss"]
    del expected["lineage"]["code"]["dirty"], expected["lineage"]["seeds"]["seed"]
    expected["tags"] = ["ok", "fine"]
    assert doc == expected


def test_user_metadata_parent_forms(tmp_path):
    doc, warnings = user_doc(tmp_path, {"lineage": {"parent": "nlp/run-41/step-1000"}})
    assert warnings == []
    assert doc == {"lineage": {"parent": {"project": "nlp", "run": "run-41",
                                          "version": "step-1000"}}}
    for parent in ("nlp/run-41", "a//b", "a/b/c/d", {"project": "a", "run": "b"}, 5):
        doc, warnings = user_doc(tmp_path, {"lineage": {"parent": parent}, "notes": "kept"})
        assert doc == {"lineage": {}, "notes": "kept"}
        assert len(warnings) == 1 and warnings[0].startswith("ckptfs.json: lineage.parent: ")


def test_user_metadata_broken_files(tmp_path):
    assert user_doc(tmp_path, "[1, 2]") == (
        {}, ["ckptfs.json: top level is not a JSON object: ignored"])
    assert user_doc(tmp_path, '{"step": 1,}') == (
        {}, ["ckptfs.json: not valid JSON (line 1 column 12): ignored"])
    doc, warnings = user_doc(tmp_path, '{"metrics": {"loss": NaN, "acc": 0.5}, "step": 3.0}')
    assert doc == {"metrics": {"acc": 0.5}, "step": 3}
    assert type(doc["step"]) is int
    assert warnings == ["ckptfs.json: metrics.loss: nan is not a finite number: ignored"]
    assert user_doc(tmp_path, '{"lineage": "x", "notes": "\\ud800"}') == (
        {"notes": "?"}, ["ckptfs.json: lineage: 'x' is not of type 'object': ignored"])
    with open(tmp_path / "ckptfs.json", "wb") as f:
        f.truncate(1 << 30)
    assert read_user_metadata(str(tmp_path)) == ({}, [
        "ckptfs.json: file is 1073741824 bytes; JSON files over 16 MiB are not read: ignored"])
    os.remove(tmp_path / "ckptfs.json")
    write_json(tmp_path / "elsewhere.json", {"notes": "x"})
    os.symlink(tmp_path / "elsewhere.json", tmp_path / "ckptfs.json")
    assert read_user_metadata(str(tmp_path)) == (
        {}, ["ckptfs.json: is a symlink; not followed: ignored"])
    os.remove(tmp_path / "ckptfs.json")
    assert user_doc(tmp_path, '{"notes": ' + "[" * 900 + "]" * 900 + "}") == (
        {}, ["ckptfs.json: nested too deeply to read: ignored"])


# -- pickled checkpoints: training_args.bin, Lightning, standalone torch files -----------------
# Written with the stand-ins of tests/helpers/pickles.py (the frameworks' real GLOBAL names, without
# the frameworks); test_meta_frameworks.py does the same with real framework checkpoints.

@pytest.fixture
def frameworks(monkeypatch):
    """Stand-ins for the classes a Trainer and Lightning pickle."""
    return SimpleNamespace(
        torch=Torch(monkeypatch),
        TrainingArguments=stand_in_class(monkeypatch,
                                         "transformers.training_args.TrainingArguments"),
        SchedulerType=stand_in_enum(monkeypatch, "transformers.trainer_utils.SchedulerType",
                                    ["linear", "cosine"]),
        AttributeDict=stand_in_dict_class(monkeypatch,
                                          "lightning.fabric.utilities.data.AttributeDict"))


def training_args_bin(frameworks, path, **fields) -> str:
    args = frameworks.TrainingArguments()
    args.__dict__.update(fields)
    return frameworks.torch.save(args, path, prefix="training_args")


def lightning_ckpt(frameworks, path, score=0.25, hyper_parameters=None, **extra) -> str:
    torch = frameworks.torch
    monitor = "ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min'}"
    ckpt = {"epoch": 2, "global_step": 12, "pytorch-lightning_version": "2.6.6",
            "state_dict": torch.state_dict(),
            "callbacks": {monitor: {
                "monitor": "val_loss", "best_model_score": torch.tensor([0.125], shape=()),
                "best_model_path": "/runs/x/epoch=1-step=8.ckpt",
                "current_score": torch.tensor([score], shape=()),
                "last_model_path": "/runs/x/last.ckpt"}},
            "hyper_parameters": hyper_parameters or {"lr": 0.1}, **extra}
    return torch.save(ckpt, path)


def test_training_args_bin_gives_lineage_and_wins_over_the_json(ckpt, frameworks, marker):
    training_args_bin(frameworks, os.path.join(ckpt, "training_args.bin"),
                      learning_rate=1e-4, lr_scheduler_type=frameworks.SchedulerType("cosine"),
                      seed=5, data_seed=None, hub_token="hf_x", _n_gpu=0,
                      push_to_hub_token="hf_y", report_to=["tensorboard"],
                      distributed_state=frameworks.AttributeDict(backend="nccl"),
                      hook=WouldRunCode(marker))
    facts, warnings = extract_facts(ckpt)
    assert warnings == []
    hyperparameters = facts["lineage"]["hyperparameters"]
    # training_args.json's keys, those of the .bin on top
    assert hyperparameters == {**{k: v for k, v in TRAINING_ARGS.items() if k not in (
        "seed", "data_seed", "lr_scheduler_kwargs")}, "learning_rate": 1e-4,
        "lr_scheduler_type": "cosine", "report_to": ["tensorboard"]}
    assert facts["lineage"]["seeds"] == {"seed": 5}
    assert facts["extracted"]["training_args_bin"] == {
        "path": "training_args.bin", "class": "transformers.training_args.TrainingArguments",
        "keys": 10}
    assert "hf_x" not in json.dumps(facts) and "hf_y" not in json.dumps(facts)
    assert not os.path.exists(marker), "something was unpickled"


def test_unreadable_training_args_bin_is_a_warning(ckpt, frameworks):
    path = training_args_bin(frameworks, os.path.join(ckpt, "training_args.bin"), seed=1)
    data = bytearray(open(path, "rb").read())
    start = data.index(b"\x80\x02")  # the pickle, stored: damage its first bytes
    data[start:start + 2] = b"\xff\xff"
    with open(path, "wb") as f:
        f.write(data)
    facts, warnings = extract_facts(ckpt)
    assert warnings == ["training_args.bin: pickle not read (training_args/data.pkl cannot "
                        "be read (Bad CRC-32 for file 'training_args/data.pkl')): skipped"]
    assert facts["lineage"]["seeds"] == {"seed": 42}  # training_args.json's, still
    with open(os.path.join(ckpt, "training_args.bin"), "wb") as f:
        f.write(pickle.dumps([1, 2, 3], protocol=2))
    facts, warnings = extract_facts(ckpt)
    assert warnings == ["training_args.bin: does not hold training arguments (an object "
                        "with fields): skipped"]


def test_lightning_checkpoint_facts(tmp_path, frameworks):
    version = tmp_path / "v"
    version.mkdir()
    hyper_parameters = {"lr": 0.1, "model": frameworks.AttributeDict(
        width=8, act="relu", inner={"depth": 2}, weights=frameworks.torch.tensor([1.0])),
        "password": "x", "seed": 3, "tags": ["a", "b"]}
    lightning_ckpt(frameworks, version / "last.ckpt", hyper_parameters=hyper_parameters)
    facts, warnings = extract_facts(str(version))
    assert warnings == []
    assert (facts["step"], facts["epoch"], facts["metrics"]) == (12, 2, {"val_loss": 0.25})
    assert facts["lineage"] == {
        "hyperparameters": {"lr": 0.1, "model.width": 8, "model.act": "relu",
                            "model.inner.depth": 2, "tags": ["a", "b"]},
        "seeds": {"seed": 3}, "environment": {"packages": {"lightning": "2.6.6"}}}
    assert facts["extracted"]["lightning"] == {
        "path": "last.ckpt", "version": "2.6.6", "epoch": 2, "global_step": 12,
        "monitor": "val_loss", "mode": "min", "best_model_score": 0.125,
        "best_model_path": "epoch=1-step=8.ckpt", "last_model_path": "last.ckpt"}


def test_nan_and_inf_never_reach_the_facts(tmp_path, frameworks):
    version = tmp_path / "v"
    version.mkdir()
    lightning_ckpt(frameworks, version / "last.ckpt", score=math.inf,
                   hyper_parameters={"lr": math.nan, "ok": 1, "betas": [0.9, math.inf]})
    facts, warnings = extract_facts(str(version))
    assert sorted(warnings) == [
        "last.ckpt hyper_parameters: betas holds a non-finite number: skipped",
        "last.ckpt hyper_parameters: lr holds a non-finite number: skipped",
        "last.ckpt: ModelCheckpoint current_score of val_loss is not finite (inf): skipped"]
    assert "metrics" not in facts
    assert facts["lineage"]["hyperparameters"] == {"ok": 1}
    json.dumps(facts, allow_nan=False)


def test_result_files_win_over_the_trainer_state(ckpt):
    write_json(os.path.join(ckpt, "eval_results.json"), {
        "epoch": 2.0, "eval_loss": 0.3, "eval_runtime": 1.2, "eval_samples": 100,
        "eval_samples_per_second": 80.0, "eval_steps_per_second": 10.0})
    write_json(os.path.join(ckpt, "all_results.json"), {
        "epoch": 2.0, "eval_loss": 0.35, "train_loss": 0.5, "total_flos": 1e12,
        "train_runtime": 3.0, "train_mem_cpu_alloc_delta": 1024, "eval_bleu": float("nan"),
        "note": "x"})
    facts, warnings = extract_facts(ckpt)
    assert sorted(warnings) == ["all_results.json: eval_bleu is not finite (nan): skipped",
                                "all_results.json: note is not a number ('x'): skipped"]
    assert facts["metrics"] == {"loss": 0.33, "eval_loss": 0.3, "eval_accuracy": 0.83,
                                "train_loss": 0.5}
    assert facts["epoch"] == 2.0  # trainer_state.json's
    assert facts["extracted"]["results"] == {"paths": ["all_results.json", "eval_results.json"]}
    os.remove(os.path.join(ckpt, "trainer_state.json"))
    write_json(os.path.join(ckpt, "eval_results.json"), {"epoch": 3.5})
    facts, _ = extract_facts(ckpt)
    assert facts["epoch"] == 3.5


def test_standalone_torch_file_progress(tmp_path, frameworks):
    version = tmp_path / "v"
    version.mkdir()
    torch = frameworks.torch
    torch.save({"model": torch.state_dict(), "epoch": 4, "global_step": 900},
               version / "model.pt")
    torch.save({"state": {}, "step": 1}, version / "optimizer.pt")  # a Trainer's: not read
    facts, warnings = extract_facts(str(version))
    assert warnings == []
    assert (facts["step"], facts["epoch"]) == (900, 4)
    assert facts["extracted"]["torch_checkpoint"] == {"path": "model.pt", "epoch": 4,
                                                      "step": 900}
    torch.save({"step": 10, "global_step": 20}, version / "model.pt")
    facts, warnings = extract_facts(str(version))
    assert "step" not in facts
    assert warnings == ["model.pt: step and global_step differ (10, 20): neither used"]
    torch.save({"epoch": 1}, version / "other.pth")  # two candidates: ambiguous, none read
    assert "epoch" not in extract_facts(str(version))[0]


def test_pickled_facts_stay_cheap_on_a_2_gib_checkpoint(tmp_path, frameworks):
    # a legacy torch.save file: its pickles, then (sparse) raw tensor bytes
    version = tmp_path / "v"
    version.mkdir()
    torch = frameworks.torch
    ckpt = {"epoch": 1, "global_step": 5, "pytorch-lightning_version": "1.9.0",
            "state_dict": torch.state_dict(200)}
    pickles = [pickle.dumps(0x1950A86A20F9469CFC6C, 2), pickle.dumps(1001, 2),
               pickle.dumps({"little_endian": True}, 2), torch.dumps(ckpt)]
    with open(version / "big.ckpt", "wb") as f:
        f.write(b"".join(pickles))
        f.truncate(2 << 30)
    started = time.monotonic()
    facts, warnings = extract_facts(str(version))
    assert time.monotonic() - started < 2
    assert warnings == [] and (facts["step"], facts["epoch"]) == (5, 1)
