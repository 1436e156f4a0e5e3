"""What every training script here shares: determinism, and the small JSON report (written
OUTSIDE the output directory) with the facts the tests check.

Nothing here changes how a framework writes its files: the scripts call the frameworks the
way their documentation does; these helpers only make runs repeatable and record hashes."""
import hashlib
import json
import os
import random

# Before torch is imported: one thread, deterministic cuBLAS (harmless on CPU), no hub.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402


def deterministic(seed: int):
    """Seed every generator, one thread, deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def hash_tree(root) -> dict:
    """{relative path: sha256} of every regular file under `root`."""
    out = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            full = os.path.join(dirpath, name)
            if os.path.isfile(full) and not os.path.islink(full):
                out[os.path.relpath(full, root)] = sha256_file(full)
    return dict(sorted(out.items()))


def state_sha256(state_dict) -> str:
    """One hash of a model's tensors (names, dtypes, shapes, bytes), independent of the file
    format they were saved in: the tests compute it from safetensors/torch files."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def write_report(path, report: dict):
    """The report goes outside the output directory, atomically (the test reads it after
    the process ends, but a killed run must not leave half a file)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=1, sort_keys=True)
    os.replace(tmp, path)
