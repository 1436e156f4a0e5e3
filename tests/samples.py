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
