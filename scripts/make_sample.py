#!/usr/bin/env python3
"""Write a small sample checkpoint directory in Hugging Face Trainer layout.

    make_sample.py OUT_DIR [--step N] [--seed S] [--data-version V]

model.safetensors (a real safetensors file written with numpy: a few fp32 tensors,
perturbed slightly per step as training would), config.json, trainer_state.json,
training_args.json, and with --data-version a ckptfs.json naming the dataset.
"""
import argparse
import json
import os

import numpy as np
from safetensors.numpy import save_file


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--step", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-version", help="write a ckptfs.json: trained on dataset 'wiki' at this version")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    rng = np.random.default_rng(a.seed)
    tensors = {
        "embeddings.word_embeddings.weight": rng.standard_normal((4096, 256), dtype=np.float32) * 0.02,
        "encoder.layer.0.attention.weight": rng.standard_normal((256, 256), dtype=np.float32) * 0.05,
        "encoder.layer.0.attention.bias": np.zeros(256, dtype=np.float32),
        "encoder.layer.1.attention.weight": rng.standard_normal((256, 256), dtype=np.float32) * 0.05,
        "pooler.dense.weight": rng.standard_normal((256, 256), dtype=np.float32) * 0.05,
    }
    # Training moves the trainable layers a little each step; the embeddings stay frozen.
    drift = np.random.default_rng(a.step)
    for name, t in tensors.items():
        if not name.startswith("embeddings."):
            t += drift.standard_normal(t.shape, dtype=np.float32) * 1e-4 * (a.step / 100)
    save_file(tensors, os.path.join(a.out, "model.safetensors"), metadata={"format": "np"})
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump({"architectures": ["BertModel"], "model_type": "bert", "hidden_size": 256,
                   "num_hidden_layers": 2, "vocab_size": 4096}, f, indent=2)
    loss = round(2.0 / (1 + a.step / 100), 4)
    with open(os.path.join(a.out, "trainer_state.json"), "w") as f:
        json.dump({"global_step": a.step, "epoch": a.step / 1000, "best_metric": round(loss * 1.05, 4),
                   "log_history": [{"step": a.step, "loss": loss, "learning_rate": 2e-5},
                                   {"step": a.step, "eval_loss": round(loss * 1.05, 4)}]},
                  f, indent=2)
    with open(os.path.join(a.out, "training_args.json"), "w") as f:
        json.dump({"learning_rate": 2e-5, "per_device_train_batch_size": 16, "seed": a.seed}, f, indent=2)
    if a.data_version:
        with open(os.path.join(a.out, "ckptfs.json"), "w") as f:
            json.dump({"lineage": {"data": {"name": "wiki", "version": a.data_version}},
                       "notes": "sample checkpoint made by scripts/make_sample.py"}, f, indent=2)


if __name__ == "__main__":
    main()
