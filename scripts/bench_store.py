#!/usr/bin/env python3
"""Storage benchmark: ckptfs against plain `cp -r`, borg and restic, in one run.

    scripts/bench_store.py [--corpus DIR] [--work DIR] [--skip-borg] [--skip-restic]
                           [--chunk-sweep] [--repeat N]

The corpus is a directory of checkpoints laid out as PROJECT/RUN/VERSION (what
../shared/bench/make_corpus.py writes: minilm/full-ft/checkpoint-1..4,
minilm/partial-ft/checkpoint-1..4, minilm/export/{fp32,bf16}). --corpus may name that
output directory or the project directory inside it. Without --corpus the corpus is
looked for in ./bench-out/corpus (next to this repository's src/) and built there with
make_corpus.py, run by this Python, if it is missing (that needs torch and
transformers).

Every checkpoint (every leaf directory) is archived one by one, in training order:
runs whose versions are `checkpoint-<n>` first, in sorted order, then the other runs
(the export); versions in natural order (checkpoint-2 before checkpoint-10), fp32 before
bf16. Measured in the same run, each phase starting with cold caches (sync and
drop_caches, which needs root; without it the run says so):

  cp -r     the whole corpus to a scratch dir: the floor
  ckptfs    `ckptfs init`, then `ckptfs import STORE DIR PROJECT/RUN/VERSION` per
            checkpoint through the real CLI; size: `du -sb` of the store
  borg      `borg init -e none`, then `borg create --compression zstd,3` per checkpoint
  restic    `restic init`, then `restic backup DIR` per checkpoint

then the restore of one large checkpoint (the last `full-ft` one, else the largest) into
an empty dir by `cp -r`, `ckptfs get`, `borg extract` and `restic restore`; every
restored copy is compared file by file (SHA-256) with the source.

Figures: wall seconds of the commands, and separately the `sync` that follows them
(data the tool left dirty in the page cache); MB are 10^6 bytes.

With --chunk-sweep, ckptfs alone is measured again with other `[chunking]` settings
(avg 256 KiB .. 4 MiB, min = avg/4, max = avg*4, tensor_block = avg, written into the
store's ckptfs.toml right after `ckptfs init`), and once with `[compression] delta =
false` at the default chunking, to choose the defaults by measurement.

The machine this runs on is usually shared and noisy: timings of the same command vary
by a factor of two from one minute to the next. --repeat N measures everything N times
(the tools in a rotated order each time, so none always runs first) and reports the
median with the range; the targets are judged on the medians, and the report says in
how many repetitions each was met.

ckptfs is the `ckptfs` command beside this Python (else the one on PATH). An editable
install runs whatever the working tree holds at each moment; to measure one fixed commit
while others edit the tree, clone it and put the clone's src/ first on PYTHONPATH. The
run records which code it measured (path, git commit, uncommitted changes).

The results are printed as tables, with the targets (ckptfs import time <= borg's,
stored bytes <= 0.9 x borg zstd,3's, restore time <= borg extract's), and written as
JSON to WORK/bench_store.json. WORK defaults to ./bench-out (git-ignored).
"""
import argparse
import hashlib
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CORPUS = os.path.join(REPO, "bench-out", "corpus")
DEFAULT_WORK = os.path.join(REPO, "bench-out")
MAKE_CORPUS = os.path.join(REPO, "..", "shared", "bench", "make_corpus.py")

KiB = 1024
MiB = 1024 * 1024
SWEEP_AVG_SIZES = [256 * KiB, 512 * KiB, 1 * MiB, 2 * MiB, 4 * MiB]
BORG_COMPRESSION = "zstd,3"
STORED_TARGET = 0.9   # ckptfs stored bytes <= 0.9 x borg zstd,3

# Scratch subdirectories of WORK that a run owns (and removes when it starts).
OWNED = ("cp-copy", "ckptfs-store", "borg-repo", "borg-home", "restic-repo", "restic-cache",
         "restore", "sweep", "logs")


class BenchError(Exception):
    pass


# -- helpers -----------------------------------------------------------------------------
def log(msg=""):
    print(msg, flush=True)


_drop_caches_ok = None


def drop_caches():
    """sync, then drop the page cache so the next phase reads cold (needs root)."""
    global _drop_caches_ok
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        _drop_caches_ok = True
    except OSError as e:
        if _drop_caches_ok is None:
            log(f"  note: cannot drop the page cache ({e.strerror}); caches stay warm between "
                "phases (run as root for cold-cache figures)")
        _drop_caches_ok = False


def timed_sync() -> float:
    t = time.perf_counter()
    os.sync()
    return time.perf_counter() - t


