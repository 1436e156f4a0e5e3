#!/usr/bin/env python3
"""A small transformers training job, as a user would write it, for the demo: a tiny
BERT classifier built from a config (no download), trained 20 steps on synthetic data on
the CPU, saving a checkpoint every 5 steps (keeping 2), loading the best one at the end,
logging to TensorBoard, and ending as the Hugging Face examples do.

    python scripts/demo_train.py OUTPUT_DIR [--callback]

Nothing in it knows about ckptfs, except --callback, which adds ckptfs's TrainerCallback
so each checkpoint is archived the moment it is saved.
"""
import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from torch.utils.data import Dataset  # noqa: E402
from transformers import (BertConfig, BertForSequenceClassification, Trainer,  # noqa: E402
                          TrainingArguments)


class Synthetic(Dataset):
    """Token ids whose label is the parity of the first token."""

    def __init__(self, size: int, seed: int):
        generator = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, 100, (size, 16), generator=generator)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i, 0] % 2}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir")
    parser.add_argument("--callback", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=128, max_position_embeddings=32)
    training = TrainingArguments(
        output_dir=args.output_dir, max_steps=20, save_steps=5, eval_steps=5,
        eval_strategy="steps", save_total_limit=2, load_best_model_at_end=True,
        metric_for_best_model="eval_loss", per_device_train_batch_size=8, logging_steps=5,
        report_to="tensorboard", use_cpu=True, seed=7, disable_tqdm=True)
    callbacks = []
    if args.callback:
        from ckptfs.integrations.transformers import CkptfsCallback
        callbacks.append(CkptfsCallback(data={"name": "synthetic-parity", "version": "v1"}))
    trainer = Trainer(model=BertForSequenceClassification(config), args=training,
                      train_dataset=Synthetic(128, 1), eval_dataset=Synthetic(32, 2),
                      callbacks=callbacks)
    result = trainer.train()
    trainer.save_model()
    trainer.save_metrics("train", result.metrics)
    trainer.save_metrics("eval", trainer.evaluate())
    trainer.save_state()
    print(f"best checkpoint: {trainer.state.best_model_checkpoint}")


if __name__ == "__main__":
    main()
