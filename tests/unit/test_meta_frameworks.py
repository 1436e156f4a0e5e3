"""Metadata and pickle scan of real checkpoints written by the Hugging Face Trainer,
accelerate and Lightning: tiny models built from configs, trained a few steps on the CPU
on synthetic data (nothing downloaded), one run per framework shared by the module's
tests. Skipped where the framework is not installed."""
import enum
import json
import math
import os
import shutil

import pytest

from ckptfs.meta.best import best_by
from ckptfs.meta.extract import extract_facts
from ckptfs.meta.scan import scan_directory
from tests.helpers import meta_frameworks as helpers
from tests.helpers.meta_frameworks import SECRET

trainer_run = helpers.trainer_run  # a fixture (tests/helpers/meta_frameworks.py)


def only(directory, *names, into) -> str:
    """A version directory holding copies of `names` from `directory`."""
    os.makedirs(into)
    for name in names:
        shutil.copy(os.path.join(directory, name), into)
    return str(into)


def assert_scans_clean(directory):
    scan = scan_directory(str(directory))
    pickled = {path: status for path, status in scan["files"].items() if status != "safe format"}
    assert pickled, "no pickled file was scanned"
    assert scan == {"status": "clean", "findings": [], "files": scan["files"]}, scan
    assert set(pickled.values()) == {"clean"}


def expected_hyperparameters(args) -> dict:
    """What lineage.hyperparameters should hold: every scalar (or list of scalars) field
    of the TrainingArguments, enums as their values, without the seeds, private fields
    and anything named like a secret."""
    expected = {}
    for key, value in vars(args).items():
        value = value.value if isinstance(value, enum.Enum) else value
        if key.startswith("_") or key in ("seed", "data_seed") or \
                any(word in key.upper() for word in ("TOKEN", "SECRET", "KEY", "AUTH")):
            continue
        scalars = value if isinstance(value, list) else [value]
        if all(v is None or isinstance(v, (str, int, float)) for v in scalars):
            expected[key] = value
    return expected


def test_trainer_checkpoint_metadata(trainer_run, tmp_path):
    out, args = trainer_run
    facts, warnings = extract_facts(os.path.join(out, "checkpoint-4"))
    assert warnings == []
    assert facts["step"] == 4 and facts["epoch"] == 1.0
    assert set(facts["metrics"]) == {"loss", "eval_loss"}
    lineage = facts["lineage"]
    assert lineage["seeds"] == {"seed": 7, "data_seed": 11}
    assert lineage["hyperparameters"] == expected_hyperparameters(args)
    hyperparameters = lineage["hyperparameters"]
    assert hyperparameters["learning_rate"] == 3e-4
    assert hyperparameters["lr_scheduler_type"] == "cosine"
    assert hyperparameters["optim"] == args.optim.value
    assert hyperparameters["eval_strategy"] == "steps"
    assert "hub_token" not in hyperparameters and SECRET not in json.dumps(facts)
    assert facts["extracted"]["training_args_bin"] == {
        "path": "training_args.bin", "class": "transformers.training_args.TrainingArguments",
        "keys": len(vars(args))}
    assert facts["extracted"]["pickles"]["training_args.bin"]["format"] == "torch-zip"


def test_trainer_output_directory_result_files(trainer_run):
    out, _args = trainer_run
    with open(os.path.join(out, "eval_results.json")) as f:
        evaluated = json.load(f)
    with open(os.path.join(out, "train_results.json")) as f:
        trained = json.load(f)
    facts, warnings = extract_facts(out)
    assert warnings == []
    assert facts["metrics"]["eval_loss"] == evaluated["eval_loss"]
    assert facts["metrics"]["train_loss"] == trained["train_loss"]
    assert not {"eval_runtime", "train_runtime", "total_flos", "train_samples_per_second",
                "epoch"} & set(facts["metrics"])
    assert facts["extracted"]["results"] == {
        "paths": ["all_results.json", "train_results.json", "eval_results.json"]}


def test_trainer_checkpoints_scan_clean(trainer_run):
    out, _args = trainer_run
    for directory in ("checkpoint-2", "checkpoint-4", "."):
        assert_scans_clean(os.path.join(out, directory))


@pytest.fixture(scope="module")
def accelerate_state(tmp_path_factory):
    torch = pytest.importorskip("torch")
    accelerate = pytest.importorskip("accelerate")
    out = str(tmp_path_factory.mktemp("accelerate") / "state")
    accelerate.utils.set_seed(3)
    accelerator = accelerate.Accelerator(cpu=True)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1)
    data = torch.utils.data.DataLoader(torch.randn(16, 3), batch_size=4, shuffle=True)
    model, optimizer, data, scheduler = accelerator.prepare(model, optimizer, data, scheduler)
    for batch in data:
        accelerator.backward(model(batch).sum())
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    accelerator.save_state(out)
    return out


