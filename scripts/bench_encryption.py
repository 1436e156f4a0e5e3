#!/usr/bin/env python3
"""Encryption benchmark: what `ckptfs init --encrypt` costs, against a plain store, in one run.

    scripts/bench_encryption.py [--work DIR] [--mb MB] [--repeat N]

Run as root (it drops the page cache before every cold phase and mounts), with this
Python; `python -m ckptfs` runs whatever `ckptfs` this Python imports (put a checkout's
src/ first on PYTHONPATH to measure it).

The sample: two checkpoints of one run, p/r/step-1 and p/r/step-2, of --mb MB together
(default 200): a model.safetensors of float32 tensors (weights-like, std 0.02) and a
config.json each; step-2 moves every other tensor a little, as a training step does, so
its blocks are XOR-delta coded against step-1's. Built once in WORK/sample.

For each store kind (plain, encrypted), --repeat times (default 3; the kinds in turn
order each time), every phase with a cold page cache:

  import   `ckptfs import` of step-1, then of step-2: wall seconds of the two together
           (and the sync after), and the CPU seconds the commands used
  get      `ckptfs get` of step-2 into an empty directory (SHA-256 checked by ckptfs):
           wall and CPU seconds
  mount    `ckptfs mount`, then step-2's model.safetensors read through the mount in
           1 MiB reads (MB/s, and the CPU seconds the daemon used); then, on a fresh
           mount, the same file read by two threads at once, each its own half (MB/s of
           the two together): the mount decodes chunks on worker threads, so this shows
           whether decryption serializes them
  decode   in one process holding both stores, page cache warm: every chunk of step-2
           read and decoded (`Store.read_chunk`, chunk cache emptied first) by 1 thread
           and by 2 threads, the kinds alternating 5 times (medians of MB/s of decoded
           bytes, and CPU seconds per GB): the CPU cost of decryption, and whether it runs
           in parallel

The machine this runs on is usually shared: wall times move by tens of percent from one
minute to the next, CPU seconds much less; judge the cost of encryption on those.

Prints medians (with the range) and the ratio encrypted / plain; writes every figure as
JSON to WORK/bench_encryption.json. MB are 10^6 bytes.
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_store as bs  # noqa: E402  (drop_caches, Runner, median, log)

CKPTFS = [sys.executable, "-m", "ckptfs"]
KINDS = ("plain", "encrypted")
READ_BLOCK = 1 << 20


def make_sample(root: str, total_mb: int) -> list[str]:
    """Two checkpoint dirs of about total_mb MB together; returns their paths."""
    from safetensors.numpy import save_file
    dirs = [os.path.join(root, "step-1"), os.path.join(root, "step-2")]
    if all(os.path.isfile(os.path.join(d, "model.safetensors")) for d in dirs):
        return dirs
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(0)
    per_version = total_mb * 10**6 // 2
    n_tensors = 16
    rows = per_version // (n_tensors * 1024 * 4)
    tensors = {f"layer.{i}.weight": (rng.standard_normal((rows, 1024), dtype=np.float32) * 0.02)
               for i in range(n_tensors)}
    for step, path in enumerate(dirs, 1):
        os.makedirs(path)
        if step == 2:  # a training step: every other tensor moves a little
            drift = np.random.default_rng(step)
            for i in range(0, n_tensors, 2):
                t = tensors[f"layer.{i}.weight"]
                t += drift.standard_normal(t.shape, dtype=np.float32) * 1e-4
        save_file(tensors, os.path.join(path, "model.safetensors"))
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump({"model_type": "bench", "hidden_size": 1024, "step": step}, f)
    return dirs


def read_range(path: str, start: int, end: int) -> int:
    done = 0
    with open(path, "rb", buffering=0) as f:
        f.seek(start)
        while start + done < end:
            data = f.read(min(READ_BLOCK, end - start - done))
            if not data:
                break
            done += len(data)
    return done


def cold_read_mb_s(path: str, readers: int) -> float:
    """Read `path` from a cold page cache by `readers` threads at once, each its own
    slice of the file (so they decode different chunks): MB/s together."""
    size = os.path.getsize(path)
    bs.drop_caches()
    bounds = [size * i // readers for i in range(readers + 1)]
    sizes = [0] * readers

    def reader(i):
        sizes[i] = read_range(path, bounds[i], bounds[i + 1])
    threads = [threading.Thread(target=reader, args=(i,)) for i in range(readers)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(sizes) / (time.perf_counter() - started) / 1e6


DECODE_ROUNDS = 5


def decode_figures(stores: dict[str, str], env: dict) -> dict:
    """In one process, both stores: every chunk of p/r/step-2 decoded (`read_chunk`, the
    chunk cache emptied before each round, page cache warm) by 1 thread, then by 2,
    alternating the kinds DECODE_ROUNDS times; medians of MB/s (wall) and of the CPU
    seconds the process used per GB decoded."""
    code = f"""