class Runner:
    """Runs commands, logs their output to WORK/logs, and stops the benchmark on failure."""

    def __init__(self, log_dir):
        self.log_dir = log_dir
        self.count = 0

    def run(self, argv, label, env=None, cwd=None) -> tuple[float, str]:
        self.count += 1
        slug = re.sub(r"[^A-Za-z0-9]+", "_", label)
        path = os.path.join(self.log_dir, f"{self.count:03d}-{slug}.log")
        t = time.perf_counter()
        proc = subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        seconds = time.perf_counter() - t
        out = proc.stdout.decode("utf-8", "replace")
        with open(path, "w") as f:
            f.write(f"$ {' '.join(argv)}\n# cwd={cwd or os.getcwd()} exit={proc.returncode} "
                    f"wall={seconds:.3f}s\n{out}")
        if proc.returncode != 0:
            tail = "\n".join(out.splitlines()[-20:])
            raise BenchError(f"{label}: `{' '.join(argv)}` failed with exit code "
                             f"{proc.returncode}:\n{tail}\n(full output in {path})")
        return seconds, out


def du_bytes(path) -> int:
    out = subprocess.run(["du", "-sb", path], check=True, stdout=subprocess.PIPE, text=True).stdout
    return int(out.split()[0])


def tree_bytes(path) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs
               if not os.path.islink(os.path.join(r, f)))


def tree_digests(root) -> dict[str, str]:
    out = {}
    for r, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            p = os.path.join(r, name)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                out[rel] = "symlink:" + os.readlink(p)
                continue
            h = hashlib.sha256()
            with open(p, "rb") as f:
                while block := f.read(4 * MiB):
                    h.update(block)
            out[rel] = h.hexdigest()
    return out


def compare_trees(expected: dict, restored_root) -> str | None:
    """None when `restored_root` holds exactly the expected files and bytes, else why not."""
    got = tree_digests(restored_root)
    if got == expected:
        return None
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    differ = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
    return f"missing {missing[:5]}, extra {extra[:5]}, differing {differ[:5]}"


def rm(path):
    if os.path.lexists(path):
        shutil.rmtree(path)


