#!/usr/bin/env python3
"""Large-checkpoint benchmark: an LLM-sized checkpoint and its next training step archived
through the ckptfs mount, with plain `cp -r`, borg and restic, in one run (issue 16).

    scripts/bench_large.py [--weights-gb 8] [--optimizer-gb 2] [--shard-gb 2]
                           [--work DIR] [--repeat N] [--skip-noopfs] [--skip-borg]
                           [--skip-restic] [--keep]

Run it as root (it drops the page cache before every timed copy and cold read). The
ckptfs code measured is the `ckptfs` command beside this Python with PYTHONPATH first
(as scripts/bench_store.py says); the run records its path and git commit.

The checkpoint, built without a hub (numpy and torch only), in the Hugging Face sharded
layout: `model-0000i-of-0000N.safetensors` (bf16, Llama-like tensors, shards of at most
--shard-gb), `model.safetensors.index.json`, `config.json`, and fp32 Adam states as
DeepSpeed-style flat partitions (`bf16_zero_pp_rank_<i>_mp_rank_00_optim_states.pt`,
torch.save of exp_avg / exp_avg_sq), in plain directories `step-1` and `step-2` (the
`.seal` marker is written in the inbox only). Where the values come from (measured once
at start-up from the corpus):

  weights    every bf16 bit pattern's frequency in a trained model's matrices (and,
             apart, its vectors: norms, biases) — sign, exponent and the mantissa per
             exponent together, so whatever is skewed stays skewed. A pool of 16 Mi
             values is sampled from that histogram once; every 16 MiB piece of a tensor
             is a slice of the pool at a random offset with its sign and 3 lowest
             mantissa bits XORed with fresh random bits (all uniform in the model too),
             so no two pieces share content and a 2 GB shard takes seconds to make.
  optimizer  slices of the corpus' own non-zero exp_avg / exp_avg_sq pairs (sign and
             exponent as trained), their low 16 bits replaced by random ones.
  step 2     one optimizer step at a low learning rate (--lr, default 1e-5): each bf16
             weight is given a hidden fp32 master (its 16 low bits random), Adam-sized
             noise (lr x N(0,1)) is added and the result truncated back to bf16: most
             elements keep their value, some move by one ulp. exp_avg and exp_avg_sq
             all change (beta 0.9 / 0.999, a gradient of the size sqrt(v) implies).

Every piece is a function of (--seed, step, tensor, piece), so a step is regenerated
rather than kept: the disk holds one step at a time. Each tool archives step 1 and then
step 2 back to back (so its repository holds step 1 when step 2 comes), then its
repository is deleted before the next tool:

  cp -r    the step to a scratch dir on the same disk; seconds of cp, and of the sync
           after it (the baseline of the archive rate); the copy is deleted at once
  ckptfs   `ckptfs mount STORE MNT`, `cp -r STEP MNT/inbox/llm/run/step-N`, then
           `touch .seal`; from the first byte to MNT/projects/llm/run/step-N: the cp and
           the seal after its end timed apart; the daemon's VmRSS every 0.2 s and VmHWM
  noopfs   the step's files `cat` into the sink of ../shared/bench/noopfs.py, which
           appends them to a spool file on the same disk: the ceiling of a Python FUSE
           write path that spools (--skip-noopfs leaves it out)
  borg     `borg create --compression zstd,3`
  restic   `restic backup` (repository format 2: compressed)

Stored bytes are `du -sb` of the store (its spool left out) or repository after each
step; the second step's added bytes are divided by its size. Reads: shard 1 of each
step, cold (page cache dropped, freshly mounted) and warm (the next read), through the
ckptfs mount, `borg mount`, `restic mount` and from the local file while it exists;
every read is checked against the shard's SHA-256.

Goals printed next to the figures: archive through the mount <= 1.3 x cp -r (+ sync) to
the same disk; the second step stored <= 0.35 of its size; the daemon under 300 MB.

Disk: the run needs about 3 x one step's size free (source + spool or copy + store);
it checks before every step and stops with a message if there is not enough. MB are
10^6 bytes, GB 10^9. Figures go to WORK/bench_large.json (WORK: ./bench-out/large,
git-ignored); command output to WORK/logs/. --keep leaves the last step's source,
store and repositories in WORK.
"""
import argparse
import glob
import hashlib
import json
import math
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from datetime import datetime, timezone

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_mount as bm  # noqa: E402  (mounts undone on any exit, reads, RSS sampling)
import bench_store as bs  # noqa: E402  (runner, caches, du, source and machine records)
from bench_store import BenchError, drop_caches, log, median, rm, timed_sync  # noqa: E402

REPO = bs.REPO
DEFAULT_WORK = os.path.join(REPO, "bench-out", "large")
# The corpus of scripts/bench_store.py (../shared/bench/make_corpus.py): beside the
# checkout (../bench-corpus), else where bench_store.py builds it.
CORPUS = next((c for c in (os.path.normpath(os.path.join(REPO, "..", "bench-corpus", "minilm")),
                           os.path.join(bs.DEFAULT_CORPUS, "minilm")) if os.path.isdir(c)),
              os.path.join(bs.DEFAULT_CORPUS, "minilm"))
DEFAULT_WEIGHTS_SOURCE = os.path.join(CORPUS, "export", "bf16", "model.safetensors")
DEFAULT_OPTIMIZER_SOURCE = os.path.join(CORPUS, "full-ft", "checkpoint-4", "optimizer.pt")
GB = 10 ** 9
MB = 10 ** 6
MiB = 1 << 20

PIECE_ELEMENTS = 8 * MiB            # bf16 elements per generated piece (16 MiB)
OPT_PIECE_ELEMENTS = 4 * MiB        # fp32 elements per generated optimizer piece (16 MiB)
POOL_ELEMENTS = 16 * MiB            # bf16 values sampled from the histogram, once
TABLE_BITS = 24                     # the histogram's sampling table: 2^24 slots
XOR_MASK = np.uint16(0x8007)       # a bf16 value's sign and 3 lowest mantissa bits
PROJECT_RUN = "llm/run"

