"""Hashes the training scripts report and the tests recompute from what the mount holds
(no side effects on import: the tests import it too)."""
import hashlib
import os


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
    """One hash of a model's tensors (names, dtypes, shapes, bytes), whatever file format
    they were saved in: the tests compute it from safetensors and torch files."""
    import torch
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