import json, statistics, time
from concurrent.futures import ThreadPoolExecutor
from ckptfs.store import Store
stores = {{k: Store.open(p) for k, p in {stores!r}.items()}}
ids = {{k: [bytes.fromhex(c) for e in s.walk("p", "r", "step-2") if e["type"] == "file"
            for c, _ in e["chunks"]] for k, s in stores.items()}}
out = {{k: {{"1": [], "2": [], "cpu": []}} for k in stores}}
for k, s in stores.items():
    for i in ids[k]: s.read_chunk(i, cache=False)   # warm the page cache
for _ in range({DECODE_ROUNDS}):
    for k, s in stores.items():
        for threads in (1, 2):
            s.reader.clear_cache()
            with ThreadPoolExecutor(threads) as pool:
                wall, cpu = time.perf_counter(), time.process_time()
                n = sum(len(d) for d in pool.map(lambda i: s.read_chunk(i, cache=False), ids[k]))
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            out[k][str(threads)].append(n / wall / 1e6)
            if threads == 1:
                out[k]["cpu"].append(cpu / n * 1e9)
print(json.dumps({{k: {{"decode_1_thread_mb_s": statistics.median(v["1"]),
                       "decode_2_threads_mb_s": statistics.median(v["2"]),
                       "decode_cpu_s_per_gb": statistics.median(v["cpu"])}}
                   for k, v in out.items()}}))
