#!/usr/bin/env python3
"""Benchmark the dashboard: a run page of a run of 10,000 versions (target: under 1 s)
and the server's memory (target: under 200 MB), and the lineage page of a project.

Builds a store whose index holds one run of N versions (default 10,000; each with three
metrics, a step and its parent, as scripts/bench_find.py writes them: one version
sealed for real, the rest written into the index with the calls a seal makes), starts
`ckptfs serve` on it as a process of its own, and times GET requests over HTTP (the
whole page: every row of the table up to its limit, every point of every chart),
median of --repeat. The server's peak resident memory is VmHWM from /proc.

    scripts/bench_web.py [--versions N] [--repeat R] [--work DIR]
"""
import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request

import orjson

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]

from bench_find import fill_index, real_metadata  # noqa: E402

from ckptfs.store import Store  # noqa: E402
from tests.helpers.web import start_server, stop_server  # noqa: E402

PROJECT, RUN = "bench", "long"


def one_run(template: dict, versions: int):
    """A run of `versions` checkpoints, each the child of the one before."""
    rng = random.Random(7)
    for number in range(versions):
        step = (number + 1) * 100
        doc = orjson.loads(orjson.dumps(template))
        doc.update(project=PROJECT, run=RUN, version=f"step-{step}", seq=10 + number,
                   step=step, epoch=step / 1000, tags=[],
                   sealed_at=f"2026-11-{1 + number % 28:02d}T12:00:00.000000Z")
        doc["metrics"] = {"eval_loss": round(2.0 / (1 + number / 500) + rng.uniform(0, 0.05), 4),
                          "loss": round(1.8 / (1 + number / 400) + rng.uniform(0, 0.05), 4),
                          "eval_accuracy": round(min(0.99, 0.5 + number / 25000), 4)}
        lineage = doc.setdefault("lineage", {})
        lineage.pop("parent", None)
        if number:
            lineage["parent"] = {"project": PROJECT, "run": RUN, "version": f"step-{step - 100}",
                                 "source": "previous"}
        yield doc


def fetch(url: str) -> int:
    with urllib.request.urlopen(url, timeout=600) as response:
        return len(response.read())


def timed(url: str, repeat: int) -> tuple[float, int]:
    times, size = [], 0
    for _ in range(repeat):
        started = time.perf_counter()
        size = fetch(url)
        times.append(time.perf_counter() - started)
    return statistics.median(times), size


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--versions", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--work", default=None, help="scratch directory (default: a temp dir)")
    args = parser.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="ckptfs-bench-web-")
    store_path = os.path.join(work, "store")
    try:
        with Store.init(store_path) as store:
            template = real_metadata(store, None, work)
            count = fill_index(store, template, args.versions, one_run(template, args.versions))
            store.update_project_settings(PROJECT, {"primary_metric": "eval_loss"})
        print(f"store: one run of {count} versions (+1 sealed for real)")
        server, address, reader = start_server(store_path)
        try:
            print(f"server: {address} (pid {server.pid}), memory at start "
                  f"{peak_rss_mb(server.pid):.0f} MB")
            for what, path in [("projects page", "/"),
                               ("run page", f"/p/{PROJECT}/{RUN}"),
                               ("run page, filtered", f"/p/{PROJECT}/{RUN}?q=eval_loss+%3C+0.5"),
                               ("version page", f"/p/{PROJECT}/{RUN}/step-500000"),
                               ("lineage of the project", f"/lineage?project={PROJECT}")]:
                seconds, size = timed(address + path, args.repeat)
                print(f"{what:<26} {seconds * 1000:8.0f} ms  {size / 1e6:6.1f} MB of HTML "
                      f"(median of {args.repeat})")
            print(f"server peak memory (VmHWM): {peak_rss_mb(server.pid):.0f} MB")
        finally:
            stop_server(server, reader)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
