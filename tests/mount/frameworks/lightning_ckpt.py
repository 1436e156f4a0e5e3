"""A Lightning job as a user writes it: a LightningModule that saves its hyperparameters,
`ModelCheckpoint(dirpath=OUT, save_top_k=2, monitor="val_loss", save_last=True)`, the
default logger (TensorBoard: OUT/lightning_logs/version_<n>/), `ckpt_path="last"` to
resume, and the best checkpoint loaded back with `load_from_checkpoint` at the end.

The validation targets are half the training targets, so the validation loss falls and
then rises: the best checkpoint is not the last one. No shuffling and no dropout: a
resumed run ends with the same weights as an uninterrupted one.

  lightning_ckpt.py --output-dir OUT --report R.json [--max-epochs 5] [--resume]
"""
import argparse
import os
import sys

from common import deterministic, features, sha256_file, state_sha256, write_report

import torch  # noqa: E402
import lightning.pytorch as pl  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from lightning.pytorch.plugins.io import TorchCheckpointIO  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402


class Regressor(pl.LightningModule):
    def __init__(self, hidden: int = 16, lr: float = 0.05, seed: int = 7):
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(torch.nn.Linear(8, hidden), torch.nn.Tanh(),
                                       torch.nn.Linear(hidden, 1))

    def on_train_start(self):
        self.first_step = self.global_step + 1  # after a resume, the step it goes on at

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


class RecordingCheckpointIO(TorchCheckpointIO):
    """The standard checkpoint I/O, also noting what it saved and removed (for the report;
    what reaches the disk is unchanged)."""

    def __init__(self, root: str):
        super().__init__()
        self.root, self.saved, self.removed = root, [], []

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        super().save_checkpoint(checkpoint, path, storage_options)
        self.saved.append({"path": os.path.relpath(path, self.root), "sha256": sha256_file(path),
                           "epoch": checkpoint["epoch"], "step": checkpoint["global_step"],
                           "state_sha256": state_sha256(checkpoint["state_dict"])})

    def remove_checkpoint(self, path):
        super().remove_checkpoint(path)
        self.removed.append(os.path.relpath(path, self.root))


def data(n: int, scale: float, seed: int):
    x = features(seed, n)
    return DataLoader(TensorDataset(x, x.sum(dim=1, keepdim=True) * scale), batch_size=4)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--report", required=True)
    parser.add_argument("--max-epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--resume", action="store_true", help='fit(ckpt_path="last")')
    args = parser.parse_args()
    deterministic(args.seed)
    pl.seed_everything(args.seed, verbose=False)

    model = Regressor(hidden=16, lr=args.lr, seed=args.seed)
    checkpoint = ModelCheckpoint(dirpath=args.output_dir, save_top_k=2, monitor="val_loss",
                                 save_last=True)
    io = RecordingCheckpointIO(args.output_dir)
    trainer = pl.Trainer(default_root_dir=args.output_dir, max_epochs=args.max_epochs,
                         callbacks=[checkpoint], plugins=[io], accelerator="cpu", devices=1,
                         deterministic=True, log_every_n_steps=1, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(model, data(12, 1.0, seed=1), data(8, 0.5, seed=2),
                ckpt_path="last" if args.resume else None)

    best = Regressor.load_from_checkpoint(checkpoint.best_model_path)
    write_report(args.report, {
        "saved": io.saved,
        "removed": io.removed,
        "best_model_path": os.path.relpath(checkpoint.best_model_path, args.output_dir),
        "best_model_score": float(checkpoint.best_model_score),
        "best_state_sha256": state_sha256(best.state_dict()),
        "final_state_sha256": state_sha256(model.state_dict()),
        "first_step": model.first_step,
        "global_step": trainer.global_step,
        "hparams": dict(model.hparams),
    })


if __name__ == "__main__":
    sys.exit(main())
