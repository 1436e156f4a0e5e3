#!/usr/bin/env python3
"""Seal latency of large files written into the mount, and ingest throughput by workers.

    scripts/bench_stream.py [--work DIR] [--mb 2048] [--shards 4] [--repeat 2]
                            [--baseline-src /work/main/src] [--phases import,mount]

Run as root. Files are made once in WORK (default ./bench-out/stream): --mb MiB of random
bytes (`data.bin`), a safetensors file of --mb MiB of bf16 tensors (values of a trained
layer's scale: N(0, 0.02)), and --shards bf16 safetensors shards of --mb/--shards MiB.

  import  `ckptfs import` of each big file alone, with CKPTFS_INGEST_WORKERS=1 and 2
          (the encoder threads of store/ingest.py), and the baseline code (its own
          fixed pool) in the same run: wall time and MB/s.
  mount   `ckptfs mount STORE MNT --seal-after 600`, then `dd bs=1M` of the file into
          MNT/inbox/p/r/v1/ and a `.seal` marker right after dd exits; seal latency =
          from dd's exit to MNT/projects/p/r/v1 existing. The shards: one dd per shard
          in parallel, latency from the last dd's exit. The daemon's VmRSS is sampled
          every 0.1 s from mount to seal (peak) and its VmHWM read at the end. Once with
          this code, once with the baseline code (PYTHONPATH=--baseline-src): the
          baseline prepares at close, this code streams behind the writer.

Every figure of every repetition goes to WORK/bench_stream.json; tables are printed.
The source files stay in the page cache (24 GiB here): dd measures the mount, not the
disk it reads from. MB are 10^6 bytes.
"""
import argparse
import json
import os
import statistics
import struct
import subprocess
import sys
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
THIS_SRC = os.path.join(os.path.dirname(HERE), "src")
MiB = 1 << 20


def log(msg):
    print(msg, flush=True)


def commit_of(src: str) -> str:
    try:
        return subprocess.run(["git", "-C", src, "rev-parse", "--short", "HEAD"], check=True,
                              capture_output=True, text=True).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "?"


# -- the files ---------------------------------------------------------------------------------
def random_file(path: str, nbytes: int):
    rng = np.random.default_rng(1)
    with open(path, "wb") as f:
        for left in range(nbytes, 0, -64 * MiB):
            f.write(rng.integers(0, 256, min(left, 64 * MiB), dtype=np.uint8).tobytes())


