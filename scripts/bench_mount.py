#!/usr/bin/env python3
"""Mount benchmark: the ckptfs mount against borg, restic, plain files and a no-op FUSE
file system, in one run.

    scripts/bench_mount.py [--corpus DIR] [--work DIR] [--repeat N] [--seal-after S]
                           [--phases archive,read,tree,memory] [--tree-versions N]
                           [--big-mb MB] [--noopfs PATH] [--no-writeback-baseline]
                           [--skip-borg] [--skip-restic]

Run it as root (it drops the page cache between phases and raises read_ahead_kb), with
the `ckptfs` command to measure beside this Python or first on PATH; to measure one
pinned commit while others edit the tree, clone it and put the clone's src/ first on
PYTHONPATH (the run records the code it measured: path, commit, uncommitted changes):

    git clone -q /work/main /tmp/ckptfs-mount-bench-src
    PYTHONPATH=/tmp/ckptfs-mount-bench-src/src .venv/bin/python scripts/bench_mount.py \\
        --corpus /tmp/corpus --work /tmp/bench-mount --repeat 3

The corpus is the one scripts/bench_store.py uses (PROJECT/RUN/VERSION checkpoint dirs,
archived in the same order). Phases, each measured --repeat times (tools in a rotated
order each repetition), every baseline in the same run:

  archive  `ckptfs mount STORE MNT --seal-after S` (default 1 s), then
           `cp -r DIR MNT/inbox/PROJECT/RUN/VERSION` for every checkpoint, back to back,
           and poll until every MNT/projects/PROJECT/RUN/VERSION exists; total wall time
           from the first cp to the last seal (the last quiet period included). Also
           measured: one checkpoint at a time (cp -r, wait for its seal, then the next:
           S x checkpoints of quiet periods in series), the same with a `.seal` marker
           written after each cp (no quiet period), `ckptfs import` per checkpoint (no
           mount), `borg create --compression zstd,3` per checkpoint, `restic backup` per
           checkpoint, and plain `cp -r` per checkpoint to a scratch dir. Target: ckptfs
           through the mount (back to back) <= 1.5 x borg's wall time.
  read     cold sequential read (1 MiB blocks, page cache dropped, file system freshly
           mounted) of the first checkpoint's model.safetensors through the ckptfs mount
           (projects/...), `borg mount` and `restic mount` of the repos from `archive`,
           the no-op FUSE file system (noopfs.py, the ceiling of a Python FUSE data path)
           and the source file on the local disk; then two warm reads. Once with the
           read_ahead_kb each mount gets (recorded right after mounting), once after
           raising /sys/class/bdi/<mountpoint -d>/read_ahead_kb to 1024 for every mount.
           Targets: cold ckptfs >= 2 x restic and >= 1.5 x borg; warm ckptfs >= 5 GB/s.
  tree     a store of --tree-versions (default 1000) tiny Trainer-like versions
           (p/run-<i % 10>/step-<i>, built once through the Python API and reused by
           later runs), and the same tree copied once to a plain directory (`cp -a` of
           MNT/projects); then `ls -lR` and `grep -r eval_loss` over each, cold (fresh
           mount, page cache dropped) and warm (the same command again). Target: ckptfs
           within 3 x the plain directory.
  memory   one --big-mb (default 2048) MiB file of random bytes copied with
           `dd bs=1M` into MNT/inbox/big/run/v1/data.bin and sealed (as big/run/data);
           the daemon's VmRSS (/proc/PID/status, PID from STORE/spool/daemon.running)
           sampled every 0.2 s from before the copy until the version is sealed; peak
           reported, with VmHWM.
           Target: peak under 300 MB. Write rate baselines in the same phase: the same
           dd into noopfs's `sink` (discarded, and appended to a spool file; spooled
           again with the kernel's writeback cache on, as ckptfs runs) and to the local
           disk; with --no-writeback-baseline also into a ckptfs mount without the cache
           (CKPTFS_WRITEBACK_CACHE=0). Target: ckptfs >= 0.8 x noopfs spooled.

MB are 10^6 bytes, MiB 2^20. Every mount is unmounted at the end, also on errors
(`ckptfs umount` / `fusermount3 -u`, `borg umount`, SIGINT to `restic mount`, lazy
`fusermount3 -uz` as the last resort).

Prints tables with the targets and writes every figure of every repetition as JSON to
WORK/bench_mount.json (WORK defaults to ./bench-out, git-ignored); command output goes
to WORK/logs/.
"""
import argparse
import glob
import hashlib
import json
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_store as bs  # noqa: E402  (shared helpers: caches, runner, corpus order)
from bench_store import BenchError, drop_caches, log, median, rm, timed_sync  # noqa: E402

REPO = bs.REPO
DEFAULT_WORK = bs.DEFAULT_WORK
DEFAULT_NOOPFS = os.path.normpath(os.path.join(REPO, "..", "shared", "bench", "noopfs.py"))
MiB = 1024 * 1024
PHASES = ("archive", "read", "tree", "memory")
BORG_COMPRESSION = bs.BORG_COMPRESSION
RA_RAISED_KB = 1024
POLL_S = 0.02            # how often the archive phase looks for the sealed version
RSS_SAMPLE_S = 0.2
WARM_READS = 5           # warm reads after the cold one (the first is the reported figure)

TARGET_ARCHIVE_VS_BORG = 1.5
TARGET_COLD_VS_RESTIC = 2.0
TARGET_COLD_VS_BORG = 1.5
TARGET_WARM_MBPS = 5000.0
TARGET_TREE_VS_PLAIN = 3.0
TARGET_PEAK_RSS_MB = 300.0
TARGET_WRITE_VS_NOOPFS = 0.8   # dd into the inbox vs noopfs's spooled sink, same run
# noopfs.py run with the kernel's writeback cache on, as the ckptfs daemon runs (the
# no-op file system has no option of its own for it).
NOOPFS_WRITEBACK = ("import runpy, sys, pyfuse3; pyfuse3.Operations.enable_writeback_cache = True; "
                    "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")

# Scratch subdirectories of WORK that a run owns (removed when it starts). The tree
# store (tree-store, tree-plain, tree-info.json) and the random file (big.bin) are kept
# between runs: built once, reused while the commit and the sizes match.
OWNED = ("mnt", "archive", "mem", "logs", "noop-spool")