def test_accelerate_state_scans_clean(accelerate_state):
    assert_scans_clean(accelerate_state)
    facts, warnings = extract_facts(accelerate_state)
    assert warnings == []
    assert sorted(facts["extracted"]["pickles"]) == ["optimizer.bin", "random_states_0.pkl",
                                                     "scheduler.bin"]
    assert {p["format"] for p in facts["extracted"]["pickles"].values()} == {"torch-zip"}


@pytest.fixture(scope="module")
def lightning_run(tmp_path_factory):
    """ModelCheckpoint(save_top_k=2, save_last=True, monitor="val_loss") over 3 epochs of
    a module whose hyper-parameters hold a nested dict and an AttributeDict."""
    torch = pytest.importorskip("torch")
    pl = pytest.importorskip("lightning.pytorch")
    from lightning.fabric.utilities.data import AttributeDict

    class Tiny(pl.LightningModule):
        def __init__(self, lr=0.05, hidden=4, optimizer=None, schedule=None, layers=(4, 2),
                     api_token="secret", seed=5):
            super().__init__()
            self.save_hyperparameters()
            self.net = torch.nn.Linear(3, hidden)

        def training_step(self, batch, index):
            x, y = batch
            return torch.nn.functional.mse_loss(self.net(x).sum(1), y)

        def validation_step(self, batch, index):
            x, y = batch
            self.log("val_loss", torch.nn.functional.mse_loss(self.net(x).sum(1), y))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    out = str(tmp_path_factory.mktemp("lightning") / "checkpoints")
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(32, 3, generator=generator)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1)), batch_size=8)
    pl.seed_everything(5, verbose=False)
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=out, save_top_k=2, save_last=True,
                                              monitor="val_loss", filename="{epoch}-{step}")
    trainer = pl.Trainer(max_epochs=3, callbacks=[checkpoint], logger=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu")
    module = Tiny(optimizer={"name": "sgd", "momentum": 0.0},
                  schedule=AttributeDict(kind="step", every=1))
    trainer.fit(module, data, data)
    return out, checkpoint


def test_lightning_checkpoint_metadata(lightning_run, tmp_path):
    out, checkpoint = lightning_run
    import torch
    version = only(out, "last.ckpt", into=tmp_path / "v")
    facts, warnings = extract_facts(version)
    assert warnings == []
    # the reference: the test's own file, just written by Lightning (weights_only refuses
    # the AttributeDict in it)
    saved = torch.load(os.path.join(out, "last.ckpt"), weights_only=False)
    state = next(v for k, v in saved["callbacks"].items() if k.startswith("ModelCheckpoint"))
    assert facts["step"] == saved["global_step"] == 12
    assert facts["epoch"] == saved["epoch"] == 2
    assert facts["metrics"] == {"val_loss": state["current_score"].item()}
    assert facts["lineage"] == {
        "hyperparameters": {"lr": 0.05, "hidden": 4, "optimizer.name": "sgd",
                            "optimizer.momentum": 0.0, "schedule.kind": "step",
                            "schedule.every": 1, "layers": [4, 2]},
        "seeds": {"seed": 5},
        "environment": {"packages": {"lightning": saved["pytorch-lightning_version"]}}}
    summary = facts["extracted"]["lightning"]
    assert summary == {
        "path": "last.ckpt", "version": saved["pytorch-lightning_version"], "epoch": 2,
        "global_step": 12, "monitor": "val_loss", "mode": "min",
        "best_model_score": state["best_model_score"].item(),
        "best_model_path": os.path.basename(checkpoint.best_model_path),
        "last_model_path": "last.ckpt"}
    assert math.isfinite(summary["best_model_score"])
    # what `best` goes by in a run of such checkpoints when its project names nothing
    assert best_by(facts["lineage"], facts["extracted"]) == {
        "metric": "val_loss", "mode": "min", "source": "ModelCheckpoint.monitor"}


def test_lightning_checkpoints_scan_clean_and_several_are_ambiguous(lightning_run):
    out, _checkpoint = lightning_run
    assert len([n for n in os.listdir(out) if n.endswith(".ckpt")]) == 3
    assert_scans_clean(out)
    facts, warnings = extract_facts(out)
    assert "step" not in facts and "metrics" not in facts
    assert len(warnings) == 1 and warnings[0].startswith(
        "3 .ckpt files at the top level (epoch=")