def bf16_safetensors(path: str, nbytes: int, seed: int, tensor_mb: int = 64):
    rng = np.random.default_rng(seed)
    per = min(tensor_mb * MiB, nbytes)
    header, offset = {}, 0
    for i in range(nbytes // per):
        header[f"layers.{i}.weight"] = {"dtype": "BF16", "shape": [per // 2],
                                        "data_offsets": [offset, offset + per]}
        offset += per
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for _ in header:
            bits = (rng.standard_normal(per // 2, dtype=np.float32) * 0.02).view(np.uint32)
            f.write((bits >> 16).astype(np.uint16).tobytes())


def make_files(work: str, mb: int, shards: int) -> dict:
    files = {"random": os.path.join(work, f"random-{mb}", "data.bin"),
             "bf16": os.path.join(work, f"bf16-{mb}", "model.safetensors")}
    shard_dir = os.path.join(work, f"shards-{mb}x{shards}")
    files["shards"] = [os.path.join(shard_dir, f"model-{i + 1:05d}-of-{shards:05d}.safetensors")
                       for i in range(shards)]
    for path, make in ((files["random"], lambda p: random_file(p, mb * MiB)),
                       (files["bf16"], lambda p: bf16_safetensors(p, mb * MiB, 2))):
        if not os.path.exists(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            log(f"making {path}")
            make(path)
    for i, path in enumerate(files["shards"]):
        if not os.path.exists(path):
            os.makedirs(shard_dir, exist_ok=True)
            log(f"making {path}")
            bf16_safetensors(path, mb * MiB // shards, 10 + i)
    return files


# -- running ckptfs -----------------------------------------------------------------------------
def ckptfs(src: str, *args, env=None, check=True) -> subprocess.CompletedProcess:
    full = dict(os.environ, PYTHONPATH=src, **(env or {}))
    return subprocess.run([sys.executable, "-m", "ckptfs", *args], env=full, check=check,
                          capture_output=True, text=True)


def rm(path: str):
    subprocess.run(["rm", "-rf", path], check=True)


def phase_import(args, files, src: str, label: str, workers: int | None) -> list[dict]:
    out = []
    for kind in ("random", "bf16"):
        store = os.path.join(args.work, "store-import")
        rm(store)
        ckptfs(src, "init", store)
        env = {"CKPTFS_INGEST_WORKERS": str(workers)} if workers else {}
        t0 = time.perf_counter()
        ckptfs(src, "import", store, os.path.dirname(files[kind]), "p/r/v1", env=env)
        seconds = time.perf_counter() - t0
        nbytes = os.path.getsize(files[kind])
        out.append({"phase": "import", "code": label, "workers": workers, "file": kind,
                    "seconds": seconds, "mbps": nbytes / seconds / 1e6})
        log(f"  import {kind:6s} {label:8s} workers={workers or 'own'}: {seconds:6.2f} s "
            f"({nbytes / seconds / 1e6:.0f} MB/s)")
        rm(store)
    return out


class RssSampler(threading.Thread):
    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak_kb, self.stopped = pid, 0, threading.Event()

    def status(self, field: str) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        return 0

    def run(self):
        while not self.stopped.wait(0.1):
            try:
                self.peak_kb = max(self.peak_kb, self.status("VmRSS"))
            except FileNotFoundError:
                return


def wait_for(path: str, timeout: float = 1800) -> float:
    deadline = time.perf_counter() + timeout
    while not os.path.isdir(path):
        if time.perf_counter() > deadline:
            raise TimeoutError(path)
        time.sleep(0.02)
    return time.perf_counter()


def phase_mount(args, files, src: str, label: str, kind: str) -> dict:
    store, mnt = os.path.join(args.work, "store-mount"), os.path.join(args.work, "mnt")
    rm(store)
    os.makedirs(mnt, exist_ok=True)
    ckptfs(src, "init", store)
    ckptfs(src, "mount", store, mnt, "--seal-after", "600")
    try:
        with open(os.path.join(store, "spool", "daemon.running")) as f:
            pid = int(f.read().strip())
        sampler = RssSampler(pid)
        idle_kb = sampler.status("VmRSS")
        sampler.start()
        dest = os.path.join(mnt, "inbox", "p", "r", "v1")
        os.makedirs(dest)
        sources = files["shards"] if kind == "shards" else [files[kind]]
        t0 = time.perf_counter()
        writers = [subprocess.Popen(["dd", f"if={s}", f"of={dest}/{os.path.basename(s)}",
                                     "bs=1M", "status=none"]) for s in sources]
        ends = []
        for w in writers:
            w.wait()
            ends.append(time.perf_counter())
        closed = max(ends)
        open(os.path.join(dest, ".seal"), "w").close()
        sealed = wait_for(os.path.join(mnt, "projects", "p", "r", "v1"))
        sampler.stopped.set()
        hwm_kb = sampler.status("VmHWM")
        with open(os.path.join(mnt, ".ckptfs", "stats.json")) as f:
            stats = json.load(f)
    finally:
        ckptfs(src, "umount", mnt, check=False)
        rm(store)
    nbytes = sum(os.path.getsize(s) for s in sources)
    row = {"phase": "mount", "code": label, "file": kind, "bytes": nbytes,
           "dd_s": closed - t0, "dd_mbps": nbytes / (closed - t0) / 1e6,
           "seal_after_close_s": sealed - closed, "idle_rss_kb": idle_kb,
           "peak_rss_kb": sampler.peak_kb, "vmhwm_kb": hwm_kb,
           "files_streamed": stats.get("files_streamed"),
           "files_reused_at_seal": stats.get("files_reused_at_seal")}
    log(f"  mount {kind:6s} {label:8s}: dd {row['dd_s']:5.1f} s ({row['dd_mbps']:.0f} MB/s), "
        f"sealed {row['seal_after_close_s']:5.2f} s after close; RSS idle {idle_kb / 1e3:.0f} "
        f"MB, peak {sampler.peak_kb / 1e3:.0f} MB, VmHWM {hwm_kb / 1e3:.0f} MB; streamed "
        f"{row['files_streamed']}")
    return row


def summary(rows: list[dict]):
    log("\nmedians:")
    keys = sorted({(r["phase"], r["file"], r["code"], r.get("workers")) for r in rows},
                  key=str)
    for phase, kind, code, workers in keys:
        same = [r for r in rows if (r["phase"], r["file"], r["code"], r.get("workers")) ==
                (phase, kind, code, workers)]
        if phase == "import":
            log(f"  import {kind:6s} {code:8s} workers={workers or 'own'}: "
                f"{statistics.median(r['mbps'] for r in same):.0f} MB/s")
        else:
            med = lambda k: statistics.median(r[k] for r in same)  # noqa: E731
            log(f"  mount  {kind:6s} {code:8s}: dd {med('dd_mbps'):.0f} MB/s, sealed "
                f"{med('seal_after_close_s'):.2f} s after close, peak RSS "
                f"{max(r['peak_rss_kb'] for r in same) / 1e3:.0f} MB, VmHWM "
                f"{max(r['vmhwm_kb'] for r in same) / 1e3:.0f} MB")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", default=os.path.join(os.getcwd(), "bench-out", "stream"))
    parser.add_argument("--mb", type=int, default=2048)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--baseline-src", default="/work/main/src")
    parser.add_argument("--phases", default="import,mount")
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    files = make_files(args.work, args.mb, args.shards)
    codes = [("this", THIS_SRC), ("baseline", args.baseline_src)]
    log(f"this: {THIS_SRC} at {commit_of(THIS_SRC)}; baseline: {args.baseline_src} at "
        f"{commit_of(args.baseline_src)}")
    rows = []
    phases = args.phases.split(",")
    for rep in range(args.repeat):
        log(f"repetition {rep + 1}")
        order = codes if rep % 2 == 0 else codes[::-1]
        if "import" in phases:
            for label, src in order:
                for workers in ((1, 2) if label == "this" else (None,)):
                    rows += phase_import(args, files, src, label, workers)
        if "mount" in phases:
            for kind in ("random", "bf16", "shards"):
                for label, src in order:
                    rows.append(phase_mount(args, files, src, label, kind))
    summary(rows)
    with open(os.path.join(args.work, "bench_stream.json"), "w") as f:
        json.dump({"this": commit_of(THIS_SRC), "baseline": commit_of(args.baseline_src),
                   "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
