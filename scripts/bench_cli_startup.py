#!/usr/bin/env python3
"""Benchmark the start-up of the `ckptfs` command: `ckptfs --help` (no store) and
`ckptfs ls STORE` (the store engine, no chunk read), for one or more source trees, runs
alternated between the trees so that a busy machine slows them alike.

Prints, per command and tree, the median over the runs of the wall time and of the
process's CPU time (user + system: steadier than wall time on a shared machine).

    scripts/bench_cli_startup.py [--runs N] SRC_DIR [SRC_DIR ...]

e.g. `scripts/bench_cli_startup.py /work/main/src /work/wt-cli/src` (each the `src`
directory of a checkout; the store is made with the first).
"""
import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time


def run(src: str, args: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one `python -m ckptfs ARGS` with `src` first."""
    env = dict(os.environ, PYTHONPATH=os.path.abspath(src))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "ckptfs", *args], env=env, capture_output=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"ckptfs {' '.join(args)} failed: {proc.stderr.decode()}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def make_store(src: str, work: str) -> str:
    store = os.path.join(work, "store")
    data = os.path.join(work, "data")
    os.makedirs(data)
    with open(os.path.join(data, "weights.bin"), "wb") as f:
        f.write(os.urandom(1 << 20))
    subprocess.run([sys.executable, "-m", "ckptfs", "init", store], check=True,
                   env=dict(os.environ, PYTHONPATH=os.path.abspath(src)), capture_output=True)
    run(src, ["import", store, data, "p/r/v1"])
    return store


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="+", metavar="SRC_DIR")
    parser.add_argument("--runs", type=int, default=10)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ckptfs-startup-") as work:
        store = make_store(options.sources[0], work)
        for args in (["--help"], ["ls", store]):
            times = {src: [] for src in options.sources}
            for _ in range(options.runs):
                for src in options.sources:
                    times[src].append(run(src, args))
            for src, samples in times.items():
                wall = statistics.median(w for w, _ in samples)
                cpu = statistics.median(c for _, c in samples)
                print(f"ckptfs {args[0]:<7} {src}: {wall * 1000:.0f} ms wall, "
                      f"{cpu * 1000:.0f} ms CPU (median of {options.runs})")


if __name__ == "__main__":
    main()
