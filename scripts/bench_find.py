#!/usr/bin/env python3
"""Benchmark `ckptfs find` over a catalog of many versions (target: 100,000 in < 1 s).

Builds a store whose index holds N versions (default 100,000: 20 projects x 50 runs x
100 versions) with realistic catalog documents: the metadata of a real sealed checkpoint
(the shared corpus's full-ft/checkpoint-1 when it is there, else a sample made here),
varied per version (metrics, step, dataset version, commit, tags). Only one version is
ingested for real: the others are written straight into the LMDB index with the same
calls a seal makes, because sealing 100,000 versions would take hours and `find` reads
nothing but the index.

Prints, for several queries, the wall time of the real command (`ckptfs find STORE EXPR`,
Python start-up included) and of its in-process part, next to the baseline measured in
the same run: `grep -l` over the same documents written as one JSON file per version
(what `grep -rl` over the mount's sidecars has to read).

    scripts/bench_find.py [--versions N] [--work DIR] [--corpus DIR]
"""
import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import orjson

from ckptfs.cli.meta import query_paths
from ckptfs.meta.query import compile_query, sort_documents
from ckptfs.meta.seal import archive_directory
from ckptfs.store import Store
from ckptfs.store.events import search_document
from ckptfs.store.index import version_key

QUERIES = [
    ("metric threshold", "metrics.eval_loss < 0.05", None),
    ("lineage question", 'metrics.eval_loss < 0.3 and lineage.data.version ~ "v3*" '
                         'and lineage.code.git_commit ~ "ab*"', "metrics.eval_loss"),
    ("tag", "tags == production", None),
    ("date and has", "sealed_at >= 2026-06-01 and has lineage.parent and step > 5000", "step"),
]


def real_metadata(store: Store, corpus: str | None, work: str) -> dict:
    """The catalog document of one version sealed for real."""
    src = os.path.join(corpus or "", "full-ft", "checkpoint-1")
    if not corpus or not os.path.isdir(src):
        src = os.path.join(work, "sample")
        os.makedirs(src, exist_ok=True)
        with open(os.path.join(src, "trainer_state.json"), "w") as f:
            f.write('{"global_step": 1, "epoch": 0.25, "log_history": '
                    '[{"step": 1, "loss": 0.05}, {"step": 1, "eval_loss": 0.05}]}')
        with open(os.path.join(src, "config.json"), "w") as f:
            f.write('{"architectures": ["BertModel"], "model_type": "bert"}')
    archive_directory(store, src, "seed", "run", "v1")
    return store.catalog_document("seed", "run", "v1")