bm.WARM_READS = 2                   # warm reads of a 2 GB shard after the cold one

GOAL_ARCHIVE_VS_CP = 1.3
GOAL_ADDED_FRACTION = 0.35
GOAL_RSS_MB = 300.0
DISK_MARGIN = 2 * GB
BORG_COMPRESSION = bs.BORG_COMPRESSION

# Llama-like shapes, the largest first: (hidden, intermediate, vocabulary).
MODEL_SHAPES = [(4096, 11008, 32000), (2048, 5504, 32000), (1024, 2752, 32000),
                (512, 1376, 32000)]


# -- what a trained model's values look like ----------------------------------------------
def safetensors_tensors(path):
    """{name: (dtype, shape, raw uint8 array)} of a safetensors file."""
    raw = np.fromfile(path, dtype=np.uint8)
    (n,) = struct.unpack("<Q", raw[:8].tobytes())
    header = json.loads(raw[8:8 + n].tobytes())
    base = 8 + n
    return {name: (v["dtype"], v["shape"], raw[base + v["data_offsets"][0]:base + v["data_offsets"][1]])
            for name, v in header.items() if name != "__metadata__"}


def sampling_table(values: np.ndarray) -> np.ndarray:
    """A 2^TABLE_BITS table of uint16 values in which each value takes slots in proportion
    to its frequency (largest remainders), so that table[uniform index] samples them."""
    counts = np.bincount(values, minlength=1 << 16).astype(np.float64)
    share = counts / counts.sum() * (1 << TABLE_BITS)
    slots = np.floor(share).astype(np.int64)
    short = (1 << TABLE_BITS) - int(slots.sum())
    slots[np.argsort(-(share - slots))[:short]] += 1
    return np.repeat(np.arange(1 << 16, dtype=np.uint16), slots)


def bf16_profile(bits: np.ndarray) -> dict:
    """Sign share, exponent entropy and histogram summary of bf16 bit patterns."""
    exponent = (bits >> 7) & 0xFF
    p = np.bincount(exponent, minlength=256) / len(bits)
    nz = p > 0
    top = np.argsort(-p)[:4]
    return {"elements": int(len(bits)), "negative_share": round(float((bits >> 15).mean()), 4),
            "exponent_entropy_bits": round(float(-(p[nz] * np.log2(p[nz])).sum()), 3),
            "distinct_values": int(len(np.unique(bits))),
            "top_exponents": {int(e) - 127: round(float(p[e]), 4) for e in top}}