# -- mounts: every one is recorded so that it can be undone on any exit ------------------
class Mounts:
    def __init__(self, R):
        self.R = R
        self.active = {}   # mountpoint -> dict(kind, proc, pid, env)

    def _wait_mounted(self, mnt, proc=None, ready=None, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if os.path.ismount(mnt) and (ready is None or ready()):
                return
            if proc is not None and proc.poll() is not None:
                raise BenchError(f"the file system for {mnt} exited with status "
                                 f"{proc.returncode} before it was mounted")
            time.sleep(0.05)
        raise BenchError(f"{mnt} was not mounted within {timeout} s")

    def ckptfs(self, ckptfs, store, mnt, seal_after, cache_dir=None, env=None):
        os.makedirs(mnt, exist_ok=True)
        cache = ["--cache-dir", cache_dir] if cache_dir else []   # a store on S3
        _, out = self.R.run([ckptfs, *cache, "mount", store, mnt, "--seal-after", str(seal_after)],
                            f"ckptfs mount {os.path.basename(store)}", env=env)
        m = re.search(r"daemon pid (\d+)", out)
        pid = int(m.group(1)) if m else None
        self.active[mnt] = {"kind": "ckptfs", "pid": pid}
        self._wait_mounted(mnt)
        return pid

    def borg(self, repo_archive, mnt, env):
        os.makedirs(mnt, exist_ok=True)
        self.R.run(["borg", "mount", repo_archive, mnt], "borg mount", env=env)
        self.active[mnt] = {"kind": "borg", "env": env}
        self._wait_mounted(mnt)

    def restic(self, mnt, env, log_path):
        os.makedirs(mnt, exist_ok=True)
        with open(log_path, "ab") as f:
            proc = subprocess.Popen(["restic", "mount", mnt], env=env, stdout=f,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.active[mnt] = {"kind": "restic", "proc": proc}
        self._wait_mounted(mnt, proc, ready=lambda: os.path.isdir(os.path.join(mnt, "ids"))
                           and os.listdir(os.path.join(mnt, "ids")))

    def noopfs(self, python, script, mnt, size_mb, log_path, spool=None, writeback=False):
        os.makedirs(mnt, exist_ok=True)
        env = dict(os.environ, SIZES="1")
        if spool:
            env["SPOOL"] = spool
        wrapper = ["-c", NOOPFS_WRITEBACK] if writeback else []
        with open(log_path, "ab") as f:
            proc = subprocess.Popen([python, *wrapper, script, mnt, str(size_mb)], env=env, stdout=f,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.active[mnt] = {"kind": "noopfs", "proc": proc}
        self._wait_mounted(mnt, proc,
                           ready=lambda: os.path.exists(os.path.join(mnt, "model.safetensors")))

    def umount(self, mnt):
        info = self.active.pop(mnt, None)
        if info is None:
            return
        kind = info["kind"]
        try:
            if kind == "borg" and os.path.ismount(mnt):
                subprocess.run(["borg", "umount", mnt], env=info["env"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
            elif kind == "restic":
                if info["proc"].poll() is None:
                    info["proc"].send_signal(signal.SIGINT)
                    try:
                        info["proc"].wait(30)
                    except subprocess.TimeoutExpired:
                        info["proc"].kill()
                        info["proc"].wait()
            elif os.path.ismount(mnt):
                subprocess.run(["fusermount3", "-u", mnt], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as e:
            log(f"  warning: unmounting {mnt}: {e}")
        for _ in range(200):
            if not os.path.ismount(mnt):
                break
            time.sleep(0.05)
        else:
            log(f"  warning: {mnt} still mounted: lazy unmount (fusermount3 -uz)")
            subprocess.run(["fusermount3", "-uz", mnt], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        # Wait for the serving process to finish, so that the next mount of the same store
        # does not race its shutdown (ckptfs removes spool/daemon.running as it exits).
        proc, pid = info.get("proc"), info.get("pid")
        if proc is not None:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        elif pid:
            for _ in range(600):
                if not os.path.exists(f"/proc/{pid}"):
                    break
                time.sleep(0.05)
            else:
                log(f"  warning: daemon pid {pid} still running 30 s after unmount")

    def umount_all(self):
        for mnt in list(self.active):
            self.umount(mnt)


def bdi_of(mnt) -> str:
    return subprocess.run(["mountpoint", "-d", mnt], check=True, stdout=subprocess.PIPE,
                          text=True).stdout.strip()


def read_ahead_kb(mnt) -> int:
    with open(f"/sys/class/bdi/{bdi_of(mnt)}/read_ahead_kb") as f:
        return int(f.read())


def set_read_ahead_kb(mnt, kb) -> int:
    with open(f"/sys/class/bdi/{bdi_of(mnt)}/read_ahead_kb", "w") as f:
        f.write(f"{kb}\n")
    return read_ahead_kb(mnt)


def disk_read_ahead_kb(path) -> int:
    """read_ahead_kb of the block device holding `path` (-1 where there is none)."""
    dev = os.stat(path).st_dev
    try:
        with open(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}/queue/read_ahead_kb") as f:
            return int(f.read())
    except OSError:
        return -1


def read_file(path, block=MiB, hasher=None) -> tuple[int, float]:
    """Read a file sequentially in `block` pieces: (bytes, seconds, open to close)."""
    buf = bytearray(block)
    view = memoryview(buf)
    total = 0
    t = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(view):
            total += n
            if hasher is not None:
                hasher.update(view[:n])
    return total, time.perf_counter() - t


def sha256_file(path) -> str:
    h = hashlib.sha256()
    read_file(path, 4 * MiB, h)
    return h.hexdigest()


def wait_for(path, timeout, poll=POLL_S) -> float:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise BenchError(f"{path} did not appear within {timeout:.0f} s")
        time.sleep(poll)
    return time.perf_counter()


def read_json(path):
    with open(path) as f:
        return json.load(f)


# -- phase 1: archive --------------------------------------------------------------------
MOUNT_MODES = {
    # mode: (label, store dir, how)
    "batch": ("ckptfs mount", "ckptfs",
              "cp -r every checkpoint back to back, then wait for all the seals"),
    "each": ("ckptfs mount, 1 by 1", "ckptfs-each",
             "cp -r one checkpoint, wait for its seal, then the next"),
    "marker": ("ckptfs mount, .seal", "ckptfs-marker",
               "cp -r one checkpoint, touch .seal, wait for its seal, then the next"),
}


def archive_ckptfs_mount(R, ctx, mode):
    """Archive every checkpoint by cp -r into the inbox (see MOUNT_MODES)."""
    label, store_dir, how = MOUNT_MODES[mode]
    store = os.path.join(ctx.work, "archive", store_dir)
    mnt = os.path.join(ctx.work, "mnt", "archive")
    rm(store)
    R.run([ctx.ckptfs, "init", store], f"{label} init")
    ctx.mounts.ckptfs(ctx.ckptfs, store, mnt, ctx.seal_after)
    log(f"{label}: {how}" + ("" if mode == "marker" else f"; quiet period {ctx.seal_after:g} s"))
    try:
        drop_caches()
        per = []
        t_first = time.perf_counter()
        for src, ref in ctx.checkpoints:
            dest = os.path.join(mnt, "inbox", ref)
            t0 = time.perf_counter()
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            R.run(["cp", "-r", src, dest], f"{label} cp {ref}")
            if mode == "marker":
                open(os.path.join(dest, ".seal"), "w").close()
            t1 = time.perf_counter()
            t2 = t1 if mode == "batch" else wait_for(os.path.join(mnt, "projects", ref), timeout=600)
            per.append({"ref": ref, "cp_s": t1 - t0, "wait_s": t2 - t1})
            log(f"  {ref:<32} cp {t1 - t0:5.2f} s" + ("" if mode == "batch" else
                                                       f"  until sealed {t2 - t1:5.2f} s"))
        if mode == "batch":
            t1 = time.perf_counter()
            for _, ref in ctx.checkpoints:
                wait_for(os.path.join(mnt, "projects", ref), timeout=600)
            per[-1]["wait_s"] = time.perf_counter() - t1
            log(f"  then until all sealed {per[-1]['wait_s']:5.2f} s")
        total = time.perf_counter() - t_first
        stats = read_json(os.path.join(mnt, ".ckptfs", "stats.json"))
        sync_s = timed_sync()
        problems = []
        if ctx.verify:
            for src, ref in ctx.checkpoints:
                problem = bs.compare_trees(ctx.digests[ref], os.path.join(mnt, "projects", ref))
                if problem:
                    problems.append(f"{ref}: {problem}")
                    log(f"  WARNING: {ref} through the mount differs from the source: {problem}")
    finally:
        ctx.mounts.umount(mnt)
    spool_left = sum(len(files) for _, _, files in os.walk(os.path.join(store, "spool", "inbox")))
    quiet = {"each": ctx.seal_after * len(ctx.checkpoints), "batch": ctx.seal_after, "marker": 0.0}
    return {"tool": label, "mode": mode, "archive_s": total, "sync_s": sync_s,
            "quiet_s": quiet[mode],
            "cp_s": sum(x["cp_s"] for x in per), "wait_s": sum(x["wait_s"] for x in per),
            "ingest_s": stats.get("ingest_seconds"), "versions_sealed": stats.get("versions_sealed"),
            "files_prepared": stats.get("files_prepared"),
            "files_reused_at_seal": stats.get("files_reused_at_seal"),
            "stored_bytes": bs.du_bytes(store), "store_stats": stats, "per_checkpoint": per,
            "verified": ctx.verify, "content_ok": not problems, "problems": problems,
            "spool_files_left": spool_left}


def archive_ckptfs_import(R, ctx):
    store = os.path.join(ctx.work, "archive", "ckptfs-import")
    log("ckptfs import: one `ckptfs import` per checkpoint (no mount)")
    res = bs.ckptfs_import_all(R, ctx.ckptfs, store, ctx.checkpoints, "ckptfs import")
    rm(store)
    return {"tool": "ckptfs import", "archive_s": res["import_s"], "sync_s": res["import_sync_s"],
            "stored_bytes": res["stored_bytes"],
            "per_checkpoint": [{"ref": p["ref"], "wall_s": p["wall_s"], "reported_s": p["reported_s"]}
                               for p in res["per_checkpoint"]]}


def archive_cp(R, ctx):
    dest_root = os.path.join(ctx.work, "archive", "cp")
    rm(dest_root)
    log("cp -r: each checkpoint to a scratch dir")
    drop_caches()
    total, per = 0.0, []
    for src, ref in ctx.checkpoints:
        dest = os.path.join(dest_root, ref)
        t = time.perf_counter()
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        R.run(["cp", "-r", src, dest], f"cp {ref}")
        s = time.perf_counter() - t
        total += s
        per.append({"ref": ref, "wall_s": s})
    sync_s = timed_sync()
    size = bs.du_bytes(dest_root)
    rm(dest_root)
    return {"tool": "cp -r", "archive_s": total, "sync_s": sync_s, "stored_bytes": size,
            "per_checkpoint": per}


def borg_env(ctx):
    env = dict(os.environ, BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes",
               BORG_RELOCATED_REPO_ACCESS_IS_OK="yes",
               BORG_BASE_DIR=os.path.join(ctx.work, "archive", "borg-home"))
    env.pop("BORG_PASSPHRASE", None)
    return env


def archive_borg(R, ctx):
    repo = os.path.join(ctx.work, "archive", "borg-repo")
    rm(repo)
    rm(os.path.join(ctx.work, "archive", "borg-home"))
    env = borg_env(ctx)
    total, per = bs.borg_create_all(R, repo, env, ctx.checkpoints)
    sync_s = timed_sync()
    return {"tool": f"borg create {BORG_COMPRESSION}", "archive_s": total, "sync_s": sync_s,
            "stored_bytes": bs.du_bytes(repo), "per_checkpoint": per}


def restic_env(ctx):
    env = dict(os.environ, RESTIC_PASSWORD="bench",
               RESTIC_REPOSITORY=os.path.join(ctx.work, "archive", "restic-repo"),
               RESTIC_CACHE_DIR=os.path.join(ctx.work, "archive", "restic-cache"))
    if ctx.fusermount_dir:
        env["PATH"] = ctx.fusermount_dir + os.pathsep + env.get("PATH", "")
    return env


def archive_restic(R, ctx):
    env = restic_env(ctx)
    rm(env["RESTIC_REPOSITORY"])
    rm(env["RESTIC_CACHE_DIR"])
    log("restic: init + backup per checkpoint")
    R.run(["restic", "init"], "restic init", env=env)
    drop_caches()
    total, per = 0.0, []
    for src, ref in ctx.checkpoints:
        s, out = R.run(["restic", "backup", src], f"restic backup {ref}", env=env)
        m = re.search(r"snapshot ([0-9a-f]+) saved", out)
        if not m:
            raise BenchError(f"restic backup {src}: no snapshot id in its output:\n{out}")
        ctx.restic_snapshots[ref] = m.group(1)
        total += s
        per.append({"ref": ref, "wall_s": s, "snapshot": m.group(1)})
    sync_s = timed_sync()
    return {"tool": "restic backup", "archive_s": total, "sync_s": sync_s,
            "stored_bytes": bs.du_bytes(env["RESTIC_REPOSITORY"]), "per_checkpoint": per}


def phase_archive(R, ctx, rep):
    benches = [("cp", lambda: archive_cp(R, ctx)),
               ("mount", lambda: archive_ckptfs_mount(R, ctx, "batch")),
               ("each", lambda: archive_ckptfs_mount(R, ctx, "each")),
               ("marker", lambda: archive_ckptfs_mount(R, ctx, "marker")),
               ("import", lambda: archive_ckptfs_import(R, ctx))]
    if not ctx.skip_borg:
        benches.append(("borg", lambda: archive_borg(R, ctx)))
    if not ctx.skip_restic:
        benches.append(("restic", lambda: archive_restic(R, ctx)))
    out = []
    for _, bench in bs.rotate(benches, rep):
        res = bench()
        log(f"  -> {res['tool']}: {res['archive_s']:.1f} s (+sync {res['sync_s']:.1f} s), "
            f"stored {res['stored_bytes'] / 1e6:.1f} MB")
        out.append(res)
    return out


# -- phase 2: cold and warm reads ----------------------------------------------------------
def read_one(ctx, tool, path, expected_sha, expected_size, mnt, raise_ra, extra=None):
    """Cold read, then two warm reads; read_ahead_kb as mounted (and raised if asked)."""
    res = {"tool": tool, "path": path}
    if mnt:
        res["bdi"] = bdi_of(mnt)
        res["ra_after_mount_kb"] = read_ahead_kb(mnt)
        res["ra_kb"] = set_read_ahead_kb(mnt, RA_RAISED_KB) if raise_ra else res["ra_after_mount_kb"]
    else:
        res["ra_kb"] = res["ra_after_mount_kb"] = ctx.disk_ra_kb
    drop_caches()
    n, s = read_file(path)
    if expected_size is not None and n != expected_size:
        raise BenchError(f"{tool}: read {n} bytes from {path}, expected {expected_size}")
    res.update(bytes=n, cold_s=s, cold_mbps=n / s / 1e6)
    # Warm: the second read is the figure; four more show how much a 20 ms read varies.
    warm = [read_file(path)[1] for _ in range(WARM_READS)]
    res.update(warm_s=warm[0], warm_mbps=n / warm[0] / 1e6,
               warm_all_mbps=[n / w / 1e6 for w in warm],
               warm_median_mbps=median([n / w / 1e6 for w in warm]))
    if expected_sha:
        res["content_ok"] = sha256_file(path) == expected_sha
        if not res["content_ok"]:
            log(f"  WARNING: {tool}: {path} read back with another SHA-256 than the source")
    if extra:
        res.update(extra)
    log(f"  {tool:<8} ra {res['ra_kb']:>4} KiB (after mount {res['ra_after_mount_kb']}): "
        f"cold {res['cold_mbps']:7.1f} MB/s, warm {res['warm_mbps']:7.0f} MB/s")
    return res


def noop_request_sizes(log_path, since):
    """The last `request sizes {...}` line noopfs printed after `since` (a file offset)."""
    try:
        with open(log_path) as f:
            f.seek(since)
            lines = [ln for ln in f.read().splitlines() if ln.startswith("request sizes")]
    except OSError:
        return None
    if not lines:
        return None
    # noopfs prints one line per release; the biggest is the sequential read.
    best = None
    for ln in lines:
        sizes = {int(k): int(v) for k, v in re.findall(r"(\d+): (\d+)", ln)}
        if best is None or sum(k * v for k, v in sizes.items()) > sum(k * v for k, v in best.items()):
            best = sizes
    return best


def phase_read(R, ctx, rep):
    src, ref = ctx.read_ckpt
    rel = os.path.relpath(ctx.read_file, src)
    size = os.path.getsize(ctx.read_file)
    sha = ctx.read_sha
    mnt_root = os.path.join(ctx.work, "mnt")
    out = []

    def ck(raise_ra):
        mnt = os.path.join(mnt_root, "read-ckptfs")
        ctx.mounts.ckptfs(ctx.ckptfs, ctx.ckptfs_store, mnt, ctx.seal_after)
        try:
            return read_one(ctx, "ckptfs", os.path.join(mnt, "projects", ref, rel), sha, size,
                            mnt, raise_ra)
        finally:
            ctx.mounts.umount(mnt)

    def borg(raise_ra):
        mnt = os.path.join(mnt_root, "read-borg")
        repo = os.path.join(ctx.work, "archive", "borg-repo")
        ctx.mounts.borg(f"{repo}::{bs.archive_name(ref)}", mnt, borg_env(ctx))
        try:
            return read_one(ctx, "borg", os.path.join(mnt, os.path.abspath(ctx.read_file).lstrip("/")),
                            sha, size, mnt, raise_ra)
        finally:
            ctx.mounts.umount(mnt)

    def restic(raise_ra):
        mnt = os.path.join(mnt_root, "read-restic")
        snap = ctx.restic_snapshots[ref]
        ctx.mounts.restic(mnt, restic_env(ctx), os.path.join(ctx.work, "logs", "restic-mount.log"))
        try:
            ids = glob.glob(os.path.join(mnt, "ids", snap[:8] + "*"))
            if not ids:
                raise BenchError(f"restic mount: no {mnt}/ids/{snap[:8]}*")
            return read_one(ctx, "restic", os.path.join(ids[0], os.path.abspath(ctx.read_file).lstrip("/")),
                            sha, size, mnt, raise_ra)
        finally:
            ctx.mounts.umount(mnt)

    def noop(raise_ra):
        mnt = os.path.join(mnt_root, "read-noopfs")
        log_path = os.path.join(ctx.work, "logs", "noopfs.log")
        since = os.path.getsize(log_path) if os.path.exists(log_path) else 0
        size_mib = -(-size // MiB)
        ctx.mounts.noopfs(ctx.ckptfs_python, ctx.noopfs, mnt, size_mib, log_path)
        try:
            res = read_one(ctx, "noopfs", os.path.join(mnt, "model.safetensors"), None,
                           size_mib * MiB, mnt, raise_ra)
        finally:
            ctx.mounts.umount(mnt)
        res["request_sizes"] = noop_request_sizes(log_path, since)
        return res

    def disk(_raise_ra):
        return read_one(ctx, "disk", ctx.read_file, None, size, None, False)

    for raise_ra in (False, True):
        log(f"read: {ref}/{rel} ({size / 1e6:.1f} MB), read_ahead_kb "
            + (f"raised to {RA_RAISED_KB}" if raise_ra else "as mounted"))
        benches = [ck, noop] + ([] if ctx.skip_borg else [borg]) + ([] if ctx.skip_restic else [restic])
        if not raise_ra:
            benches.append(disk)
        for bench in bs.rotate(benches, rep):
            res = bench(raise_ra)
            res["raised"] = raise_ra
            out.append(res)
    return out


# -- phase 3: a tree of many small versions -------------------------------------------------
def tiny_checkpoint(d, i, rng):
    """A small Hugging Face Trainer-like checkpoint directory for step i."""
    os.makedirs(d)
    config = {"architectures": ["BertModel"], "model_type": "bert", "hidden_size": 384,
              "num_attention_heads": 12, "num_hidden_layers": 6, "intermediate_size": 1536,
              "vocab_size": 30522, "max_position_embeddings": 512, "torch_dtype": "float32",
              "transformers_version": "4.46.0"}
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    history = []
    for k in range(max(1, i - 4), i + 1):
        history.append({"epoch": round(k / 100, 2), "step": k * 100, "learning_rate": 5e-5 * (1 - k / 2000),
                        "loss": round(2.0 / (1 + k / 50) + rng.random() * 0.01, 4),
                        "grad_norm": round(1 + rng.random(), 4)})
        history.append({"epoch": round(k / 100, 2), "step": k * 100,
                        "eval_loss": round(2.1 / (1 + k / 50) + rng.random() * 0.01, 4),
                        "eval_runtime": round(3 + rng.random(), 3),
                        "eval_samples_per_second": round(300 + rng.random() * 10, 3)})
    state = {"best_metric": history[-1]["eval_loss"], "epoch": round(i / 100, 2),
             "global_step": i * 100, "log_history": history, "max_steps": 100000,
             "train_batch_size": 32, "is_world_process_zero": True}
    with open(os.path.join(d, "trainer_state.json"), "w") as f:
        json.dump(state, f, indent=2)
    data = rng.randbytes(32 * 32 * 4)
    header = json.dumps({"__metadata__": {"format": "pt"},
                         "w": {"dtype": "F32", "shape": [32, 32], "data_offsets": [0, len(data)]}},
                        separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    with open(os.path.join(d, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header + data)


def build_tree_store(store_path, n):
    """(Run by the ckptfs Python.) n tiny versions as p/run-<i % 10>/step-<i>."""
    from ckptfs.store import Store
    rng = random.Random(1234)
    t = time.perf_counter()
    tmp = tempfile.mkdtemp(prefix="bench-mount-tiny-")
    try:
        with Store.init(store_path) as s:
            for i in range(1, n + 1):
                d = os.path.join(tmp, f"step-{i}")
                tiny_checkpoint(d, i, rng)
                s.import_directory(d, "p", f"run-{i % 10}", f"step-{i}")
                shutil.rmtree(d)
                if i % 100 == 0:
                    print(f"  {i} versions, {time.perf_counter() - t:.0f} s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps({"versions": n, "seconds": time.perf_counter() - t}), flush=True)


def tree_counts(root) -> dict:
    files = dirs = links = size = 0
    for r, ds, fs in os.walk(root):
        for name in ds:   # os.walk lists symlinks to directories among the directories
            if os.path.islink(os.path.join(r, name)):
                links += 1
            else:
                dirs += 1
        for name in fs:
            p = os.path.join(r, name)
            if os.path.islink(p):
                links += 1
            else:
                files += 1
                size += os.lstat(p).st_size
    return {"dirs": dirs, "files": files, "symlinks": links, "bytes": size}


def prepare_tree(R, ctx):
    """Build (or reuse) the store of many tiny versions and its plain-directory copy."""
    store = os.path.join(ctx.work, "tree-store")
    plain = os.path.join(ctx.work, "tree-plain")
    info_path = os.path.join(ctx.work, "tree-info.json")
    info = read_json(info_path) if os.path.exists(info_path) else None
    if info and info.get("versions") == ctx.tree_versions and os.path.isdir(store) \
            and os.path.isdir(os.path.join(plain, "projects")) \
            and info.get("ckptfs_commit") == ctx.source.get("commit"):
        log(f"tree: reusing {store} ({info['versions']} versions, built "
            f"{info['built']} in {info['build_s']:.0f} s) and {plain}")
        return store, plain, info
    rm(store)
    rm(plain)
    log(f"tree: building {ctx.tree_versions} tiny versions in {store} through the Python API "
        "(each import fsyncs; once, reused by later runs)")
    s, out = R.run([ctx.ckptfs_python, os.path.abspath(__file__), "--_build-tree", store,
                    str(ctx.tree_versions)], "tree build")
    build = json.loads(out.strip().splitlines()[-1])
    mnt = os.path.join(ctx.work, "mnt", "tree")
    ctx.mounts.ckptfs(ctx.ckptfs, store, mnt, ctx.seal_after)
    try:
        os.makedirs(plain)
        R.run(["cp", "-a", os.path.join(mnt, "projects"), os.path.join(plain, "projects")],
              "tree cp -a to plain")
        counts_mnt = tree_counts(os.path.join(mnt, "projects"))
        grep_mnt = grep_count(os.path.join(mnt, "projects"))
    finally:
        ctx.mounts.umount(mnt)
    counts_plain = tree_counts(os.path.join(plain, "projects"))
    grep_plain = grep_count(os.path.join(plain, "projects"))
    if counts_mnt != counts_plain or grep_mnt != grep_plain:
        raise BenchError(f"the plain copy of the tree differs from the mount: {counts_mnt} "
                         f"{grep_mnt} vs {counts_plain} {grep_plain}")
    info = {"versions": ctx.tree_versions, "build_s": build["seconds"], "build_wall_s": s,
            "built": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "ckptfs_commit": ctx.source.get("commit"), "counts": counts_plain,
            "grep_matching_lines": grep_plain, "store_bytes": bs.du_bytes(store)}
    with open(info_path, "w") as f:
        json.dump(info, f, indent=2)
    log(f"  built in {build['seconds']:.0f} s; tree {counts_plain}, {grep_plain} lines match "
        "eval_loss")
    return store, plain, info


def grep_count(root) -> int:
    out = subprocess.run(["grep", "-r", "eval_loss", root], stdout=subprocess.PIPE).stdout
    return out.count(b"\n")


def timed_cmd(argv) -> float:
    t = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    s = time.perf_counter() - t
    if proc.returncode != 0:
        raise BenchError(f"`{' '.join(argv)}` failed ({proc.returncode}): "
                         f"{proc.stderr.decode(errors='replace')[-500:]}")
    return s


ENFORCED = "ckptfs roles"  # the tree phase's mount of the same store with roles enforced
TREE_COMMANDS = {"ls -lR": lambda root: ["ls", "-lR", root],
                 "grep -r": lambda root: ["grep", "-r", "eval_loss", root]}


def phase_tree(R, ctx, rep):
    out = []

    def ck(tool="ckptfs"):
        res = {"tool": tool}
        mnt = os.path.join(ctx.work, "mnt", "tree")
        for name, argv in TREE_COMMANDS.items():
            ctx.mounts.ckptfs(ctx.ckptfs, ctx.tree_store, mnt, ctx.seal_after)
            try:
                drop_caches()
                root = os.path.join(mnt, "projects")
                res[name] = {"cold_s": timed_cmd(argv(root)), "warm_s": timed_cmd(argv(root))}
            finally:
                ctx.mounts.umount(mnt)
        return res

    def ck_enforced():
        """The same with roles enforced (docs/access.md): the project's entry is never
        cached, so every path walked through it is a lookup the daemon checks."""
        R.run([ctx.ckptfs, "access", "enforce", ctx.tree_store, "on"], "roles on")
        try:
            return ck(ENFORCED)
        finally:
            R.run([ctx.ckptfs, "access", "enforce", ctx.tree_store, "off"], "roles off")

    def plain():
        res = {"tool": "plain dir"}
        root = os.path.join(ctx.tree_plain, "projects")
        for name, argv in TREE_COMMANDS.items():
            drop_caches()
            res[name] = {"cold_s": timed_cmd(argv(root)), "warm_s": timed_cmd(argv(root))}
        return res

    log(f"tree: ls -lR and grep -r eval_loss over {ctx.tree_versions} versions")
    for bench in bs.rotate([ck, ck_enforced, plain], rep):
        res = bench()
        log(f"  {res['tool']:<10} " + "; ".join(
            f"{n} cold {res[n]['cold_s']:.3f} s warm {res[n]['warm_s']:.3f} s" for n in TREE_COMMANDS))
        out.append(res)
    return out


# -- phase 4: daemon memory during a large copy and its seal ---------------------------------
def make_big_file(path, nbytes):
    if os.path.exists(path) and os.path.getsize(path) == nbytes:
        return
    log(f"memory: writing {nbytes / 1e6:.0f} MB of random bytes to {path} (once)")
    with open(path + ".tmp", "wb") as f:
        left = nbytes
        while left:
            n = min(left, 64 * MiB)
            f.write(os.urandom(n))
            left -= n
    os.rename(path + ".tmp", path)


class RssSampler(threading.Thread):
    def __init__(self, pid, interval=RSS_SAMPLE_S):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.samples = []      # (seconds since start, VmRSS kB)
        self.stop_event = threading.Event()
        self.t0 = time.perf_counter()

    def status(self) -> dict:
        out = {}
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    k, v = line.split(":", 1)
                    out[k] = int(v.split()[0])
        return out

    def run(self):
        while not self.stop_event.is_set():
            try:
                self.samples.append((round(time.perf_counter() - self.t0, 3), self.status()["VmRSS"]))
            except (OSError, KeyError):
                pass
            self.stop_event.wait(self.interval)

    def stop(self):
        self.stop_event.set()
        self.join()


def dd(src, dst) -> float:
    return timed_cmd(["dd", f"if={src}", f"of={dst}", "bs=1M", "status=none"])


def phase_memory(R, ctx, rep):
    big = ctx.big_file
    nbytes = os.path.getsize(big)
    out = []

    def ck(writeback=True):
        store = os.path.join(ctx.work, "mem", "store")
        mnt = os.path.join(ctx.work, "mnt", "mem")
        rm(store)
        R.run([ctx.ckptfs, "init", store], "memory init")
        env = None if writeback else dict(os.environ, CKPTFS_WRITEBACK_CACHE="0")
        pid = ctx.mounts.ckptfs(ctx.ckptfs, store, mnt, ctx.seal_after, env=env)
        with open(os.path.join(store, "spool", "daemon.running")) as f:
            marker_pid = int(f.read().strip())
        if pid != marker_pid:
            log(f"  note: `ckptfs mount` said pid {pid}, spool/daemon.running says {marker_pid}")
        try:
            drop_caches()
            sampler = RssSampler(marker_pid)
            idle = sampler.status()
            sampler.start()
            dest_dir = os.path.join(mnt, "inbox", "big", "run", "v1")
            t0 = time.perf_counter()
            os.makedirs(dest_dir)
            t_copy_start = time.perf_counter() - sampler.t0
            copy_s = dd(big, os.path.join(dest_dir, "data.bin"))
            t_copy_end = time.perf_counter() - sampler.t0
            # A lone weights file is a checkpoint file: its version is named after it.
            t_sealed = wait_for(os.path.join(mnt, "projects", "big", "run", "data"), timeout=1800) - t0
            time.sleep(1.0)   # the spool removal after the seal
            sampler.stop()
            final = sampler.status()
            stats = read_json(os.path.join(mnt, ".ckptfs", "stats.json"))
        finally:
            ctx.mounts.umount(mnt)
        rss = [kb for _, kb in sampler.samples]
        seal_rss = [kb for t, kb in sampler.samples if t >= t_copy_end]
        copy_rss = [kb for t, kb in sampler.samples if t_copy_start <= t < t_copy_end]
        res = {"tool": "ckptfs inbox" + ("" if writeback else ", no writeback cache"),
               "bytes": nbytes, "copy_s": copy_s,
               "copy_mbps": nbytes / copy_s / 1e6, "until_sealed_s": t_sealed,
               "ingest_s": stats.get("ingest_seconds"), "idle_rss_kb": idle["VmRSS"],
               "peak_rss_kb": max(rss), "peak_rss_copy_kb": max(copy_rss, default=None),
               "peak_rss_seal_kb": max(seal_rss, default=None), "vmhwm_kb": final["VmHWM"],
               "samples": sampler.samples, "copy_window_s": [t_copy_start, t_copy_end]}
        rm(store)
        log(f"  {res['tool']}: dd {copy_s:.1f} s ({res['copy_mbps']:.0f} MB/s), sealed after "
            f"{t_sealed:.1f} s; RSS idle {idle['VmRSS'] / 1e3:.0f} MB, peak sampled "
            f"{res['peak_rss_kb'] / 1e3:.0f} MB (copy {fmt_kb(res['peak_rss_copy_kb'])}, "
            f"seal {fmt_kb(res['peak_rss_seal_kb'])}), VmHWM {final['VmHWM'] / 1e3:.0f} MB")
        return res

    def noop(spool, writeback=False):
        mnt = os.path.join(ctx.work, "mnt", "mem-noopfs")
        spool_dir = os.path.join(ctx.work, "noop-spool")
        rm(spool_dir)
        if spool:
            os.makedirs(spool_dir)
        log_path = os.path.join(ctx.work, "logs", "noopfs-write.log")
        since = os.path.getsize(log_path) if os.path.exists(log_path) else 0
        ctx.mounts.noopfs(ctx.ckptfs_python, ctx.noopfs, mnt, 1, log_path,
                          spool=spool_dir if spool else None, writeback=writeback)
        try:
            drop_caches()
            copy_s = dd(big, os.path.join(mnt, "sink"))
        finally:
            ctx.mounts.umount(mnt)
        rm(spool_dir)
        res = {"tool": "noopfs sink" + (", spooled" if spool else ", discarded")
               + (", writeback cache" if writeback else ""), "bytes": nbytes,
               "copy_s": copy_s, "copy_mbps": nbytes / copy_s / 1e6,
               "request_sizes": noop_request_sizes(log_path, since)}
        log(f"  {res['tool']}: dd {copy_s:.1f} s ({res['copy_mbps']:.0f} MB/s)")
        return res

    def disk():
        dest = os.path.join(ctx.work, "mem", "disk-copy.bin")
        drop_caches()
        copy_s = dd(big, dest)
        sync_s = timed_sync()
        os.unlink(dest)
        res = {"tool": "local disk", "bytes": nbytes, "copy_s": copy_s,
               "copy_mbps": nbytes / copy_s / 1e6, "sync_s": sync_s}
        log(f"  local disk: dd {copy_s:.1f} s ({res['copy_mbps']:.0f} MB/s), +sync {sync_s:.1f} s")
        return res

    log(f"memory: dd of {nbytes / 1e6:.0f} MB of random bytes into the inbox; daemon RSS every "
        f"{RSS_SAMPLE_S} s")
    benches = [ck, lambda: noop(False), lambda: noop(True), lambda: noop(True, writeback=True),
               disk]
    if ctx.no_writeback_baseline:
        benches.append(lambda: ck(writeback=False))
    for bench in bs.rotate(benches, rep):
        out.append(bench())
    return out


def fmt_kb(kb):
    return "-" if kb is None else f"{kb / 1e3:.0f} MB"


# -- summary -------------------------------------------------------------------------------
def med_range(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    return {"median": median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def spread(mr, spec, n_reps):
    if mr is None:
        return "-"
    if n_reps == 1 or mr["n"] == 1:
        return format(mr["median"], spec)
    return f"{format(mr['median'], spec)} ({format(mr['min'], spec)}-{format(mr['max'], spec)})"


def summarize(result):
    reps = result["repetitions"]
    s = {}
    if any("archive" in r for r in reps):
        tools = [t["tool"] for t in reps[0]["archive"]]
        s["archive"] = {}
        for tool in tools:
            rows = [t for r in reps for t in r["archive"] if t["tool"] == tool]
            s["archive"][tool] = {k: med_range([x.get(k) for x in rows])
                                  for k in ("archive_s", "sync_s", "stored_bytes", "cp_s",
                                            "wait_s", "ingest_s", "quiet_s")}
    if any("read" in r for r in reps):
        s["read"] = {}
        for raised in (False, True):
            key = f"ra_{RA_RAISED_KB}" if raised else "ra_default"
            s["read"][key] = {}
            rows_all = [t for r in reps for t in r["read"] if t["raised"] == raised]
            for tool in dict.fromkeys(t["tool"] for t in rows_all):
                rows = [t for t in rows_all if t["tool"] == tool]
                s["read"][key][tool] = {
                    "cold_mbps": med_range([x["cold_mbps"] for x in rows]),
                    "warm_mbps": med_range([x["warm_mbps"] for x in rows]),
                    "warm_median_mbps": med_range([x["warm_median_mbps"] for x in rows]),
                    "ra_kb": sorted({x["ra_kb"] for x in rows}),
                    "ra_after_mount_kb": sorted({x["ra_after_mount_kb"] for x in rows}),
                    "content_ok": all(x.get("content_ok", True) for x in rows)}
    if any("tree" in r for r in reps):
        s["tree"] = {}
        for tool in ("ckptfs", ENFORCED, "plain dir"):
            rows = [t for r in reps for t in r["tree"] if t["tool"] == tool]
            if not rows:
                continue
            s["tree"][tool] = {f"{n} {w}": med_range([x[n][f"{w}_s"] for x in rows])
                               for n in TREE_COMMANDS for w in ("cold", "warm")}
    if any("memory" in r for r in reps):
        s["memory"] = {}
        rows_all = [t for r in reps for t in r["memory"]]
        for tool in dict.fromkeys(t["tool"] for t in rows_all):
            rows = [t for t in rows_all if t["tool"] == tool]
            s["memory"][tool] = {k: med_range([x.get(k) for x in rows])
                                 for k in ("copy_s", "copy_mbps", "until_sealed_s", "ingest_s",
                                           "idle_rss_kb", "peak_rss_kb", "peak_rss_copy_kb",
                                           "peak_rss_seal_kb", "vmhwm_kb")}
    return s


def evaluate_targets(result):
    s, reps, targets = result["summary"], result["repetitions"], []
    n = len(reps)

    def add(name, met, count, text):
        targets.append({"name": name, "met": bool(met), "met_in_reps": count, "reps": n,
                        "text": text + f" (met in {count} of {n} repetitions)"})

    borg_tool = f"borg create {BORG_COMPRESSION}"
    if "archive" in s and borg_tool in s["archive"]:
        ck = s["archive"]["ckptfs mount"]["archive_s"]["median"]
        bg = s["archive"][borg_tool]["archive_s"]["median"]
        pairs = [{t["tool"]: t for t in r["archive"]} for r in reps]
        count = sum(p["ckptfs mount"]["archive_s"] <= TARGET_ARCHIVE_VS_BORG * p[borg_tool]["archive_s"]
                    for p in pairs)
        add("archive_vs_borg", ck <= TARGET_ARCHIVE_VS_BORG * bg, count,
            f"archive through the mount {ck:.1f} s <= {TARGET_ARCHIVE_VS_BORG} x borg create "
            f"{bg:.1f} s = {TARGET_ARCHIVE_VS_BORG * bg:.1f} s (ratio {ck / bg:.2f})")
    if "read" in s:
        for key, label in (("ra_default", "default read_ahead"),
                           (f"ra_{RA_RAISED_KB}", f"read_ahead {RA_RAISED_KB} KiB")):
            rd = s["read"][key]
            raised = key != "ra_default"
            pairs = [{t["tool"]: t for t in r["read"] if t["raised"] == raised} for r in reps]
            ck = rd["ckptfs"]["cold_mbps"]["median"]
            for other, factor in (("restic", TARGET_COLD_VS_RESTIC), ("borg", TARGET_COLD_VS_BORG)):
                if other not in rd:
                    continue
                o = rd[other]["cold_mbps"]["median"]
                count = sum(p["ckptfs"]["cold_mbps"] >= factor * p[other]["cold_mbps"] for p in pairs)
                add(f"cold_vs_{other}_{key}", ck >= factor * o, count,
                    f"cold read ({label}): ckptfs {ck:.0f} MB/s >= {factor} x {other} {o:.0f} MB/s "
                    f"= {factor * o:.0f} MB/s (ratio {ck / o:.2f})")
            w = rd["ckptfs"]["warm_mbps"]["median"]
            count = sum(p["ckptfs"]["warm_mbps"] >= TARGET_WARM_MBPS for p in pairs)
            add(f"warm_{key}", w >= TARGET_WARM_MBPS, count,
                f"warm read ({label}): ckptfs {w:.0f} MB/s >= {TARGET_WARM_MBPS:.0f} MB/s")
    if "tree" in s:
        pairs = [{t["tool"]: t for t in r["tree"]} for r in reps]
        for name in TREE_COMMANDS:
            for w in ("cold", "warm"):
                ck = s["tree"]["ckptfs"][f"{name} {w}"]["median"]
                pl = s["tree"]["plain dir"][f"{name} {w}"]["median"]
                count = sum(p["ckptfs"][name][f"{w}_s"] <= TARGET_TREE_VS_PLAIN * p["plain dir"][name][f"{w}_s"]
                            for p in pairs)
                add(f"tree_{name.split()[0]}_{w}", ck <= TARGET_TREE_VS_PLAIN * pl, count,
                    f"`{name}` {w}: ckptfs {ck:.3f} s <= {TARGET_TREE_VS_PLAIN} x plain dir "
                    f"{pl:.3f} s = {TARGET_TREE_VS_PLAIN * pl:.3f} s (ratio {ck / pl:.1f})")
    if "memory" in s:
        peak = s["memory"]["ckptfs inbox"]["peak_rss_kb"]["median"] * 1e3 / 1e6
        hwm = s["memory"]["ckptfs inbox"]["vmhwm_kb"]["median"] * 1e3 / 1e6
        rows = [t for r in reps for t in r["memory"] if t["tool"] == "ckptfs inbox"]
        count = sum(max(t["peak_rss_kb"], t["vmhwm_kb"]) * 1e3 / 1e6 < TARGET_PEAK_RSS_MB for t in rows)
        add("peak_rss", max(peak, hwm) < TARGET_PEAK_RSS_MB, count,
            f"daemon peak RSS {peak:.0f} MB sampled, VmHWM {hwm:.0f} MB < {TARGET_PEAK_RSS_MB:.0f} MB")
        spooled = "noopfs sink, spooled"
        ck = s["memory"]["ckptfs inbox"]["copy_mbps"]["median"]
        noop = s["memory"][spooled]["copy_mbps"]["median"]
        pairs = [{t["tool"]: t for t in r["memory"]} for r in reps]
        count = sum(p["ckptfs inbox"]["copy_mbps"] >= TARGET_WRITE_VS_NOOPFS * p[spooled]["copy_mbps"]
                    for p in pairs)
        add("write_vs_noopfs", ck >= TARGET_WRITE_VS_NOOPFS * noop, count,
            f"dd into the inbox {ck:.0f} MB/s >= {TARGET_WRITE_VS_NOOPFS} x noopfs spooled "
            f"{noop:.0f} MB/s = {TARGET_WRITE_VS_NOOPFS * noop:.0f} MB/s (ratio {ck / noop:.2f})")
    return targets


def print_tables(result):
    s, n = result["summary"], result["repeat"]
    log()
    log(("median (min-max) of " + str(n) + " repetitions") if n > 1 else "one repetition")
    log(f"ckptfs code: {result['ckptfs_source']}")
    if "archive" in s:
        log()
        log(f"archive {len(result['corpus']['checkpoints'])} checkpoints "
            f"({result['corpus']['bytes'] / 1e6:.1f} MB), seal-after {result['seal_after']:g} s:")
        w = 20 if n > 1 else 8
        head = (f"{'tool':<22}{'wall s':>{w}}{'vs borg':>8}{'+sync s':>8}{'stored MB':>11}"
                f"{'cp s':>{w}}{'until sealed s':>{w + 6}}{'quiet s':>8}{'ingest s':>{w}}")
        log(head)
        log("-" * len(head))
        borg = s["archive"].get(f"borg create {BORG_COMPRESSION}")
        for tool, row in s["archive"].items():
            ratio = row["archive_s"]["median"] / borg["archive_s"]["median"] if borg else None
            log(f"{tool:<22}{spread(row['archive_s'], '.1f', n):>{w}}{bs.fmt(ratio, '.2f'):>8}"
                f"{row['sync_s']['median']:>8.1f}{row['stored_bytes']['median'] / 1e6:>11.1f}"
                f"{spread(row['cp_s'], '.1f', n):>{w}}{spread(row['wait_s'], '.1f', n):>{w + 6}}"
                f"{bs.fmt(row['quiet_s'] and row['quiet_s']['median'], '.1f'):>8}"
                f"{spread(row['ingest_s'], '.1f', n):>{w}}")
    if "read" in s:
        for key, rd in s["read"].items():
            log()
            log(f"read {result['read_target']} ({result['read_bytes'] / 1e6:.1f} MB), "
                + ("read_ahead_kb as mounted" if key == "ra_default"
                   else f"read_ahead_kb raised to {RA_RAISED_KB}") + ", MB/s:")
            noop = rd.get("noopfs")
            head = (f"{'file system':<12}{'ra KiB':>8}{'after mount':>12}{'cold MB/s':>22}"
                    f"{'of noopfs':>10}{'warm MB/s':>24}{'warm, median of 5':>24}")
            log(head)
            log("-" * len(head))
            for tool, row in rd.items():
                frac = row["cold_mbps"]["median"] / noop["cold_mbps"]["median"] if noop else None
                log(f"{tool:<12}{'/'.join(map(str, row['ra_kb'])):>8}"
                    f"{'/'.join(map(str, row['ra_after_mount_kb'])):>12}"
                    f"{spread(row['cold_mbps'], '.0f', n):>22}{bs.fmt(frac, '.2f'):>10}"
                    f"{spread(row['warm_mbps'], '.0f', n):>24}"
                    f"{spread(row['warm_median_mbps'], '.0f', n):>24}"
                    + ("" if row["content_ok"] else "  CONTENT DIFFERS"))
    if "tree" in s:
        log()
        ti = result["tree_info"]
        log(f"tree of {ti['versions']} versions ({ti['counts']}), seconds:")
        head = f"{'':<12}" + "".join(f"{c + ' ' + w:>24}" for c in TREE_COMMANDS for w in ("cold", "warm"))
        log(head)
        log("-" * len(head))
        for tool, row in s["tree"].items():
            log(f"{tool:<12}" + "".join(f"{spread(row[f'{c} {w}'], '.3f', n):>24}"
                                        for c in TREE_COMMANDS for w in ("cold", "warm")))
        ck, pl = s["tree"]["ckptfs"], s["tree"]["plain dir"]
        log(f"{'ratio':<12}" + "".join(f"{ck[k]['median'] / pl[k]['median']:>24.1f}" for k in ck))
    if "memory" in s:
        log()
        log(f"memory: {result['big_bytes'] / 1e6:.0f} MB copied with dd bs=1M:")
        head = (f"{'target':<24}{'dd MB/s':>20}{'sealed after s':>20}{'peak RSS MB':>20}"
                f"{'VmHWM MB':>12}{'idle RSS MB':>12}")
        log(head)
        log("-" * len(head))
        for tool, row in s["memory"].items():
            def mb(k):
                return "-" if row[k] is None else f"{row[k]['median'] / 1e3:.0f}"
            log(f"{tool:<24}{spread(row['copy_mbps'], '.0f', n):>20}"
                f"{spread(row['until_sealed_s'], '.1f', n):>20}{mb('peak_rss_kb'):>20}"
                f"{mb('vmhwm_kb'):>12}{mb('idle_rss_kb'):>12}")
    bs.print_targets(result["targets"])
    log()
    log(f"results: {result['json_path']}")


# -- main ----------------------------------------------------------------------------------
class Context:
    def __init__(self, **kw):
        self.__dict__.update(kw)


def fusermount_shim(work) -> str | None:
    """restic mount runs `fusermount`; if only fusermount3 exists, a dir with a symlink."""
    if shutil.which("fusermount"):
        return None
    fm3 = shutil.which("fusermount3")
    if not fm3:
        raise BenchError("neither fusermount nor fusermount3 is installed (Debian: fuse3)")
    d = os.path.join(work, "mnt", "fusermount-shim")
    os.makedirs(d, exist_ok=True)
    link = os.path.join(d, "fusermount")
    if not os.path.lexists(link):
        os.symlink(fm3, link)
    return d


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", help="corpus directory (default: build/use ./bench-out/corpus)")
    ap.add_argument("--work", default=DEFAULT_WORK, help="scratch directory (default ./bench-out)")
    ap.add_argument("--repeat", type=int, default=1, metavar="N",
                    help="measure everything N times, in rotated order; report medians (default 1)")
    ap.add_argument("--seal-after", type=float, default=1.0, metavar="S",
                    help="the mount's quiet period in the archive phase (default 1)")
    ap.add_argument("--phases", default=",".join(PHASES),
                    help="comma-separated subset of archive,read,tree,memory (read needs archive)")
    ap.add_argument("--tree-versions", type=int, default=1000, metavar="N")
    ap.add_argument("--big-mb", type=int, default=2048, metavar="MB",
                    help="size of the random file of the memory phase, MiB (default 2048)")
    ap.add_argument("--noopfs", default=DEFAULT_NOOPFS, help="path of noopfs.py")
    ap.add_argument("--no-writeback-baseline", action="store_true",
                    help="memory phase: also dd into a ckptfs mount without the kernel's "
                         "writeback cache (CKPTFS_WRITEBACK_CACHE=0)")
    ap.add_argument("--no-verify", action="store_true",
                    help="skip the SHA-256 check of every archived file through the mount")
    ap.add_argument("--skip-borg", action="store_true")
    ap.add_argument("--skip-restic", action="store_true")
    ap.add_argument("--_build-tree", nargs=2, metavar=("STORE", "N"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._build_tree:
        build_tree_store(a._build_tree[0], int(a._build_tree[1]))
        return 0
    if a.repeat < 1:
        ap.error("--repeat must be at least 1")
    phases = [p.strip() for p in a.phases.split(",") if p.strip()]
    if set(phases) - set(PHASES):
        ap.error(f"unknown phase(s) {sorted(set(phases) - set(PHASES))}")
    if "read" in phases and "archive" not in phases:
        ap.error("the read phase reads the stores and repos the archive phase makes: add archive")
    if os.geteuid() != 0:
        log("note: not root: the page cache cannot be dropped and read_ahead_kb cannot be "
            "raised; the figures would not be cold. Run as root.")
        raise BenchError("run as root")

    corpus, work = bs.corpus_and_work(a)
    if ("read" in phases or "memory" in phases) and not os.path.isfile(a.noopfs):
        raise BenchError(f"no noopfs.py at {a.noopfs}: pass --noopfs PATH")
    ckptfs = bs.find_ckptfs()
    ckptfs_python = os.path.join(os.path.dirname(ckptfs), "python")
    if not os.access(ckptfs_python, os.X_OK):
        ckptfs_python = sys.executable

    os.makedirs(work, exist_ok=True)
    for sub in OWNED:
        p = os.path.join(work, sub)
        if os.path.ismount(p) or any(os.path.ismount(m) for m in glob.glob(os.path.join(p, "*"))):
            raise BenchError(f"something is still mounted under {p}: unmount it first")
        rm(p)
    for sub in ("logs", "mnt", "archive", "mem"):
        os.makedirs(os.path.join(work, sub))
    R = bs.Runner(os.path.join(work, "logs"))

    checkpoints = bs.find_checkpoints(corpus)
    read_ckpt = checkpoints[0]
    read_file_path = os.path.join(read_ckpt[0], "model.safetensors")
    if not os.path.isfile(read_file_path):
        read_file_path = max((os.path.join(r, f) for r, _, fs in os.walk(read_ckpt[0]) for f in fs),
                             key=os.path.getsize)
    disk_ra = disk_read_ahead_kb(read_file_path)
    mounts = Mounts(R)
    source = bs.ckptfs_source(ckptfs)
    ctx = Context(work=work, ckptfs=ckptfs, ckptfs_python=ckptfs_python, checkpoints=checkpoints,
                  seal_after=a.seal_after, mounts=mounts, skip_borg=a.skip_borg,
                  skip_restic=a.skip_restic, noopfs=os.path.abspath(a.noopfs),
                  read_ckpt=read_ckpt, read_file=read_file_path, disk_ra_kb=disk_ra,
                  restic_snapshots={}, verify=not a.no_verify, source=source,
                  fusermount_dir=None if a.skip_restic else fusermount_shim(work),
                  ckptfs_store=os.path.join(work, "archive", "ckptfs"),
                  tree_versions=a.tree_versions, no_writeback_baseline=a.no_writeback_baseline)
    logical = sum(bs.tree_bytes(c[0]) for c in checkpoints)
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([os.path.relpath(sys.argv[0], REPO) if sys.argv[0].startswith(REPO)
                             else sys.argv[0], *sys.argv[1:]]),
        "repeat": a.repeat, "phases": phases, "seal_after": a.seal_after,
        "machine": bs.machine_info(),
        "versions": {"ckptfs": bs.tool_version([ckptfs, "--version"]),
                     "borg": None if a.skip_borg else bs.tool_version(["borg", "--version"]),
                     "restic": None if a.skip_restic else bs.tool_version(["restic", "version"]),
                     "fuse kernel": bs.tool_version(["fusermount3", "--version"])},
        "ckptfs_source": source,
        "corpus": {"path": corpus, "bytes": logical,
                   "checkpoints": [{"ref": ref, "dir": src, "bytes": bs.tree_bytes(src)}
                                   for src, ref in checkpoints]},
        "read_target": os.path.join(read_ckpt[1], os.path.relpath(read_file_path, read_ckpt[0])),
        "read_bytes": os.path.getsize(read_file_path), "disk_read_ahead_kb": disk_ra,
        "json_path": os.path.join(work, "bench_mount.json"),
        "repetitions": [],
    }
    m = result["machine"]
    log(f"machine: {m['nproc']} cpus, {m['cpu']}, sha_ni {'yes' if m['sha_ni'] else 'no'}; "
        + ", ".join(v for v in result["versions"].values() if v))
    log(bs.describe_source(source))
    log(f"corpus: {corpus} ({logical / 1e6:.1f} MB), {len(checkpoints)} checkpoints")

    # SIGTERM/SIGHUP end the run through the same cleanup as Ctrl-C.
    def on_signal(signum, _frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    try:
        ctx.digests = {}
        if "archive" in phases and ctx.verify:
            log("hashing the corpus (SHA-256) to check what comes back through the mount")
            ctx.digests = {ref: bs.tree_digests(src) for src, ref in checkpoints}
        ctx.read_sha = sha256_file(read_file_path)
        if "tree" in phases:
            ctx.tree_store, ctx.tree_plain, result["tree_info"] = prepare_tree(R, ctx)
        if "memory" in phases:
            ctx.big_file = os.path.join(work, "big.bin")
            make_big_file(ctx.big_file, a.big_mb * MiB)
            result["big_bytes"] = os.path.getsize(ctx.big_file)
        for rep in range(a.repeat):
            log(f"== repetition {rep + 1} of {a.repeat}")
            r = {}
            result["repetitions"].append(r)
            for phase in phases:
                r[phase] = {"archive": phase_archive, "read": phase_read, "tree": phase_tree,
                            "memory": phase_memory}[phase](R, ctx, rep)
                with open(result["json_path"], "w") as f:   # partial results survive
                    json.dump(result, f, indent=2)
    finally:
        mounts.umount_all()
    result["drop_caches"] = bool(bs._drop_caches_ok)
    result["summary"] = summarize(result)
    result["targets"] = evaluate_targets(result)
    with open(result["json_path"], "w") as f:
        json.dump(result, f, indent=2)
    print_tables(result)
    ok = all(t.get("content_ok", True) for r in result["repetitions"]
             for p in ("archive", "read") for t in r.get(p, []))
    return 0 if ok else 1


if __name__ == "__main__":
    bs.run_main(main, "bench_mount")
