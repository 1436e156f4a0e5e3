#!/usr/bin/env python3
"""Benchmark the health figures and the /metrics exposition over a store of many
versions (ckptfs.spool.health, ckptfs.web.metrics): what one page view or one scrape
costs as the store grows.

Seals N small versions for real (default 2,000: 10 projects x 20 runs x 10 versions,
each a 64 KiB file of its own plus a shared one, a `ckptfs.json` with metrics), sets a
schema on one project, verifies, then times, in-process, best of 3 after a first call:
`health`, `storage` (with and without the gc dry run) and `render`. The first call of
`render` is timed alone: it reads the journal and checks the schema for the first time
(later calls read only what was appended).

    scripts/bench_metrics.py [--versions N] [--work DIR]
"""
import argparse
import json
import os
import resource
import shutil
import tempfile
import time

from ckptfs.meta.seal import archive_directory
from ckptfs.spool.health import health, storage
from ckptfs.store import Store
from ckptfs.web.metrics import render

PROJECTS, RUNS = 10, 20


def build(path: str, versions: int, work: str) -> None:
    per_run = max(1, versions // (PROJECTS * RUNS))
    shared = os.urandom(256 * 1024)
    with Store.init(path) as s:
        for p in range(PROJECTS):
            for r in range(RUNS):
                for v in range(per_run):
                    src = os.path.join(work, "src")
                    shutil.rmtree(src, ignore_errors=True)
                    os.makedirs(src)
                    with open(os.path.join(src, "model.bin"), "wb") as f:
                        f.write(os.urandom(64 * 1024))
                    with open(os.path.join(src, "shared.bin"), "wb") as f:
                        f.write(shared)
                    with open(os.path.join(src, "ckptfs.json"), "w") as f:
                        json.dump({"step": v * 100, "metrics": {"loss": 1 / (v + 1)}}, f)
                    archive_directory(s, src, f"proj-{p:02d}", f"run-{r:03d}", f"step-{v * 100}")
        s.set_project_schema("proj-00", {"type": "object", "required": ["notes"]})
        s.verify()


def best_of(call, times: int = 3) -> float:
    best = float("inf")
    for _ in range(times):
        started = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - started)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--versions", type=int, default=2000)
    parser.add_argument("--work", default=None)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="bench-metrics-", dir=args.work)
    try:
        path = os.path.join(work, "store")
        started = time.perf_counter()
        build(path, args.versions, work)
        print(f"built {args.versions} versions in {time.perf_counter() - started:.1f} s")
        with Store.open(path) as s:
            started = time.perf_counter()
            size = len(render(s))
            print(f"render, first call:        {time.perf_counter() - started:.3f} s "
                  f"({size} bytes)")
            print(f"render:                    {best_of(lambda: render(s)):.3f} s")
            print(f"health:                    {best_of(lambda: health(s)):.3f} s")
            print(f"storage (no gc dry run):   "
                  f"{best_of(lambda: storage(s, reclaimable=False)):.3f} s")
            print(f"storage (with gc dry run): {best_of(lambda: storage(s)):.3f} s")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak resident memory of this process: {peak:.0f} MiB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