class ValueSource:
    """The pools every generated piece is cut from (see the module docstring)."""

    def __init__(self, weights_path, optimizer_path, seed, lr):
        for path, what in ((weights_path, "bf16 model"), (optimizer_path, "optimizer")):
            if not os.path.isfile(path):
                raise BenchError(f"the {what} the values are measured from is missing: {path} "
                                 "(the benchmark corpus, ../shared/bench/make_corpus.py builds it; or pass "
                                 "--weights-source / --optimizer-source)")
        rng = np.random.default_rng([seed, 0])
        matrices, vectors = [], []
        for dtype, shape, raw in safetensors_tensors(weights_path).values():
            if dtype == "BF16":
                (matrices if len(shape) >= 2 else vectors).append(raw.view(np.uint16))
        if not matrices:
            raise BenchError(f"{weights_path} holds no bf16 matrix")
        matrices, vectors = np.concatenate(matrices), np.concatenate(vectors or matrices)
        self.profile = {"source": weights_path, "matrices": bf16_profile(matrices),
                        "vectors": bf16_profile(vectors)}
        self.matrix_pool = sampling_table(matrices)[
            rng.integers(0, 1 << TABLE_BITS, POOL_ELEMENTS, dtype=np.uint32)]
        self.vector_pool = sampling_table(vectors)[
            rng.integers(0, 1 << TABLE_BITS, POOL_ELEMENTS // 16, dtype=np.uint32)]
        self.profile["generated_matrices"] = bf16_profile(self.matrix_pool)
        self.exp_avg, self.exp_avg_sq = adam_pairs(optimizer_path)
        if len(self.exp_avg) < OPT_PIECE_ELEMENTS:
            raise BenchError(f"{optimizer_path}: only {len(self.exp_avg)} non-zero Adam states "
                             f"(at least {OPT_PIECE_ELEMENTS} needed)")
        self.profile["optimizer"] = {"source": optimizer_path, "pairs": int(len(self.exp_avg))}
        # Adam-sized steps: lr x N(0, 1), and N(0, 1) for the optimizer's gradients.
        self.normals = rng.standard_normal(2 * PIECE_ELEMENTS, dtype=np.float32)
        self.steps = (self.normals * np.float32(lr)).astype(np.float32)


def adam_pairs(path) -> tuple[np.ndarray, np.ndarray]:
    """The non-zero (exp_avg, exp_avg_sq) pairs of a torch Adam state dict, as uint32."""
    import torch
    state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)["state"]
    m = np.concatenate([s["exp_avg"].float().numpy().ravel() for s in state.values()])
    v = np.concatenate([s["exp_avg_sq"].float().numpy().ravel() for s in state.values()])
    keep = (m != 0) & (v > 0)
    return m[keep].view(np.uint32).copy(), v[keep].view(np.uint32).copy()


# -- the checkpoint's layout ---------------------------------------------------------------
def plan_weights(total_bytes, shard_bytes) -> dict:
    """Llama-like tensors totalling at least total_bytes of bf16, in shards <= shard_bytes."""
    for hidden, inter, vocab in MODEL_SHAPES:
        embed = vocab * hidden * 2
        layer = (4 * hidden * hidden + 3 * hidden * inter + 2 * hidden) * 2
        if 2 * embed + layer <= total_bytes or hidden == MODEL_SHAPES[-1][0]:
            break
    layers = max(1, math.ceil((total_bytes - 2 * embed - 2 * hidden) / layer))
    tensors = [("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(layers):
        p = f"model.layers.{i}."
        tensors += [(p + "input_layernorm.weight", (hidden,))]
        tensors += [(p + f"self_attn.{x}_proj.weight", (hidden, hidden)) for x in "qkvo"]
        tensors += [(p + "post_attention_layernorm.weight", (hidden,)),
                    (p + "mlp.gate_proj.weight", (inter, hidden)),
                    (p + "mlp.up_proj.weight", (inter, hidden)),
                    (p + "mlp.down_proj.weight", (hidden, inter))]
    tensors += [("model.norm.weight", (hidden,)), ("lm_head.weight", (vocab, hidden))]
    shards, current, size = [], [], 0
    for name, shape in tensors:
        nbytes = math.prod(shape) * 2
        if current and size + nbytes > shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append((name, shape))
        size += nbytes
    shards.append(current)
    n = len(shards)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
              "hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers,
              "num_attention_heads": hidden // 128, "num_key_value_heads": hidden // 128,
              "vocab_size": vocab, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
              "torch_dtype": "bfloat16", "tie_word_embeddings": False}
    return {"config": config,
            "shards": [(f"model-{i + 1:05d}-of-{n:05d}.safetensors", s) for i, s in enumerate(shards)]}


def plan_optimizer(total_bytes, shard_bytes) -> list[tuple[str, int]]:
    """(file name, fp32 elements per state) of flat partitions totalling total_bytes."""
    elements = int(total_bytes) // 8            # exp_avg + exp_avg_sq, 4 bytes each
    per_shard = max(1, int(shard_bytes) // 8)
    out, rank = [], 0
    while elements > 0:
        n = min(per_shard, elements)
        out.append((f"bf16_zero_pp_rank_{rank}_mp_rank_00_optim_states.pt", n))
        elements -= n
        rank += 1
    return out


# -- generating a step -----------------------------------------------------------------------
def pieces(total, size):
    for start in range(0, total, size):
        yield start // size, min(size, total - start)


def random_u16(rng, n) -> np.ndarray:
    return rng.integers(0, 1 << 64, -(-n // 4), dtype=np.uint64, endpoint=False).view(np.uint16)[:n]


class StepWriter:
    """Writes step 1 or step 2 of the checkpoint; every piece is a pure function of
    (seed, step, tensor, piece), step 2 computed from step 1's piece regenerated."""

    def __init__(self, values: ValueSource, seed, layout, optimizer):
        self.values, self.seed = values, seed
        self.layout, self.optimizer = layout, optimizer

    # weights
    def weight_piece(self, step, tensor_id, piece, n, vector) -> tuple[np.ndarray, int]:
        """(bf16 bits of the piece, elements that changed from step 1)."""
        pool = self.values.vector_pool if vector else self.values.matrix_pool
        n_taken = min(n, len(pool))
        rng = np.random.default_rng([self.seed, 1, tensor_id, piece])
        offset = int(rng.integers(0, len(pool) - n_taken + 1))
        bits = np.resize(pool[offset:offset + n_taken], n)
        bits ^= random_u16(rng, n) & XOR_MASK
        if step == 1:
            return bits, 0
        rng2 = np.random.default_rng([self.seed, 2, tensor_id, piece])
        master = bits.astype(np.uint32)            # in place from here: this runs per 16 MiB
        master <<= 16
        master |= random_u16(rng2, n)
        offset = int(rng2.integers(0, len(self.values.steps) - n + 1))
        with np.errstate(invalid="ignore", over="ignore"):
            master.view(np.float32)[:] += self.values.steps[offset:offset + n]
        master >>= 16
        new = master.astype(np.uint16)
        return new, int(np.count_nonzero(new != bits))

    def write_shard(self, step, path, tensors, first_id, digest) -> dict:
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for name, shape in tensors:
            nbytes = math.prod(shape) * 2
            header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-(8 + len(text)) % 8)
        changed = elements = 0
        h = hashlib.sha256() if digest else None
        with open(path, "wb") as f:
            for block in (struct.pack("<Q", len(text)), text):
                f.write(block)
                if h:
                    h.update(block)
            for i, (name, shape) in enumerate(tensors):
                total = math.prod(shape)
                for piece, n in pieces(total, PIECE_ELEMENTS):
                    bits, moved = self.weight_piece(step, first_id + i, piece, n, len(shape) == 1)
                    f.write(bits.data)
                    if h:
                        h.update(bits.data)
                    changed += moved
                elements += total
        return {"elements": elements, "changed": changed, "sha256": h.hexdigest() if h else None}

    # optimizer
    def adam_piece(self, step, rank, piece, n) -> tuple[np.ndarray, np.ndarray]:
        src = self.values
        rng = np.random.default_rng([self.seed, 1, 1 << 20, rank, piece])
        offset = int(rng.integers(0, len(src.exp_avg) - n + 1))
        keep_high = np.uint32(0xFFFF0000)
        m = ((src.exp_avg[offset:offset + n] & keep_high) | random_u16(rng, n)).view(np.float32)
        v = ((src.exp_avg_sq[offset:offset + n] & keep_high) | random_u16(rng, n)).view(np.float32)
        if step == 1:
            return m, v
        rng2 = np.random.default_rng([self.seed, 2, 1 << 20, rank, piece])
        offset = int(rng2.integers(0, len(src.normals) - n + 1))
        grad = np.sqrt(v) * src.normals[offset:offset + n]
        m = np.float32(0.9) * m + np.float32(0.1) * grad
        v = np.float32(0.999) * v + np.float32(0.001) * grad * grad
        return m, v

    def write_optimizer(self, step, path, rank, elements):
        import torch
        m = np.empty(elements, dtype=np.float32)
        v = np.empty(elements, dtype=np.float32)
        for piece, n in pieces(elements, OPT_PIECE_ELEMENTS):
            start = piece * OPT_PIECE_ELEMENTS
            m[start:start + n], v[start:start + n] = self.adam_piece(step, rank, piece, n)
        state = {"state": {0: {"step": torch.tensor(float(step)), "exp_avg": torch.from_numpy(m),
                               "exp_avg_sq": torch.from_numpy(v)}},
                 "param_groups": [{"lr": 1e-5, "betas": (0.9, 0.999), "eps": 1e-8,
                                   "weight_decay": 0.0, "amsgrad": False, "params": [0]}]}
        torch.save(state, path)

    def write(self, step, out_dir) -> dict:
        """Write step `step` into out_dir (which must not exist); what was written."""
        t = time.perf_counter()
        os.makedirs(out_dir)
        weight_map, changed, elements, first_id = {}, 0, 0, 0
        read_sha = None
        for i, (name, tensors) in enumerate(self.layout["shards"]):
            res = self.write_shard(step, os.path.join(out_dir, name), tensors, first_id, i == 0)
            read_sha = read_sha or res["sha256"]
            first_id += len(tensors)
            changed += res["changed"]
            elements += res["elements"]
            weight_map.update({t_name: name for t_name, _ in tensors})
        total_weights = elements * 2
        with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total_weights}, "weight_map": weight_map}, f, indent=2)
        with open(os.path.join(out_dir, "config.json"), "w") as f:
            json.dump(self.layout["config"], f, indent=2)
        for rank, (name, n) in enumerate(self.optimizer):
            self.write_optimizer(step, os.path.join(out_dir, name), rank, n)
        seconds = time.perf_counter() - t
        size = bs.tree_bytes(out_dir)
        return {"step": step, "dir": out_dir, "bytes": size, "weights_bytes": total_weights,
                "seconds": seconds, "read_file": self.layout["shards"][0][0],
                "read_bytes": os.path.getsize(os.path.join(out_dir, self.layout["shards"][0][0])),
                "read_sha256": read_sha,
                "weights_changed_share": (changed / elements) if step == 2 else None}


# -- disk space ---------------------------------------------------------------------------
def free_bytes(path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def require_free(work, nbytes, what):
    free = free_bytes(work)
    if free < nbytes + DISK_MARGIN:
        raise BenchError(
            f"not enough free space in {work} for {what}: it needs about "
            f"{(nbytes + DISK_MARGIN) / GB:.1f} GB ({DISK_MARGIN / GB:.0f} GB of it a margin), "
            f"{free / GB:.1f} GB are free. Free some space, or pass a smaller --weights-gb / "
            "--optimizer-gb")


# -- the run's context and the steps -------------------------------------------------------
class Context(bm.Context):
    def step_dir(self, step):
        return os.path.join(self.work, "src", f"step-{step}")

    def generate(self, step) -> dict:
        """Step `step` on disk (the other step's source deleted first)."""
        rm(self.step_dir(3 - step))
        if self.on_disk == step and os.path.isdir(self.step_dir(step)):
            return self.step_info[step]
        self.on_disk = None
        rm(self.step_dir(step))
        require_free(self.work, self.step_bytes, f"generating step {step}")
        info = self.writer.write(step, self.step_dir(step))
        log(f"  generated step {step}: {info['bytes'] / GB:.2f} GB in {info['seconds']:.1f} s "
            f"({info['bytes'] / MB / info['seconds']:.0f} MB/s)"
            + ("" if step == 1 else f"; {info['weights_changed_share'] * 100:.1f} % of the bf16 "
               "weights moved"))
        self.on_disk = step
        self.step_info[step] = info
        self.generations.append({k: v for k, v in info.items() if k != "dir"})
        return info

    def read_path(self, step):
        return os.path.join(self.step_dir(step), self.step_info[step]["read_file"])


def cp_step(R, ctx, step) -> dict:
    """cp -r of the step to a scratch dir on the same disk; the copy deleted at once."""
    info = ctx.generate(step)
    require_free(ctx.work, info["bytes"], f"cp -r of step {step}")
    dest = os.path.join(ctx.work, "cp-copy", f"step-{step}")
    rm(os.path.dirname(dest))
    os.makedirs(os.path.dirname(dest))
    drop_caches()
    seconds, _ = R.run(["cp", "-r", info["dir"], dest], f"cp step-{step}")
    sync_s = timed_sync()
    rm(os.path.dirname(dest))
    log(f"  cp -r step {step}: {seconds:.1f} s + sync {sync_s:.1f} s "
        f"({info['bytes'] / MB / (seconds + sync_s):.0f} MB/s with the sync)")
    return {"tool": "cp -r", "step": step, "bytes": info["bytes"], "archive_s": seconds,
            "sync_s": sync_s}


def noopfs_step(R, ctx, step) -> dict:
    """The step's files written one after the other (`cat`) into noopfs's `sink`, which
    appends them to a spool file on the same disk: the ceiling of a Python FUSE write path
    that spools, measured like the copy into the inbox."""
    info = ctx.step_info[step]
    require_free(ctx.work, info["bytes"], f"the noopfs copy of step {step}")
    mnt = os.path.join(ctx.work, "mnt", "noopfs")
    spool = os.path.join(ctx.work, "noop-spool")
    rm(spool)
    os.makedirs(spool)
    ctx.mounts.noopfs(ctx.ckptfs_python, ctx.noopfs, mnt, 1,
                      os.path.join(ctx.work, "logs", "noopfs.log"), spool=spool)
    try:
        drop_caches()
        files = sorted(os.path.join(info["dir"], f) for f in os.listdir(info["dir"]))
        seconds, _ = R.run(["sh", "-c", 'cat "$@" > "$0"', os.path.join(mnt, "sink"), *files],
                           f"noopfs cat step-{step}")
        sync_s = timed_sync()
    finally:
        ctx.mounts.umount(mnt)
        rm(spool)
    log(f"  noopfs sink (spooled) step {step}: {seconds:.1f} s + sync {sync_s:.1f} s "
        f"({info['bytes'] / MB / (seconds + sync_s):.0f} MB/s with the sync)")
    return {"tool": "noopfs sink, spooled", "step": step, "bytes": info["bytes"],
            "archive_s": seconds, "sync_s": sync_s}


def read_local(ctx, step) -> dict:
    info = ctx.step_info[step]
    res = bm.read_one(ctx, "disk", ctx.read_path(step), info["read_sha256"], info["read_bytes"],
                      None, False)
    return dict(res, step=step)


def group_cp_ckptfs(R, ctx, rep, out: list):
    """cp -r and the ckptfs mount, step 1 then step 2; local reads; then reads through the
    mount. Rows are appended to `out` as they are measured (kept if a later one fails)."""
    store = os.path.join(ctx.work, "ckptfs-store")
    mnt = os.path.join(ctx.work, "mnt", "ckptfs")
    rm(store)
    R.run([ctx.ckptfs, "init", store], "ckptfs init")
    sampler = bm.RssSampler(mount_ckptfs(ctx, store, mnt))
    sampler.start()
    before = {"stored_bytes": 0}
    try:
        for step in (1, 2):
            ctx.generate(step)
            out.append(read_local(ctx, step))
            archive = [lambda: cp_step(R, ctx, step),
                       lambda: mount_step(R, ctx, store, mnt, step, sampler, before)]
            if ctx.noopfs:
                archive.append(lambda: noopfs_step(R, ctx, step))
            for bench in bs.rotate(archive, rep):
                out.append(bench())
    finally:
        sampler.stop()
        ctx.mounts.umount(mnt)
    for step in (1, 2):
        out.append(read_ckptfs(ctx, store, step))
    if not ctx.keep:
        rm(store)


def mount_ckptfs(ctx, store, mnt) -> int:
    """Mount the store; the daemon's pid (from spool/daemon.running if `mount` said none)."""
    pid = ctx.mounts.ckptfs(ctx.ckptfs, store, mnt, ctx.seal_after)
    if pid is None:
        with open(os.path.join(store, "spool", "daemon.running")) as f:
            pid = int(f.read().strip())
    return pid


def stored_bytes(store) -> int:
    """du -sb of a store without its spool (local state of the machine that mounts it)."""
    spool = os.path.join(store, "spool")
    return bs.du_bytes(store) - (bs.du_bytes(spool) if os.path.isdir(spool) else 0)


def spool_files(store) -> int:
    return sum(len(files) for _, _, files in os.walk(os.path.join(store, "spool", "inbox")))


def mount_step(R, ctx, store, mnt, step, sampler, before) -> dict:
    """cp -r the step into the inbox, touch .seal, wait for the version."""
    info = ctx.step_info[step]
    require_free(ctx.work, 1.5 * info["bytes"], f"archiving step {step} through the mount")
    ref = f"{PROJECT_RUN}/step-{step}"
    dest = os.path.join(mnt, "inbox", ref)
    drop_caches()
    rss_from = len(sampler.samples)
    t0 = time.perf_counter()
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    R.run(["cp", "-r", info["dir"], dest], f"ckptfs mount cp step-{step}")
    t1 = time.perf_counter()
    open(os.path.join(dest, ".seal"), "w").close()
    t2 = bm.wait_for(os.path.join(mnt, "projects", ref), timeout=7200)
    rss = [kb for _, kb in sampler.samples[rss_from:]]
    sync_s = timed_sync()
    deadline = time.monotonic() + 300
    while spool_files(store) and time.monotonic() < deadline:
        time.sleep(0.2)
    stored = stored_bytes(store)
    stats = bm.read_json(os.path.join(mnt, ".ckptfs", "stats.json"))
    res = {"tool": "ckptfs mount", "step": step, "bytes": info["bytes"],
           "archive_s": t2 - t0, "cp_s": t1 - t0, "seal_s": t2 - t1, "sync_s": sync_s,
           "stored_bytes": stored, "added_bytes": stored - before["stored_bytes"],
           "peak_rss_kb": max(rss, default=None), "vmhwm_kb": sampler.status()["VmHWM"],
           "spool_files_left": spool_files(store), "store_stats": stats}
    before["stored_bytes"] = stored
    log(f"  ckptfs mount step {step}: cp {res['cp_s']:.1f} s, then sealed {res['seal_s']:.1f} s "
        f"later: {res['archive_s']:.1f} s from the first byte "
        f"({info['bytes'] / MB / res['archive_s']:.0f} MB/s); added "
        f"{res['added_bytes'] / MB:.0f} MB ({res['added_bytes'] / info['bytes']:.3f} of the step); "
        f"daemon RSS peak {fmt_mb(res['peak_rss_kb'])}, VmHWM {fmt_mb(res['vmhwm_kb'])}")
    return res


def read_ckptfs(ctx, store, step) -> dict:
    info = ctx.step_info[step]
    mnt = os.path.join(ctx.work, "mnt", "ckptfs-read")
    sampler = bm.RssSampler(mount_ckptfs(ctx, store, mnt))
    sampler.start()
    try:
        path = os.path.join(mnt, "projects", PROJECT_RUN, f"step-{step}", info["read_file"])
        res = bm.read_one(ctx, "ckptfs", path, info["read_sha256"], info["read_bytes"], mnt, False)
    finally:
        sampler.stop()
        ctx.mounts.umount(mnt)
    return dict(res, step=step, peak_rss_kb=max((kb for _, kb in sampler.samples), default=None))


def group_borg(R, ctx, rep, out: list):
    repo = os.path.join(ctx.work, "archive", "borg-repo")
    rm(repo)
    rm(os.path.join(ctx.work, "archive", "borg-home"))
    env = bm.borg_env(ctx)
    R.run(["borg", "init", "-e", "none", repo], "borg init", env=env)
    before = 0
    for step in (1, 2):
        info = ctx.generate(step)
        require_free(ctx.work, info["bytes"], f"borg create of step {step}")
        drop_caches()
        seconds, _ = R.run(["borg", "create", "--compression", BORG_COMPRESSION,
                            f"{repo}::step-{step}", f"step-{step}"],
                           f"borg create step-{step}", env=env, cwd=os.path.dirname(info["dir"]))
        out.append(repo_result(f"borg create {BORG_COMPRESSION}", step, info, seconds,
                               timed_sync(), repo, before))
        before = out[-1]["stored_bytes"]
    for step in (1, 2):
        info = ctx.step_info[step]
        mnt = os.path.join(ctx.work, "mnt", "borg")
        ctx.mounts.borg(f"{repo}::step-{step}", mnt, env)
        try:
            res = bm.read_one(ctx, "borg", os.path.join(mnt, f"step-{step}", info["read_file"]),
                              info["read_sha256"], info["read_bytes"], mnt, False)
        finally:
            ctx.mounts.umount(mnt)
        out.append(dict(res, step=step))
    if not ctx.keep:
        rm(repo)


def repo_result(tool, step, info, seconds, sync_s, repo, before) -> dict:
    stored = bs.du_bytes(repo)
    res = {"tool": tool, "step": step, "bytes": info["bytes"], "archive_s": seconds,
           "sync_s": sync_s, "stored_bytes": stored, "added_bytes": stored - before}
    log(f"  {tool} step {step}: {seconds:.1f} s + sync {sync_s:.1f} s "
        f"({info['bytes'] / MB / (seconds + sync_s):.0f} MB/s); added {res['added_bytes'] / MB:.0f} MB "
        f"({res['added_bytes'] / info['bytes']:.3f} of the step)")
    return res


def group_restic(R, ctx, rep, out: list):
    env = bm.restic_env(ctx)
    repo = env["RESTIC_REPOSITORY"]
    rm(repo)
    rm(env["RESTIC_CACHE_DIR"])
    R.run(["restic", "init", "--repository-version", "2"], "restic init", env=env)
    before, snapshots = 0, {}
    for step in (1, 2):
        info = ctx.generate(step)
        require_free(ctx.work, info["bytes"], f"restic backup of step {step}")
        drop_caches()
        seconds, text = R.run(["restic", "backup", info["dir"]], f"restic backup step-{step}", env=env)
        m = re.search(r"snapshot ([0-9a-f]+) saved", text)
        if not m:
            raise BenchError(f"restic backup: no snapshot id in its output:\n{text}")
        snapshots[step] = m.group(1)
        out.append(repo_result("restic backup", step, info, seconds, timed_sync(), repo, before))
        before = out[-1]["stored_bytes"]
    for step in (1, 2):
        info = ctx.step_info[step]
        mnt = os.path.join(ctx.work, "mnt", "restic")
        ctx.mounts.restic(mnt, env, os.path.join(ctx.work, "logs", "restic-mount.log"))
        try:
            found = glob.glob(os.path.join(mnt, "ids", snapshots[step][:8] + "*"))
            if not found:
                raise BenchError(f"restic mount: no {mnt}/ids/{snapshots[step][:8]}*")
            snap_dir = found[0]
            path = os.path.join(snap_dir, ctx.step_dir(step).lstrip("/"), info["read_file"])
            res = bm.read_one(ctx, "restic", path, info["read_sha256"], info["read_bytes"], mnt, False)
        finally:
            ctx.mounts.umount(mnt)
        out.append(dict(res, step=step))
    if not ctx.keep:
        rm(repo)
        rm(env["RESTIC_CACHE_DIR"])


# -- summary and report ---------------------------------------------------------------------
def fmt_mb(kb):
    return "-" if kb is None else f"{kb / 1e3:.0f} MB"


def summarize(reps: list[list[dict]]) -> dict:
    """{'archive'|'read': {(tool, step) as 'tool|step': {figure: median}}} over repetitions."""
    rows = {}
    for rep in reps:
        for r in rep:
            kind = "read" if "cold_s" in r else "archive"
            rows.setdefault(kind, {}).setdefault(f"{r['tool']}|{r['step']}", []).append(r)
    out = {}
    for kind, by_key in rows.items():
        out[kind] = {}
        for key, rs in by_key.items():
            figures = {k for r in rs for k, v in r.items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool)}
            out[kind][key] = {k: median([r[k] for r in rs if r.get(k) is not None])
                              for k in figures if any(r.get(k) is not None for r in rs)}
            out[kind][key]["reps"] = len(rs)
            if "content_ok" in rs[0]:
                out[kind][key]["content_ok"] = all(r.get("content_ok") for r in rs)
    return out


def archive_ratios(reps, step) -> list[float]:
    """Through the mount over cp -r + sync, one per repetition that measured both."""
    out = []
    for rows in reps:
        by_tool = {r["tool"]: r for r in rows if r.get("step") == step and "archive_s" in r}
        ck, cp = by_tool.get("ckptfs mount"), by_tool.get("cp -r")
        if ck and cp:
            out.append(ck["archive_s"] / (cp["archive_s"] + cp["sync_s"]))
    return out


def evaluate_goals(summary, reps) -> list[dict]:
    arch = summary.get("archive", {})
    goals = []
    for step in (1, 2):
        ck, cp = arch.get(f"ckptfs mount|{step}"), arch.get(f"cp -r|{step}")
        if ck and cp:
            base = cp["archive_s"] + cp["sync_s"]
            ratio = ck["archive_s"] / base
            each = archive_ratios(reps, step)
            goals.append({"name": f"archive_step{step}", "met": ratio <= GOAL_ARCHIVE_VS_CP,
                          "ratios": each,
                          "text": f"step {step}: through the mount {ck['archive_s']:.1f} s (first "
                                  f"byte to sealed) <= {GOAL_ARCHIVE_VS_CP} x cp -r + sync "
                                  f"{base:.1f} s: ratio {ratio:.2f} (vs cp -r alone "
                                  f"{ck['archive_s'] / cp['archive_s']:.2f})"
                                  + ("" if len(each) < 2 else "; per repetition "
                                     + ", ".join(f"{x:.2f}" for x in each))})
    ck2 = arch.get("ckptfs mount|2")
    if ck2:
        share = ck2["added_bytes"] / ck2["bytes"]
        goals.append({"name": "step2_added", "met": share <= GOAL_ADDED_FRACTION,
                      "text": f"step 2 stored {ck2['added_bytes'] / MB:.0f} MB = {share:.3f} of "
                              f"its {ck2['bytes'] / MB:.0f} MB <= {GOAL_ADDED_FRACTION}"})
    peaks = [r.get(k) for r in arch.values() for k in ("peak_rss_kb", "vmhwm_kb") if r.get(k)]
    peaks += [r["peak_rss_kb"] for r in summary.get("read", {}).values() if r.get("peak_rss_kb")]
    if peaks:
        peak = max(peaks) / 1e3
        goals.append({"name": "daemon_rss", "met": peak < GOAL_RSS_MB,
                      "text": f"daemon peak memory {peak:.0f} MB (max of sampled VmRSS and "
                              f"VmHWM) < {GOAL_RSS_MB:.0f} MB"})
    return goals


def print_report(result):
    summary = result["summary"]
    n = result["repeat"]
    log()
    log(f"checkpoint: step of {result['step_bytes'] / MB:.0f} MB ({result['weights_bytes'] / MB:.0f} "
        f"MB bf16 weights in {len(result['layout']['shards'])} shards, "
        f"{result['optimizer_bytes'] / MB:.0f} MB fp32 Adam states); "
        + ("one repetition" if n == 1 else f"median of {n} repetitions"))
    log()
    head = (f"{'tool':<22}{'step':>5}{'wall s':>8}{'+sync s':>8}{'MB/s':>6}{'cp s':>7}"
            f"{'seal s':>8}{'stored MB':>11}{'added/size':>11}{'vs cp+sync':>11}")
    log(head)
    log("-" * len(head))
    arch = summary.get("archive", {})
    for key, s in sorted(arch.items(), key=lambda kv: (kv[0].split("|")[1], tool_rank(kv[0]))):
        tool, step = key.split("|")
        cp = arch.get(f"cp -r|{step}")
        base = cp["archive_s"] + cp["sync_s"] if cp else None
        wall = s["archive_s"] + (0 if tool.startswith("ckptfs") else s["sync_s"])
        log(f"{tool:<22}{step:>5}{s['archive_s']:>8.1f}{s['sync_s']:>8.1f}"
            f"{s['bytes'] / MB / wall:>6.0f}{bs.fmt(s.get('cp_s'), '.1f'):>7}"
            f"{bs.fmt(s.get('seal_s'), '.1f'):>8}{bs.fmt(s.get('stored_bytes', 0) / MB or None, '.0f'):>11}"
            f"{bs.fmt(s['added_bytes'] / s['bytes'] if 'added_bytes' in s else None, '.3f'):>11}"
            f"{bs.fmt(wall / base if base else None, '.2f'):>11}")
    log("(MB/s: the step's size over the wall time; for cp, borg and restic with the sync "
        "after them, for ckptfs first byte to sealed, which includes its own syncs)")
    log()
    head = f"{'read shard 1':<22}{'step':>5}{'ra KiB':>8}{'cold MB/s':>11}{'warm MB/s':>11}{'sha ok':>8}"
    log(head)
    log("-" * len(head))
    for key, s in sorted(summary.get("read", {}).items(),
                         key=lambda kv: (kv[0].split("|")[1], tool_rank(kv[0]))):
        tool, step = key.split("|")
        log(f"{tool:<22}{step:>5}{s.get('ra_kb', -1):>8.0f}{s['cold_mbps']:>11.0f}"
            f"{s['warm_mbps']:>11.0f}{'yes' if s.get('content_ok', True) else 'NO':>8}")
    for key, s in arch.items():
        if s.get("peak_rss_kb"):
            log(f"daemon memory, {key.replace('|', ' step ')}: VmRSS peak {fmt_mb(s['peak_rss_kb'])}, "
                f"VmHWM {fmt_mb(s['vmhwm_kb'])}")
    bs.print_targets(result["goals"])
    log()
    log(f"results: {result['json_path']}")


def tool_rank(key):
    order = ["disk", "cp", "noopfs", "ckptfs", "borg", "restic"]
    first = key.split("|")[0].split()[0]
    return order.index(first) if first in order else len(order)


def remove_scratch(work):
    """The step's source, the store and the repositories: tens of GB on a shared disk."""
    for sub in ("src", "cp-copy", "ckptfs-store", "archive", "noop-spool"):
        rm(os.path.join(work, sub))


# -- main -------------------------------------------------------------------------------------
def parse_args():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights-gb", type=float, default=8.0,
                    help="bf16 weights per step, GB (at least this; default 8)")
    ap.add_argument("--optimizer-gb", type=float, default=2.0,
                    help="fp32 Adam states per step, GB (default 2)")
    ap.add_argument("--shard-gb", type=float, default=2.0, help="largest shard, GB (default 2)")
    ap.add_argument("--lr", type=float, default=1e-5,
                    help="the learning rate of step 2's update (default 1e-5)")
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument("--work", default=DEFAULT_WORK,
                    help="scratch directory (default ./bench-out/large)")
    ap.add_argument("--repeat", type=int, default=1, metavar="N",
                    help="measure everything N times, tools rotated; report medians (default 1)")
    ap.add_argument("--weights-source", default=DEFAULT_WEIGHTS_SOURCE,
                    help="bf16 safetensors file whose value distribution the weights follow")
    ap.add_argument("--optimizer-source", default=DEFAULT_OPTIMIZER_SOURCE,
                    help="torch Adam state dict whose states the optimizer shards follow")
    ap.add_argument("--seal-after", type=float, default=600.0, metavar="S",
                    help="the mount's quiet period; the .seal marker seals (default 600)")
    ap.add_argument("--noopfs", default=bm.DEFAULT_NOOPFS,
                    help="path of noopfs.py, the no-op FUSE file system (default: %(default)s)")
    ap.add_argument("--skip-noopfs", action="store_true")
    ap.add_argument("--skip-borg", action="store_true")
    ap.add_argument("--skip-restic", action="store_true")
    ap.add_argument("--keep", action="store_true",
                    help="leave the last step's source and the stores/repositories in WORK")
    a = ap.parse_args()
    if a.repeat < 1:
        ap.error("--repeat must be at least 1")
    if min(a.weights_gb, a.optimizer_gb, a.shard_gb) <= 0:
        ap.error("--weights-gb, --optimizer-gb and --shard-gb must be positive")
    return a


