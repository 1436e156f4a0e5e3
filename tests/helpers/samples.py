"""Sample checkpoint directories for tests: real safetensors files written with numpy."""
import json
import os

import numpy as np
from safetensors.numpy import save_file


def make_checkpoint(path, step: int = 100, seed: int = 0, scale: int = 1) -> str:
    """A Trainer-style checkpoint dir: model.safetensors, optimizer.pt-like blob, JSON files,
    a sub-directory, an empty file and a symlink. `scale` multiplies the tensor sizes."""
    os.makedirs(path, exist_ok=True)
    rng = np.random.default_rng(seed)
    tensors = {
        "embed.weight": rng.standard_normal((512 * scale, 128), dtype=np.float32),
        "layer.0.weight": rng.standard_normal((128, 128 * scale), dtype=np.float32),
        "layer.0.bias": np.zeros(128, dtype=np.float32),
        "head.weight": rng.standard_normal((64, 128), dtype=np.float32).astype(np.float16),
        "steps": np.arange(10, dtype=np.int64),
    }
    drift = np.random.default_rng(step)
    for name in ("layer.0.weight", "layer.0.bias"):
        tensors[name] += drift.standard_normal(tensors[name].shape, dtype=np.float32) * 1e-3
    save_file(tensors, os.path.join(path, "model.safetensors"))
    with open(os.path.join(path, "optimizer.pt"), "wb") as f:
        f.write(drift.standard_normal(50_000 * scale, dtype=np.float32).tobytes())
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"model_type": "bert", "hidden_size": 128}, f)
    with open(os.path.join(path, "trainer_state.json"), "w") as f:
        json.dump({"global_step": step, "log_history": [{"step": step, "loss": 1.0 / step}]}, f)
    os.makedirs(os.path.join(path, "tokenizer"), exist_ok=True)
    with open(os.path.join(path, "tokenizer", "vocab.txt"), "w") as f:
        f.write("\n".join(f"token{i}" for i in range(2000)))
    open(os.path.join(path, "EMPTY"), "w").close()
    if not os.path.lexists(os.path.join(path, "latest.safetensors")):
        os.symlink("model.safetensors", os.path.join(path, "latest.safetensors"))
    os.chmod(os.path.join(path, "config.json"), 0o640)
    os.utime(os.path.join(path, "config.json"), ns=(1_600_000_000_123_456_789,) * 2)
    return str(path)


def tree_snapshot(root) -> dict:
    """{relative path: (kind, mode, mtime_ns, content-or-target)} of a directory tree."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            if os.path.islink(full):
                out[rel] = ("symlink", os.readlink(full))
            elif os.path.isdir(full):
                out[rel] = ("dir", st.st_mode, st.st_mtime_ns)
            else:
                with open(full, "rb") as f:
                    out[rel] = ("file", st.st_mode, st.st_mtime_ns, f.read())
    return out


# -- Hugging Face Trainer layout -----------------------------------------------------------

HF_TENSORS = {  # name -> shape; float32, so parameters = sum of the products
    "embeddings.word_embeddings.weight": (64, 32),
    "encoder.layer.0.attention.self.query.weight": (32, 32),
    "encoder.layer.0.attention.self.query.bias": (32,),
}
HF_PARAMETERS = 64 * 32 + 32 * 32 + 32


def hf_training_args(seed: int, learning_rate: float, max_steps: int) -> dict:
    """training_args.json as `make_hf_checkpoint` writes it."""
    return {
        "output_dir": "out", "learning_rate": learning_rate, "weight_decay": 0.01,
        "per_device_train_batch_size": 16, "max_steps": max_steps, "seed": seed,
        "data_seed": seed + 1, "optim": "adamw_torch", "lr_scheduler_type": "linear",
        "warmup_ratio": 0.1, "report_to": ["none"], "fp16": False,
        "lr_scheduler_kwargs": {},
    }


def _torch_zip(path, name: str, payload: bytes):
    """A file laid out like torch.save's zip format: `<name>/data.pkl` and friends (the
    pickle is arbitrary bytes: nothing ever loads it)."""
    import zipfile
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name}/data.pkl", b"\x80\x02}q\x00." + payload[:16])
        archive.writestr(f"{name}/byteorder", "little")
        archive.writestr(f"{name}/data/0", payload)
        archive.writestr(f"{name}/version", "3\n")


def make_hf_checkpoint(path, step: int, seed: int = 0, eval_loss: float = 0.5,
                       loss: float = 1.0, eval_accuracy: float = 0.75,
                       learning_rate: float = 5e-5, max_steps: int = 1000,
                       epoch: float | None = None, user: dict | None = None) -> str:
    """A small Hugging Face Trainer checkpoint directory, as the shared corpus makes them:
    config.json, model.safetensors (3 float32 tensors, HF_PARAMETERS parameters,
    __metadata__ {"format": "pt"}), trainer_state.json (the last train entry has `loss`,
    the last eval entry `eval_loss` and `eval_accuracy`), training_args.json (seed,
    data_seed = seed + 1), optimizer.pt / scheduler.pt / rng_state.pth as torch zip
    archives, tokenizer.json and tokenizer_config.json; `user` becomes ckptfs.json.
    epoch defaults to step / 100."""
    os.makedirs(path, exist_ok=True)
    epoch = step / 100 if epoch is None else epoch
    rng = np.random.default_rng(seed * 100_003 + step)
    tensors = {name: rng.standard_normal(shape, dtype=np.float32)
               for name, shape in HF_TENSORS.items()}
    save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})

    def dump(name, doc):
        with open(os.path.join(path, name), "w") as f:
            json.dump(doc, f, indent=2)

    dump("config.json", {"architectures": ["BertModel"], "model_type": "bert",
                         "transformers_version": "4.44.0", "hidden_size": 32,
                         "num_hidden_layers": 1, "vocab_size": 64, "torch_dtype": "float32"})
    half = max(step // 2, 1)
    dump("trainer_state.json", {
        "best_metric": eval_loss, "best_model_checkpoint": f"out/checkpoint-{step}",
        "epoch": epoch, "global_step": step, "max_steps": max_steps,
        "log_history": [
            {"epoch": epoch / 2, "step": half, "loss": loss * 1.5, "learning_rate": learning_rate,
             "grad_norm": 2.5},
            {"epoch": epoch / 2, "step": half, "eval_loss": eval_loss + 0.1,
             "eval_accuracy": eval_accuracy - 0.1, "eval_runtime": 1.5},
            {"epoch": epoch, "step": step, "loss": loss, "learning_rate": learning_rate / 2},
            {"epoch": epoch, "step": step, "eval_loss": eval_loss,
             "eval_accuracy": eval_accuracy, "eval_runtime": 1.25,
             "eval_samples_per_second": 80.0, "eval_steps_per_second": 10.0},
        ],
    })
    dump("training_args.json", hf_training_args(seed, learning_rate, max_steps))
    dump("tokenizer.json", {"version": "1.0", "model": {"type": "WordPiece",
                                                         "vocab": {f"tok{i}": i for i in range(64)}}})
    dump("tokenizer_config.json", {"do_lower_case": True, "model_max_length": 512,
                                   "tokenizer_class": "BertTokenizer"})
    blob = rng.standard_normal(2048, dtype=np.float32).tobytes()
    _torch_zip(os.path.join(path, "optimizer.pt"), "optimizer", blob)
    _torch_zip(os.path.join(path, "scheduler.pt"), "scheduler", blob[:256])
    _torch_zip(os.path.join(path, "rng_state.pth"), "rng_state", blob[:64])
    if user is not None:
        dump("ckptfs.json", user)
    return str(path)