def natural_key(s: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


# make_corpus.py writes the export in this order (fp32, then bf16).
EXPORT_ORDER = {"fp32": 0, "f32": 0, "fp16": 1, "bf16": 2}


def version_order_key(version: str):
    return (EXPORT_ORDER.get(version, -1), natural_key(version))


# -- corpus ------------------------------------------------------------------------------
def build_corpus(out_dir):
    if not os.path.isfile(MAKE_CORPUS):
        raise BenchError(f"no corpus at {out_dir}, and the script that builds it "
                         f"({os.path.normpath(MAKE_CORPUS)}) is missing: pass --corpus DIR")
    missing = [m for m in ("torch", "transformers", "safetensors")
               if importlib.util.find_spec(m) is None]
    if missing:
        raise BenchError(
            f"no corpus at {out_dir}, and building it needs {', '.join(missing)} in this Python "
            f"({sys.executable}), which lacks them. Install them with\n"
            f"    {sys.executable} -m pip install torch==2.13.0 transformers safetensors\n"
            "(the CPU build of torch is enough), or pass --corpus DIR to use a corpus built "
            "elsewhere.")
    log(f"building the corpus in {out_dir} with {os.path.normpath(MAKE_CORPUS)} "
        "(trains two small runs on the CPU; several minutes)")
    subprocess.run([sys.executable, MAKE_CORPUS, out_dir], check=True)


def find_checkpoints(corpus) -> list[tuple[str, str]]:
    """[(source dir, 'project/run/version')] for every leaf directory, in import order."""
    leaves = []
    for r, dirs, files in os.walk(corpus):
        if not dirs and r != corpus:
            leaves.append(os.path.relpath(r, corpus).split(os.sep))
    if not leaves:
        raise BenchError(f"{corpus} holds no checkpoint directories")
    depths = {len(p) for p in leaves}
    if depths == {2}:                       # --corpus named the project directory
        project = os.path.basename(os.path.normpath(corpus))
        leaves = [[project, *p] for p in leaves]
        base = os.path.dirname(os.path.normpath(corpus))
    elif depths == {3}:
        base = corpus
    else:
        raise BenchError(f"{corpus}: expected checkpoint directories at PROJECT/RUN/VERSION "
                         f"(or RUN/VERSION), found leaves at depths {sorted(depths)}")
    runs = {}
    for project, run, version in leaves:
        runs.setdefault((project, run), []).append(version)

    def run_key(item):
        (project, run), versions = item
        training = all(re.fullmatch(r"checkpoint-\d+", v) for v in versions)
        return (project, 0 if training else 1, run)

    out = []
    for (project, run), versions in sorted(runs.items(), key=run_key):
        for v in sorted(versions, key=version_order_key):
            out.append((os.path.join(base, project, run, v), f"{project}/{run}/{v}"))
    return out


def pick_restore_target(checkpoints) -> tuple[str, str]:
    full = [c for c in checkpoints if c[1].split("/")[1] == "full-ft"]
    if full:
        return full[-1]
    return max(checkpoints, key=lambda c: tree_bytes(c[0]))


# -- the store's settings file -----------------------------------------------------------
def edit_store_toml(store, section: str, values: dict):
    """Set keys of one [section] of STORE/ckptfs.toml (a line edit; read back with tomllib)."""
    path = os.path.join(store, "ckptfs.toml")
    with open(path) as f:
        lines = f.read().splitlines(keepends=True)
    current, seen = None, set()
    for i, line in enumerate(lines):
        m = re.match(r"\s*\[([^\]]+)\]\s*$", line)
        if m:
            current = m.group(1).strip()
            continue
        m = re.match(r"(\s*)([A-Za-z_][A-Za-z0-9_]*)(\s*=\s*)(.*?)(\s*)$", line)
        if current == section and m and m.group(2) in values:
            v = values[m.group(2)]
            text = ("true" if v else "false") if isinstance(v, bool) else str(v)
            lines[i] = f"{m.group(1)}{m.group(2)}{m.group(3)}{text}\n"
            seen.add(m.group(2))
    if seen != set(values):
        raise BenchError(f"{path}: could not find {sorted(set(values) - seen)} in [{section}]")
    with open(path, "w") as f:
        f.writelines(lines)
    try:
        import tomllib
        with open(path, "rb") as f:
            doc = tomllib.load(f)
        assert all(doc[section][k] == v for k, v in values.items()), doc[section]
    except ImportError:
        pass


# -- the tools ---------------------------------------------------------------------------
def find_ckptfs() -> str:
    beside = os.path.join(os.path.dirname(sys.executable), "ckptfs")
    if os.access(beside, os.X_OK):
        return beside
    found = shutil.which("ckptfs")
    if not found:
        raise BenchError("the `ckptfs` command is not installed: run "
                         f"`{sys.executable} -m pip install -e {REPO}` first")
    return found


def ckptfs_source(ckptfs) -> dict:
    """Where the `ckptfs` command imports its code from, and the git commit of that tree
    (an editable install follows the working tree, which may change under a long run)."""
    py = os.path.join(os.path.dirname(ckptfs), "python")
    if not os.access(py, os.X_OK):
        py = sys.executable
    out = subprocess.run([py, "-c", "import os, ckptfs; print(os.path.dirname(ckptfs.__file__))"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout
    info = {"path": out.strip() or None, "commit": None, "uncommitted_changes": None}
    if info["path"]:
        git = subprocess.run(["git", "-C", info["path"], "rev-parse", "HEAD"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        if git.returncode == 0:
            info["commit"] = git.stdout.strip()
            status = subprocess.run(["git", "-C", info["path"], "status", "--porcelain", "."],
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            info["uncommitted_changes"] = bool(status.stdout.strip())
    return info


def tool_version(argv) -> str:
    try:
        out = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, timeout=30).stdout
        return out.strip().splitlines()[0] if out.strip() else "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def startup_seconds(argv, runs=3) -> float:
    """Median wall time of a command that does nothing (`--version`): process start-up."""
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def restore_checked(R, argv, label, dest, restored, expected, env=None, cwd=None):
    """Run a restore command cold; time it and the sync after it; then check the copy."""
    drop_caches()
    seconds, out = R.run(argv, label, env=env, cwd=cwd)
    sync_s = timed_sync()
    problem = compare_trees(expected, restored)
    if problem:
        log(f"  WARNING: {label}: the restored copy differs from the source: {problem}")
    rm(dest)
    return {"restore_s": seconds, "restore_sync_s": sync_s, "restore_ok": problem is None,
            "restore_problem": problem, "restore_output": out.strip()}


def bench_cp(R, ctx):
    dest = os.path.join(ctx.work, "cp-copy")
    rm(dest)
    drop_caches()
    log("cp -r: copying the whole corpus")
    seconds, _ = R.run(["cp", "-r", ctx.corpus_root, dest], "cp corpus")
    sync_s = timed_sync()
    size = du_bytes(dest)
    rm(dest)
    restore_dest = os.path.join(ctx.work, "restore", "cp")
    res = {"tool": "cp -r", "import_s": seconds, "import_sync_s": sync_s, "stored_bytes": size}
    res.update(restore_checked(R, ["cp", "-r", ctx.target[0], restore_dest], "cp restore",
                               restore_dest, restore_dest, ctx.expected))
    return res


def ckptfs_import_all(R, ckptfs, store, checkpoints, label, chunking=None, compression=None):
    """init (+ settings edit) and one import per checkpoint; cold caches at the start."""
    rm(store)
    R.run([ckptfs, "init", store], f"{label} init")
    if chunking:
        edit_store_toml(store, "chunking", chunking)
    if compression:
        edit_store_toml(store, "compression", compression)
    drop_caches()
    per = []
    total = 0.0
    for src, ref in checkpoints:
        seconds, out = R.run([ckptfs, "import", store, src, ref], f"{label} import {ref}")
        total += seconds
        m = re.search(r"new stored .*?, ([\d.]+) s, ", out)
        per.append({"ref": ref, "wall_s": seconds,
                    "reported_s": float(m.group(1)) if m else None, "output": out.strip()})
    sync_s = timed_sync()
    _, stats_out = R.run([ckptfs, "stats", "--json", store], f"{label} stats")
    return {"import_s": total, "import_sync_s": sync_s, "stored_bytes": du_bytes(store),
            "stats": json.loads(stats_out), "per_checkpoint": per}


def ckptfs_restore(R, ctx, store, label):
    dest = os.path.join(ctx.work, "restore", "ckptfs")
    return restore_checked(R, [ctx.ckptfs, "get", store, ctx.target[1], dest],
                           f"{label} get {ctx.target[1]}", dest, dest, ctx.expected)


def bench_ckptfs(R, ctx):
    store = os.path.join(ctx.work, "ckptfs-store")
    log("ckptfs: init + import per checkpoint")
    res = ckptfs_import_all(R, ctx.ckptfs, store, ctx.checkpoints, "ckptfs")
    for p in res["per_checkpoint"]:
        log(f"  {p['ref']:<32} {p['wall_s']:6.2f} s  {p['output'].splitlines()[-1]}")
    log(f"ckptfs: get {ctx.target[1]}")
    res.update(ckptfs_restore(R, ctx, store, "ckptfs"))
    log(f"  {res['restore_output'].splitlines()[-1] if res['restore_output'] else ''}")
    res["tool"] = "ckptfs"
    return res


def archive_name(ref):
    return ref.replace("/", "_")


def borg_create_all(R, repo, env, checkpoints) -> tuple[float, list[dict]]:
    """`borg init` a new repo, then one `borg create` per checkpoint, from cold caches;
    (total wall seconds, per-checkpoint figures)."""
    log(f"borg: init -e none + create --compression {BORG_COMPRESSION} per checkpoint")
    R.run(["borg", "init", "-e", "none", repo], "borg init", env=env)
    drop_caches()
    total, per = 0.0, []
    for src, ref in checkpoints:
        seconds, _ = R.run(["borg", "create", "--compression", BORG_COMPRESSION,
                            f"{repo}::{archive_name(ref)}", src], f"borg create {ref}", env=env)
        total += seconds
        per.append({"ref": ref, "wall_s": seconds})
    return total, per


def bench_borg(R, ctx):
    repo = os.path.join(ctx.work, "borg-repo")
    home = os.path.join(ctx.work, "borg-home")   # borg's caches and security dir, fresh each time
    rm(repo)
    rm(home)
    env = dict(os.environ, BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes",
               BORG_RELOCATED_REPO_ACCESS_IS_OK="yes", BORG_BASE_DIR=home)
    env.pop("BORG_PASSPHRASE", None)
    total, per = borg_create_all(R, repo, env, ctx.checkpoints)
    sync_s = timed_sync()
    res = {"tool": f"borg create {BORG_COMPRESSION}", "import_s": total,
           "import_sync_s": sync_s, "stored_bytes": du_bytes(repo), "per_checkpoint": per}
    dest = os.path.join(ctx.work, "restore", "borg")
    os.makedirs(dest)
    # borg stores the source path without its leading '/'; strip it so the files land in dest.
    strip = len(os.path.abspath(ctx.target[0]).strip("/").split("/"))
    log(f"borg: extract {archive_name(ctx.target[1])}")
    res.update(restore_checked(
        R, ["borg", "extract", "--strip-components", str(strip),
            f"{repo}::{archive_name(ctx.target[1])}"], "borg extract", dest, dest, ctx.expected,
        env=env, cwd=dest))
    return res


def restic_backup_all(R, env, checkpoints, tag=None) -> tuple[float, list[dict], dict]:
    """`restic init` the repository `env` names, then one `restic backup` per checkpoint
    (with `--tag tag(ref)` when `tag` is given), from cold caches; (total wall seconds,
    per-checkpoint figures, {ref: snapshot id})."""
    log("restic: init + backup per checkpoint")
    R.run(["restic", "init"], "restic init", env=env)
    drop_caches()
    total, per, snapshots = 0.0, [], {}
    for src, ref in checkpoints:
        argv = ["restic", "backup", src] + (["--tag", tag(ref)] if tag else [])
        seconds, out = R.run(argv, f"restic backup {ref}", env=env)
        total += seconds
        m = re.search(r"snapshot ([0-9a-f]+) saved", out)
        if not m:
            raise BenchError(f"restic backup {src}: no snapshot id in its output:\n{out}")
        snapshots[ref] = m.group(1)
        per.append({"ref": ref, "wall_s": seconds, "snapshot": m.group(1)})
    return total, per, snapshots


def bench_restic(R, ctx):
    repo = os.path.join(ctx.work, "restic-repo")
    cache = os.path.join(ctx.work, "restic-cache")
    rm(repo)
    rm(cache)
    env = dict(os.environ, RESTIC_PASSWORD="bench", RESTIC_REPOSITORY=repo,
               RESTIC_CACHE_DIR=cache)
    total, per, snapshots = restic_backup_all(R, env, ctx.checkpoints)
    sync_s = timed_sync()
    res = {"tool": "restic backup", "import_s": total, "import_sync_s": sync_s,
           "stored_bytes": du_bytes(repo), "per_checkpoint": per}
    dest = os.path.join(ctx.work, "restore", "restic")
    snapshot = snapshots[ctx.target[1]]
    log(f"restic: restore {snapshot}")
    # restic restores the absolute source path below the target.
    restored = os.path.join(dest, os.path.abspath(ctx.target[0]).lstrip("/"))
    res.update(restore_checked(R, ["restic", "restore", snapshot, "--target", dest],
                               "restic restore", dest, restored, ctx.expected, env=env))
    return res


def sweep_settings():
    out = [(f"avg {avg // KiB} KiB", {"min_size": avg // 4, "avg_size": avg,
                                      "max_size": avg * 4, "tensor_block": avg}, None)
           for avg in SWEEP_AVG_SIZES]
    out.append(("defaults, delta = false", None, {"delta": False}))
    return out


def bench_sweep_one(R, ctx, label, chunking, compression):
    import tomllib
    log(f"sweep: ckptfs with {label}")
    store = os.path.join(ctx.work, "sweep", "store")
    res = ckptfs_import_all(R, ctx.ckptfs, store, ctx.checkpoints, f"sweep {label}",
                            chunking, compression)
    with open(os.path.join(store, "ckptfs.toml"), "rb") as f:
        cfg = tomllib.load(f)
    res.update(label=label, chunking=cfg["chunking"], compression=cfg["compression"])
    res.update(ckptfs_restore(R, ctx, store, f"sweep {label}"))
    if not res["restore_ok"]:
        raise BenchError(f"sweep {label}: the restored copy differs from the source: "
                         f"{res['restore_problem']}")
    log(f"  import {res['import_s']:.1f} s, stored {res['stored_bytes'] / 1e6:.1f} MB, "
        f"restore {res['restore_s']:.2f} s")
    rm(store)
    return res


# -- summary and report ------------------------------------------------------------------
def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


SUMMARY_KEYS = ("import_s", "import_sync_s", "stored_bytes", "restore_s", "restore_sync_s")


def summarize(reps: list[dict]) -> dict:
    """Median (and min, max) of each figure over the repetitions of one tool or setting."""
    out = {"reps": len(reps), "restore_ok": all(r["restore_ok"] for r in reps)}
    for k in SUMMARY_KEYS:
        xs = [r[k] for r in reps]
        out[k] = median(xs)
        out[k + "_min"], out[k + "_max"] = min(xs), max(xs)
    return out


def fmt(v, spec, none="-"):
    return none if v is None else format(v, spec)


def spread(s, key, spec):
    if s["reps"] == 1:
        return format(s[key], spec)
    lo, hi = format(s[key + "_min"], spec), format(s[key + "_max"], spec)
    return f"{format(s[key], spec)} ({lo}-{hi})"


def describe_source(src: dict) -> str:
    """One line naming the ckptfs code a benchmark measured (path, commit, dirty)."""
    if not src["commit"]:
        return f"ckptfs code: {src['path']} (not in a git work tree)"
    dirty = ", with uncommitted changes" if src["uncommitted_changes"] else ""
    return f"ckptfs code: {src['path']} (git {src['commit'][:10]}{dirty})"


def print_tables(result):
    logical = result["corpus"]["bytes"]
    summary = result["summary"]
    borg_bytes = next((s["stored_bytes"] for t, s in summary.items() if t.startswith("borg")), None)
    n = result["repeat"]
    log()
    log(f"corpus {result['corpus']['path']}: {len(result['corpus']['checkpoints'])} checkpoints, "
        f"{logical / 1e6:.1f} MB; restore target {result['restore_target']} "
        f"({result['restore_target_bytes'] / 1e6:.1f} MB)")
    log(("median (min-max) of " + str(n) + " repetitions") if n > 1 else "one repetition")
    log()
    w = 20 if n > 1 else 10
    head = (f"{'tool':<20}{'import s':>{w}}{'MB/s':>6}{'+sync s':>8}{'stored MB':>11}"
            f"{'vs borg':>8}{'restore s':>{w}}{'+sync s':>8}  restored ok")
    log(head)
    log("-" * len(head))
    for tool, s in summary.items():
        ratio = s["stored_bytes"] / borg_bytes if borg_bytes else None
        log(f"{tool:<20}{spread(s, 'import_s', '.1f'):>{w}}{logical / 1e6 / s['import_s']:>6.0f}"
            f"{s['import_sync_s']:>8.1f}{s['stored_bytes'] / 1e6:>11.1f}{fmt(ratio, '.3f'):>8}"
            f"{spread(s, 'restore_s', '.2f'):>{w}}{s['restore_sync_s']:>8.2f}  "
            f"{'yes' if s['restore_ok'] else 'NO (see above)'}")
    if n > 1:
        log()
        log("per repetition (import s / restore s), tools in the order they ran:")
        for i, rep in enumerate(result["repetitions"]):
            log(f"  rep {i + 1}: " + "; ".join(
                f"{t['tool']} {t['import_s']:.1f} / {t['restore_s']:.2f}" for t in rep["tools"]))
    ck_reps = [t for rep in result["repetitions"] for t in rep["tools"] if t["tool"] == "ckptfs"]
    st = ck_reps[-1]["stats"]
    engine = median([sum(p["reported_s"] or 0 for p in t["per_checkpoint"]) for t in ck_reps])
    log()
    log(f"ckptfs import: {summary['ckptfs']['import_s']:.1f} s wall for "
        f"{len(result['corpus']['checkpoints'])} commands (median), of which {engine:.1f} s inside "
        "the imports (the seconds `ckptfs import` reports); the rest is process start-up, "
        "store open and close")
    log("start-up, median wall of `--version`: "
        + ", ".join(f"{k} {v:.2f} s" for k, v in result["startup_s"].items()))
    log(f"ckptfs stats: logical {st['logical_bytes'] / 1e6:.1f} MB, unique "
        f"{st['unique_bytes'] / 1e6:.1f} MB in {st['chunks']} chunks, stored "
        f"{st['stored_bytes'] / 1e6:.1f} MB in {st['packs']} packs "
        f"({st['pack_bytes'] / 1e6:.1f} MB "
        f"pack files; du -sb of the store {ck_reps[-1]['stored_bytes'] / 1e6:.1f} MB)")
    print_targets(result["targets"])
    if result.get("sweep_summary"):
        log()
        log("chunk sweep (ckptfs only, same corpus, same run"
            + (f"; median (min-max) of {n} repetitions" if n > 1 else "") + "):")
        head = (f"{'setting':<24}{'min':>6}{'avg':>6}{'max':>7}{'block':>6}{'delta':>6}"
                f"{'import s':>{w}}{'MB/s':>5}{'stored MB':>10}{'vs borg':>8}{'chunks':>7}"
                f"{'restore s':>{w}}")
        log(head)
        log("-" * len(head))
        for label, s in result["sweep_summary"].items():
            c, delta, chunks = s["chunking"], s["compression"]["delta"], s["chunks"]
            ratio = s["stored_bytes"] / borg_bytes if borg_bytes else None
            log(f"{label:<24}{c['min_size'] // KiB:>5}K{c['avg_size'] // KiB:>5}K"
                f"{c['max_size'] // KiB:>6}K{c['tensor_block'] // KiB:>5}K"
                f"{str(delta).lower():>6}{spread(s, 'import_s', '.1f'):>{w}}"
                f"{logical / 1e6 / s['import_s']:>5.0f}{s['stored_bytes'] / 1e6:>10.1f}"
                f"{fmt(ratio, '.3f'):>8}{chunks:>7}{spread(s, 'restore_s', '.2f'):>{w}}")
    log()
    log(f"results: {result['json_path']}")


def evaluate_targets(result):
    summary = {t.split()[0]: s for t, s in result["summary"].items()}
    ck, borg = summary.get("ckptfs"), summary.get("borg")
    if not (ck and borg):
        return []
    pairs = [({t["tool"].split()[0]: t for t in rep["tools"]}) for rep in result["repetitions"]]

    def count(key, factor=1.0):
        return sum(1 for p in pairs if p["ckptfs"][key] <= factor * p["borg"][key])

    n = len(pairs)
    lim = STORED_TARGET * borg["stored_bytes"]
    return [
        {"name": "import_time", "met": ck["import_s"] <= borg["import_s"],
         "met_in_reps": count("import_s"), "reps": n,
         "text": f"ckptfs import {ck['import_s']:.1f} s <= borg create {borg['import_s']:.1f} s "
                 f"(ratio {ck['import_s'] / borg['import_s']:.2f}; met in {count('import_s')} "
                 f"of {n} repetitions)"},
        {"name": "stored_bytes", "met": ck["stored_bytes"] <= lim,
         "met_in_reps": count("stored_bytes", STORED_TARGET), "reps": n,
         "text": f"ckptfs stored {ck['stored_bytes'] / 1e6:.1f} MB <= 0.9 x borg "
                 f"{BORG_COMPRESSION} {borg['stored_bytes'] / 1e6:.1f} MB = {lim / 1e6:.1f} MB "
                 f"(ratio {ck['stored_bytes'] / borg['stored_bytes']:.3f}; met in "
                 f"{count('stored_bytes', STORED_TARGET)} of {n} repetitions)"},
        {"name": "restore_time", "met": ck["restore_s"] <= borg["restore_s"],
         "met_in_reps": count("restore_s"), "reps": n,
         "text": f"ckptfs get {ck['restore_s']:.2f} s <= borg extract {borg['restore_s']:.2f} s "
                 f"(ratio {ck['restore_s'] / borg['restore_s']:.2f}; met in "
                 f"{count('restore_s')} of {n} repetitions)"},
    ]


def machine_info():
    cpu = "?"
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and cpu == "?":
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = line.split(":", 1)[1]
    except OSError:
        pass
    mem = "?"
    try:
        with open("/proc/meminfo") as f:
            mem = f.readline().split(":", 1)[1].strip()
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu, "sha_ni": "sha_ni" in flags.split(),
            "mem_total": mem, "kernel": platform.release(), "python": platform.python_version()}


class Context:
    def __init__(self, **kw):
        self.__dict__.update(kw)


def rotate(items, k):
    k %= len(items)
    return items[k:] + items[:k]


# -- main --------------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", help="corpus directory (default: build/use ./bench-out/corpus)")
    ap.add_argument("--work", default=DEFAULT_WORK,
                    help="scratch directory for stores, repos and copies (default ./bench-out)")
    ap.add_argument("--skip-borg", action="store_true")
    ap.add_argument("--skip-restic", action="store_true")
    ap.add_argument("--chunk-sweep", action="store_true",
                    help="also measure ckptfs with other chunk sizes and without XOR-delta")
    ap.add_argument("--repeat", type=int, default=1, metavar="N",
                    help="measure everything N times, in rotated order, and report medians "
                         "(default 1)")
    a = ap.parse_args()
    if a.repeat < 1:
        ap.error("--repeat must be at least 1")

    corpus, work = corpus_and_work(a)
    ckptfs = find_ckptfs()

    os.makedirs(work, exist_ok=True)
    for sub in OWNED:
        p = os.path.join(work, sub)
        if os.path.commonpath([p, corpus]) in (p, corpus):
            raise BenchError(f"{p} overlaps the corpus {corpus}: choose another --work")
        rm(p)
    for sub in ("logs", "restore", "sweep"):
        os.makedirs(os.path.join(work, sub))
    R = Runner(os.path.join(work, "logs"))

    checkpoints = find_checkpoints(corpus)
    target = pick_restore_target(checkpoints)
    ctx = Context(work=work, ckptfs=ckptfs, checkpoints=checkpoints, target=target,
                  corpus_root=os.path.commonpath([c[0] for c in checkpoints]),
                  expected=tree_digests(target[0]))
    logical = sum(tree_bytes(c[0]) for c in checkpoints)

    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([os.path.relpath(sys.argv[0], REPO) if sys.argv[0].startswith(REPO)
                             else sys.argv[0], *sys.argv[1:]]),
        "repeat": a.repeat,
        "machine": machine_info(),
        "versions": {"ckptfs": tool_version([ckptfs, "--version"]),
                     "borg": None if a.skip_borg else tool_version(["borg", "--version"]),
                     "restic": None if a.skip_restic else tool_version(["restic", "version"])},
        "ckptfs_source": ckptfs_source(ckptfs),
        "corpus": {"path": corpus, "bytes": logical,
                   "checkpoints": [{"ref": ref, "dir": src, "bytes": tree_bytes(src)}
                                   for src, ref in checkpoints]},
        "restore_target": target[1],
        "restore_target_bytes": tree_bytes(target[0]),
        "json_path": os.path.join(work, "bench_store.json"),
    }
    m = result["machine"]
    log(f"machine: {m['nproc']} cpus, {m['cpu']}, sha_ni {'yes' if m['sha_ni'] else 'no'}; "
        + ", ".join(v for v in result["versions"].values() if v))
    log(describe_source(result["ckptfs_source"]))
    log(f"corpus: {corpus} ({logical / 1e6:.1f} MB), {len(checkpoints)} checkpoints: "
        + ", ".join(ref for _, ref in checkpoints))
    result["startup_s"] = {"ckptfs": startup_seconds([ckptfs, "--version"])}
    if not a.skip_borg:
        result["startup_s"]["borg"] = startup_seconds(["borg", "--version"])
    if not a.skip_restic:
        result["startup_s"]["restic"] = startup_seconds(["restic", "version"])

    benches = [bench_cp, bench_ckptfs]
    if not a.skip_borg:
        benches.append(bench_borg)
    if not a.skip_restic:
        benches.append(bench_restic)
    settings = sweep_settings() if a.chunk_sweep else []
    result["repetitions"] = []
    for rep in range(a.repeat):
        if a.repeat > 1:
            log(f"== repetition {rep + 1} of {a.repeat}")
        tools = [bench(R, ctx) for bench in rotate(benches, rep)]
        sweep = [bench_sweep_one(R, ctx, *s) for s in rotate(settings, rep)] if settings else []
        result["repetitions"].append({"tools": tools, "sweep": sweep})
        with open(result["json_path"], "w") as f:   # partial results survive an interruption
            json.dump(result, f, indent=2)

    result["drop_caches"] = bool(_drop_caches_ok)
    order = [t["tool"] for t in result["repetitions"][0]["tools"]]
    order = sorted(order, key=lambda t: ["cp", "ckptfs", "borg", "restic"].index(t.split()[0]))
    result["summary"] = {tool: summarize([t for rep in result["repetitions"]
                                          for t in rep["tools"] if t["tool"] == tool])
                         for tool in order}
    result["targets"] = evaluate_targets(result)
    if settings:
        result["sweep_summary"] = {}
        for label, _, _ in settings:
            rows = [r for rep in result["repetitions"] for r in rep["sweep"] if r["label"] == label]
            s = summarize(rows)
            s.update(chunking=rows[0]["chunking"], compression=rows[0]["compression"],
                     chunks=rows[0]["stats"]["chunks"], stats=rows[-1]["stats"])
            result["sweep_summary"][label] = s
    rm(os.path.join(work, "restore"))
    rm(os.path.join(work, "sweep"))

    with open(result["json_path"], "w") as f:
        json.dump(result, f, indent=2)
    print_tables(result)
    return 0 if result["summary"]["ckptfs"]["restore_ok"] else 1


def corpus_and_work(a) -> tuple[str, str]:
    """The corpus (built if the default one is missing) and work dirs of the parsed
    arguments, checked, and borg/restic present unless skipped."""
    if a.corpus:
        corpus = os.path.abspath(a.corpus)
        if not os.path.isdir(corpus):
            raise BenchError(f"--corpus {a.corpus}: no such directory")
    else:
        corpus = DEFAULT_CORPUS
        if not os.path.isdir(corpus) or not os.listdir(corpus):
            build_corpus(corpus)
    work = os.path.abspath(a.work)
    if os.path.commonpath([work, corpus]) == corpus:
        raise BenchError(f"--work {work} lies inside the corpus {corpus}: choose another")
    for tool, skip in (("borg", a.skip_borg), ("restic", a.skip_restic)):
        if not skip and not shutil.which(tool):
            raise BenchError(f"`{tool}` is not installed: install it or pass --skip-{tool}")
    return corpus, work


def print_targets(targets: list[dict]):
    """The MET / NOT MET lines under a benchmark's tables."""
    if targets:
        log()
        log("targets (on the medians):")
        for t in targets:
            log(f"  {'MET    ' if t['met'] else 'NOT MET'}  {t['text']}")


def run_main(main_fn, name: str):
    """Exit with main_fn()'s status; a BenchError or ^C as one line, not a traceback."""
    try:
        sys.exit(main_fn())
    except BenchError as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    run_main(main, "bench_store")
