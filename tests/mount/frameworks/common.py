"""What every training script here shares: determinism, synthetic data, and the small JSON
report (written OUTSIDE the output directory) with the facts the tests check.

Nothing here changes how a framework writes its files: the scripts call the frameworks the
way their documentation does; these helpers only make runs repeatable and record hashes."""
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

from hashing import hash_tree, sha256_file, state_sha256  # noqa: E402,F401  (for the scripts)


def deterministic(seed: int):
    """Seed every generator, one thread, deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


def features(seed: int, n: int, d: int = 8):
    """n synthetic inputs of d features from a generator seeded with `seed` (a batch
    seeded with its step is the same in a resumed run as in an uninterrupted one)."""
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def write_report(path, report: dict):
    """The report goes outside the output directory, atomically (the test reads it after
    the process ends, but a killed run must not leave half a file)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=1, sort_keys=True)
    os.replace(tmp, path)