"""
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def daemon_cpu(store: str) -> float:
    """CPU seconds the mount daemon of `store` has used so far."""
    with open(os.path.join(store, "spool", "daemon.running")) as f:
        pid = int(f.read().strip())
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_kind(R, work: str, kind: str, dirs: list[str], env: dict) -> dict:
    """Import, get and mount reads of one store kind, made afresh."""
    store = os.path.join(work, f"store-{kind}")
    keys = os.path.join(work, "keys")
    for path in (store, os.path.join(work, "restore")):
        shutil.rmtree(path, ignore_errors=True)
    os.makedirs(keys, exist_ok=True)
    key_file = os.path.join(keys, f"key-{kind}")
    if os.path.exists(key_file):
        os.unlink(key_file)
    init = CKPTFS + ["init", store] + (["--encrypt", "--key-file", key_file]
                                       if kind == "encrypted" else [])
    R.run(init, f"init {kind}", env=env)
    figures = {}
    bs.drop_caches()
    seconds, cpu = 0.0, children_cpu()
    for d in dirs:
        took, _ = R.run(CKPTFS + ["import", store, d, f"p/r/{os.path.basename(d)}"],
                        f"import {kind}", env=env)
        seconds += took
    figures["import_cpu_s"] = children_cpu() - cpu
    seconds += bs.timed_sync()
    figures["import_s"] = seconds
    figures["store_bytes"] = bs.du_bytes(os.path.join(store, "packs"))
    bs.drop_caches()
    cpu = children_cpu()
    figures["get_s"], _ = R.run(CKPTFS + ["get", store, "p/r/step-2",
                                          os.path.join(work, "restore")], f"get {kind}", env=env)
    figures["get_cpu_s"] = children_cpu() - cpu
    shutil.rmtree(os.path.join(work, "restore"))
    mnt = os.path.join(work, "mnt")
    os.makedirs(mnt, exist_ok=True)
    model = os.path.join(mnt, "projects", "p", "r", "step-2", "model.safetensors")
    for readers, key in ((1, "mount_read_mb_s"), (2, "mount_two_readers_mb_s")):
        # A fresh mount each time: nothing in the daemon's chunk cache.
        R.run(CKPTFS + ["mount", store, mnt], f"mount {kind}", env=env)
        try:
            cpu = daemon_cpu(store)
            figures[key] = cold_read_mb_s(model, readers)
            if readers == 1:
                figures["mount_read_daemon_cpu_s"] = daemon_cpu(store) - cpu
        finally:
            R.run(CKPTFS + ["umount", mnt], f"umount {kind}", env=env)
    return figures


FIGURES = [("import_s", "import (2 versions), s", ".2f"),
           ("import_cpu_s", "import CPU, s", ".2f"),
           ("get_s", "get step-2 cold, s", ".2f"),
           ("get_cpu_s", "get CPU, s", ".2f"),
           ("mount_read_mb_s", "mount read cold, MB/s", ".0f"),
           ("mount_read_daemon_cpu_s", "mount read, daemon CPU s", ".2f"),
           ("mount_two_readers_mb_s", "mount 2 readers cold, MB/s", ".0f"),
           ("decode_1_thread_mb_s", "decode 1 thread warm, MB/s", ".0f"),
           ("decode_2_threads_mb_s", "decode 2 threads warm, MB/s", ".0f"),
           ("decode_cpu_s_per_gb", "decode CPU s per GB", ".2f"),
           ("store_bytes", "packs on disk, MB", ".1f")]


def print_table(summary: dict):
    bs.log(f"{'figure':<30}{'plain':>22}{'encrypted':>22}{'enc/plain':>11}")
    for key, label, spec in FIGURES:
        cells = []
        for kind in KINDS:
            values = summary[kind][key]
            scale = 1e6 if key == "store_bytes" else 1
            med, lo, hi = (bs.median(values) / scale, min(values) / scale, max(values) / scale)
            cells.append(f"{med:{spec}} ({lo:{spec}}-{hi:{spec}})")
        ratio = bs.median(summary["encrypted"][key]) / bs.median(summary["plain"][key])
        bs.log(f"{label:<30}{cells[0]:>22}{cells[1]:>22}{ratio:>10.2f}x")


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=os.path.join(bs.REPO, "bench-out", "encryption"))
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    work = os.path.abspath(a.work)
    os.makedirs(os.path.join(work, "logs"), exist_ok=True)
    R = bs.Runner(os.path.join(work, "logs"))
    env = dict(os.environ)
    env.pop("CKPTFS_KEY_FILE", None)
    dirs = make_sample(os.path.join(work, "sample"), a.mb)
    sample_bytes = sum(bs.tree_bytes(d) for d in dirs)
    bs.log(f"sample: {len(dirs)} versions, {sample_bytes / 1e6:.0f} MB; code: "
           f"{bs.ckptfs_source(sys.executable)}")
    runs = {kind: [] for kind in KINDS}
    for rep in range(a.repeat):
        order = KINDS if rep % 2 == 0 else KINDS[::-1]
        for kind in order:
            runs[kind].append(one_kind(R, work, kind, dirs, env))
        decoded = decode_figures({k: os.path.join(work, f"store-{k}") for k in order}, env)
        for kind in order:
            runs[kind][-1].update(decoded[kind])
            bs.log(f"rep {rep + 1} {kind}: " + ", ".join(f"{k} {v:.2f}"
                                                         for k, v in runs[kind][-1].items()))
    summary = {kind: {key: [r[key] for r in runs[kind]] for key, _, _ in FIGURES}
               for kind in KINDS}
    print_table(summary)
    with open(os.path.join(work, "bench_encryption.json"), "w") as f:
        json.dump({"sample_bytes": sample_bytes, "repeat": a.repeat, "runs": runs}, f, indent=2)


if __name__ == "__main__":
    try:
        main()
    except bs.BenchError as e:
        sys.exit(f"bench_encryption: {e}")