def main():
    a = parse_args()
    if os.geteuid() != 0:
        raise BenchError("run as root: the page cache is dropped before every timed copy and cold read")
    for tool, skip in (("borg", a.skip_borg), ("restic", a.skip_restic)):
        if not skip and not shutil.which(tool):
            raise BenchError(f"`{tool}` is not installed (apt-get install "
                             f"{'borgbackup' if tool == 'borg' else 'restic'}), or pass --skip-{tool}")
    work = os.path.abspath(a.work)
    os.makedirs(work, exist_ok=True)
    for sub in ("mnt", "logs", "src", "cp-copy", "ckptfs-store", "archive", "noop-spool"):
        p = os.path.join(work, sub)
        if os.path.ismount(p) or any(os.path.ismount(os.path.join(p, x)) for x in
                                     (os.listdir(p) if os.path.isdir(p) else [])):
            raise BenchError(f"something is still mounted under {p}: unmount it first")
        rm(p)
    for sub in ("mnt", "logs", "archive"):
        os.makedirs(os.path.join(work, sub))
    R = bs.Runner(os.path.join(work, "logs"))
    ckptfs = bs.find_ckptfs()
    ckptfs_python = os.path.join(os.path.dirname(ckptfs), "python")   # has pyfuse3, for noopfs
    if not os.access(ckptfs_python, os.X_OK):
        ckptfs_python = sys.executable
    noopfs = None if a.skip_noopfs else os.path.abspath(a.noopfs)
    if noopfs and not os.path.isfile(noopfs):
        raise BenchError(f"no noopfs.py at {noopfs}: pass --noopfs PATH or --skip-noopfs")

    layout = plan_weights(a.weights_gb * GB, a.shard_gb * GB)
    optimizer = plan_optimizer(a.optimizer_gb * GB, a.shard_gb * GB)
    weights_bytes = sum(math.prod(s) * 2 for _, ts in layout["shards"] for _, s in ts)
    optimizer_bytes = sum(8 * n for _, n in optimizer)
    step_bytes = weights_bytes + optimizer_bytes
    require_free(work, 3 * step_bytes, "the run (one step's source, its copy or spool, a store)")

    log("measuring the value distributions of the corpus")
    t = time.perf_counter()
    values = ValueSource(a.weights_source, a.optimizer_source, a.seed, a.lr)
    log(f"  {time.perf_counter() - t:.1f} s; bf16 matrices: {values.profile['matrices']}")
    log(f"  generated pool: {values.profile['generated_matrices']}")
    disk_ra = bm.disk_read_ahead_kb(work)
    source = bs.ckptfs_source(ckptfs)
    if source["commit"]:        # HEAD of a branch may differ from main only outside src/
        source["code_commit"] = subprocess.run(
            ["git", "-C", source["path"], "log", "-1", "--format=%H", "--", "."],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout.strip() or None
    mounts = bm.Mounts(R)
    ctx = Context(work=work, ckptfs=ckptfs, mounts=mounts, seal_after=a.seal_after,
                  keep=a.keep, disk_ra_kb=disk_ra, step_bytes=step_bytes,
                  writer=StepWriter(values, a.seed, layout, optimizer), on_disk=None,
                  generations=[], step_info={}, ckptfs_python=ckptfs_python, noopfs=noopfs,
                  fusermount_dir=None if a.skip_restic else bm.fusermount_shim(work))
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([os.path.relpath(sys.argv[0], REPO) if sys.argv[0].startswith(REPO)
                             else sys.argv[0], *sys.argv[1:]]),
        "repeat": a.repeat, "lr": a.lr, "seed": a.seed, "machine": bs.machine_info(),
        "versions": {"ckptfs": bs.tool_version([ckptfs, "--version"]),
                     "borg": None if a.skip_borg else bs.tool_version(["borg", "--version"]),
                     "restic": None if a.skip_restic else bs.tool_version(["restic", "version"])},
        "ckptfs_source": source, "value_profile": values.profile,
        "layout": {"config": layout["config"],
                   "shards": [[name, [[t, list(s)] for t, s in ts]] for name, ts in layout["shards"]],
                   "optimizer": optimizer},
        "weights_bytes": weights_bytes, "optimizer_bytes": optimizer_bytes, "step_bytes": step_bytes,
        "disk_read_ahead_kb": disk_ra, "json_path": os.path.join(work, "bench_large.json"),
        "repetitions": [], "generations": ctx.generations,
    }
    m = result["machine"]
    log(f"machine: {m['nproc']} cpus, {m['cpu']}; "
        + ", ".join(v for v in result["versions"].values() if v))
    log(bs.describe_source(source) + (f"; last commit of the code: {source['code_commit'][:10]}"
                                      if source.get("code_commit") else ""))
    log(f"one step: {step_bytes / MB:.0f} MB ({weights_bytes / MB:.0f} MB bf16 weights in "
        f"{len(layout['shards'])} shards of <= {a.shard_gb:g} GB, {optimizer_bytes / MB:.0f} MB fp32 "
        f"Adam states in {len(optimizer)} files); free in {work}: {free_bytes(work) / GB:.1f} GB")

    def on_signal(signum, _frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    groups = [("cp -r and ckptfs", group_cp_ckptfs)]
    if not a.skip_borg:
        groups.append(("borg", group_borg))
    if not a.skip_restic:
        groups.append(("restic", group_restic))
    try:
        for rep in range(a.repeat):
            log(f"== repetition {rep + 1} of {a.repeat}")
            rows = []
            result["repetitions"].append(rows)
            for name, group in bs.rotate(groups, rep):
                log(f"{name}:")
                group(R, ctx, rep, rows)
    finally:
        mounts.umount_all()
        with open(result["json_path"], "w") as f:   # what was measured survives an error
            json.dump(result, f, indent=2)
        if not a.keep:
            remove_scratch(work)
    result["drop_caches"] = bool(bs._drop_caches_ok)
    result["summary"] = summarize(result["repetitions"])
    result["goals"] = evaluate_goals(result["summary"], result["repetitions"])
    with open(result["json_path"], "w") as f:
        json.dump(result, f, indent=2)
    print_report(result)
    ok = all(r.get("content_ok", True) for rep in result["repetitions"] for r in rep)
    return 0 if ok else 1


if __name__ == "__main__":
    bs.run_main(main, "bench_large")