def synthetic_documents(template: dict, versions: int):
    rng = random.Random(42)
    projects, runs = 20, 50
    per_run = max(1, versions // (projects * runs))
    seq = 10
    for p in range(projects):
        for r in range(runs):
            for v in range(per_run):
                seq += 1
                step = (v + 1) * 100
                doc = orjson.loads(orjson.dumps(template))
                doc.update(project=f"proj-{p:02d}", run=f"run-{r:03d}", version=f"step-{step}",
                           seq=seq, step=step, epoch=step / 1000,
                           sealed_at=f"2026-{1 + seq % 12:02d}-{1 + seq % 28:02d}T12:00:00.000000Z",
                           tags=["candidate"] if rng.random() < 0.05 else [])
                doc["metrics"] = {"eval_loss": round(rng.uniform(0.01, 2.0), 4),
                                  "loss": round(rng.uniform(0.01, 2.0), 4),
                                  "eval_accuracy": round(rng.uniform(0.5, 1.0), 4)}
                lineage = doc.setdefault("lineage", {})
                lineage["data"] = {"name": "wiki", "version": f"v{1 + rng.randrange(5)}.{rng.randrange(3)}"}
                lineage["code"] = {"git_commit": "%040x" % rng.getrandbits(160)}
                if v:
                    lineage["parent"] = {"project": doc["project"], "run": doc["run"],
                                         "version": f"step-{step - 100}", "source": "previous"}
                yield doc


def fill_index(store: Store, template: dict, versions: int, documents=None) -> int:
    """Write `documents` (default: synthetic_documents) into the index as a seal would."""
    count, batch = 0, []

    def flush():
        def apply(txn):
            catalog = []
            for doc in batch:
                record = {"project": doc["project"], "run": doc["run"], "version": doc["version"],
                          "manifest": "0" * 64, "digest": doc["digest"], "files": doc["file_count"],
                          "logical_bytes": doc["storage"]["logical_bytes"],
                          "new_raw_bytes": doc["storage"]["new_unique_bytes"],
                          "new_stored_bytes": doc["storage"]["new_stored_bytes"],
                          "delta_parent": None, "sealed_at": doc["sealed_at"], "seq": doc["seq"],
                          "root": {"mode": 0o755, "mtime_ns": 0}, "entries": 0}
                store.index.put_version(txn, record, [])
                meta = {k: v for k, v in doc.items() if k not in record and k != "storage"}
                catalog.append((version_key(doc["project"], doc["run"], doc["version"]),
                                search_document(record, meta)))
            store.index.put_search_docs(txn, catalog)
            for doc in batch:
                if doc["version"] == "step-5000":
                    store.index.set_alias(txn, doc["project"], doc["run"], "production", doc["version"])
        store.index.commit(apply)
        batch.clear()

    for doc in documents or synthetic_documents(template, versions):
        batch.append(doc)
        count += 1
        if len(batch) == 10_000:
            flush()
    if batch:
        flush()
    return count


def write_sidecar_files(store: Store, out: str):
    """Every catalog document as a pretty JSON file: the grep baseline's input."""
    for doc in store.catalog_documents():
        run_dir = os.path.join(out, doc["project"], doc["run"])
        os.makedirs(run_dir, exist_ok=True)
        with open(os.path.join(run_dir, doc["version"] + ".json"), "wb") as f:
            f.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2))


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def in_process_find(store_path: str, expr: str, sort: str | None):
    query = compile_query(expr)
    with Store.open(store_path) as store:
        docs = store.catalog_documents(fields=query_paths(query.fields | {sort} - {None}))
    found = [d for d in docs if query.matches(d)]
    if sort:
        found = sort_documents(found, sort)
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--versions", type=int, default=100_000)
    parser.add_argument("--work", default=None, help="scratch directory (default: a temp dir)")
    parser.add_argument("--corpus", default=os.environ.get("CKPTFS_CORPUS", "/tmp/corpus/minilm"))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="ckptfs-bench-find-")
    store_path = os.path.join(work, "store")
    shutil.rmtree(store_path, ignore_errors=True)
    ckptfs = os.path.join(os.path.dirname(sys.executable), "ckptfs")

    with Store.init(store_path) as store:
        template = real_metadata(store, args.corpus, work)
        started = time.perf_counter()
        count = fill_index(store, template, args.versions) + 1
        print(f"catalog: {count} versions written in {time.perf_counter() - started:.1f} s; "
              f"document ~{len(orjson.dumps(template))} bytes")
        sidecars = os.path.join(work, "sidecars")
        shutil.rmtree(sidecars, ignore_errors=True)
        write_sidecar_files(store, sidecars)

    print(f"\n{'query':<18} {'matches':>8} {'ckptfs find':>12} {'in-process':>11} "
          f"{'grep -rl':>9}   target < 1 s")
    for label, expr, sort in QUERIES:
        found = in_process_find(store_path, expr, sort)
        cli = timed(lambda: subprocess.run([ckptfs, "find", store_path, expr, "--limit", "10"]
                                           + (["--sort", sort] if sort else []),
                                           check=True, capture_output=True), args.repeat)
        inproc = timed(lambda: in_process_find(store_path, expr, sort), args.repeat)
        grep = timed(lambda: subprocess.run(["grep", "-rl", '"version": "v3', sidecars],
                                            capture_output=True), args.repeat)
        print(f"{label:<18} {len(found):>8} {cli:>11.2f}s {inproc:>10.2f}s {grep:>8.2f}s   "
              f"{'met' if cli < 1.0 else 'MISSED'}")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
