#!/usr/bin/env python3
"""Garbage-collection benchmark: `ckptfs gc` against borg prune + compact and restic
forget --prune, doing the same job on the same corpus, in one run.

    scripts/bench_gc.py [--corpus DIR] [--work DIR] [--keep-last N] [--repeat N]
                        [--skip-borg] [--skip-restic] [--skip-rewrite-all]

The corpus is the one scripts/bench_store.py uses (../shared/bench/make_corpus.py:
minilm/full-ft/checkpoint-1..4, minilm/partial-ft/checkpoint-1..4,
minilm/export/{fp32,bf16}), found and ordered by bench_store's helpers. Every
checkpoint is archived as its own version, run by run in training order, then the job
is: keep only the newest N (default 1) checkpoints of each run, delete the others and
give their space back. Each tool does it the way its users would:

  ckptfs    `ckptfs init`, `ckptfs import STORE DIR PROJECT/RUN/VERSION` per checkpoint,
            `ckptfs retention set STORE PROJECT keep_last=N`, then (timed)
            `ckptfs gc STORE --dry-run --json` and `ckptfs gc STORE --json`; then a
            second `ckptfs gc` (nothing left to delete: what the liveness pass alone
            costs) and `ckptfs verify STORE`; last, the kept checkpoints alone are
            imported into a new store (untimed): the size a gc could at best reach
  ckptfs, rewrite_below=1
            the same with `[gc] rewrite_below = 1` in the store's ckptfs.toml (set right
            after init): every pack with a dead record is rewritten, so every dead byte
            leaves the disk (the default, 0.5, leaves the dead bytes of packs that are
            still mostly live)
  borg      `borg init -e none`, `borg create --compression zstd,3 REPO::P_R_V DIR` per
            checkpoint (bench_store's loop), then per run
            `borg prune --keep-last N -a 'P_R_*' REPO` (dry run first with -n), then
            `borg compact REPO`; verify: `borg check --verify-data REPO`
  restic    `restic init`, `restic backup --tag P_R DIR` per checkpoint (bench_store's
            loop, one tag per run), then `restic forget --keep-last N --group-by tags
            --prune` (dry run first with -n); verify: `restic check --read-data`

Every timed command starts with cold caches (sync + drop_caches, as root). Figures:
the wall seconds of each command (process start-up included) and the CPU seconds
(user + system) it and its children used; repository sizes before and after by `du -sb`
(for ckptfs also the pack files alone, which is what gc changes); versions deleted.

Checked after the timing, for every tool (a benchmark that reports wrong data is
worthless): the versions/archives/snapshots left are exactly the newest N of each run,
each of them restores byte-identical to its source (SHA-256 of every file; `ckptfs get`,
`borg extract`, `restic restore`), and for ckptfs a deleted version cannot be read any
more (`ckptfs get` fails) and the dry run's figures (versions, chunks and bytes freed,
pack bytes after) are compared with what the gc did.

The exit status is 1 when any of these checks fails, when the dry run's figures
differ from the gc's, or when the second gc still rewrote or dropped packs.

The machine is noisy: --repeat N measures everything N times, the tools in a rotated
order, and reports medians with the range. Results go to WORK/bench_gc.json, each
command's output to WORK/logs/. WORK defaults to ./bench-out/gc (git-ignored).

ckptfs is the `ckptfs` command beside this Python (as in bench_store.py); to measure a
fixed commit while the tree changes, clone it and put the clone's src/ first on
PYTHONPATH. The run records the code it measured.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_store as bs  # noqa: E402  (corpus, runner, caches, borg/restic loops, ckptfs import)
from bench_store import BenchError, drop_caches, du_bytes, log, median, rm  # noqa: E402

DEFAULT_WORK = os.path.join(bs.DEFAULT_WORK, "gc")
OWNED = ("ckptfs-store", "borg-repo", "borg-home", "restic-repo", "restic-cache", "restore",
         "logs")
REWRITE_ALL = 1.0


# -- helpers -----------------------------------------------------------------------------
def timed(R, argv, label, env=None, cwd=None, cold=True) -> tuple[dict, str]:
    """Run a command (cold caches first unless told otherwise); its wall seconds and the
    CPU seconds (user + system) it and its children used."""
    if cold:
        drop_caches()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds, out = R.run(argv, label, env=env, cwd=cwd)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"s": seconds, "cpu_s": cpu}, out


def add(a: dict, b: dict) -> dict:
    return {k: a[k] + b[k] for k in a}


def pack_bytes(store) -> int:
    """Bytes of the pack files (what gc rewrites and deletes)."""
    total = 0
    for r, _, files in os.walk(os.path.join(store, "packs")):
        total += sum(os.path.getsize(os.path.join(r, f)) for f in files if f.endswith(".pack"))
    return total


def parse_json(out: str, what: str):
    try:
        return json.loads(out[out.index("{"):])
    except ValueError:
        raise BenchError(f"{what}: no JSON in its output:\n{out[-2000:]}") from None


def runs_of(checkpoints) -> dict[str, list[str]]:
    """{'project/run': [refs in archive (seal) order]}."""
    runs = {}
    for _, ref in checkpoints:
        runs.setdefault(ref.rsplit("/", 1)[0], []).append(ref)
    return runs


def run_tag(ref: str) -> str:
    """borg archive-name prefix and restic tag of a checkpoint's run: P_R."""
    return bs.archive_name(ref.rsplit("/", 1)[0])


def check_restores(ctx, restore_one) -> str | None:
    """Restore every kept version with `restore_one(ref, dest) -> restored dir` and
    compare it file by file with its source; None when all match, else what differs."""
    problems = []
    for ref in ctx.kept:
        dest = os.path.join(ctx.work, "restore", bs.archive_name(ref))
        rm(dest)
        os.makedirs(dest)
        restored = restore_one(ref, dest)
        problem = bs.compare_trees(ctx.digests[ref], restored)
        if problem:
            problems.append(f"{ref}: {problem}")
        rm(dest)
    return "; ".join(problems) or None


def check_kept(tool: str, kept: list[str], ctx) -> str | None:
    if sorted(kept) == sorted(ctx.kept):
        return None
    return (f"{tool} kept {sorted(kept)}, expected {sorted(ctx.kept)} (the newest "
            f"{ctx.keep_last} of each run)")


# -- ckptfs ------------------------------------------------------------------------------
def bench_ckptfs(R, ctx, rewrite_below=None):
    tool = "ckptfs" if rewrite_below is None else f"ckptfs rewrite_below={rewrite_below:g}"
    label = tool.replace(" ", "-")
    store = os.path.join(ctx.work, "ckptfs-store")
    C = ctx.ckptfs
    log(f"{tool}: init + import per checkpoint")
    imp = bs.ckptfs_import_all(R, C, store, ctx.checkpoints, label,
                               compression=None, chunking=None)
    if rewrite_below is not None:
        bs.edit_store_toml(store, "gc", {"rewrite_below": rewrite_below})
    for project in ctx.projects:
        R.run([C, "retention", "set", store, project, f"keep_last={ctx.keep_last}"],
              f"{label} retention set {project}")
    res = {"tool": tool, "import_s": imp["import_s"], "stats_before": imp["stats"],
           "bytes_before": du_bytes(store), "packs_before": pack_bytes(store)}

    log(f"{tool}: gc --dry-run, gc, gc again, verify")
    res["dry"], out = timed(R, [C, "gc", store, "--dry-run", "--json"], f"{label} gc dry run")
    dry = parse_json(out, "ckptfs gc --dry-run")
    res["gc"], out = timed(R, [C, "gc", store, "--json"], f"{label} gc")
    done = parse_json(out, "ckptfs gc")
    res["gc_sync_s"] = bs.timed_sync()
    res["bytes_after"], res["packs_after"] = du_bytes(store), pack_bytes(store)
    res["gc_again"], out = timed(R, [C, "gc", store, "--json"], f"{label} gc again")
    again = parse_json(out, "ckptfs gc (again)")
    res["verify"], out = timed(R, [C, "verify", store], f"{label} verify")
    res["verify_output"] = out.strip().splitlines()[-1] if out.strip() else ""
    _, out = R.run([C, "stats", "--json", store], f"{label} stats after")
    res["stats_after"] = json.loads(out)
    res["deleted"] = [d["ref"] for d in done["deletions"]]
    res["prune"] = res["gc"]   # the whole job is one command

    keys = ("freed_chunks", "freed_bytes", "freed_by_deletions", "bytes_copied",
            "pack_bytes_before", "pack_bytes_after", "dead_bytes_left",
            "packs_rewritten", "packs_dropped", "new_packs", "leftovers_removed")
    res["dry_report"] = {k: dry.get(k) for k in keys}
    res["gc_report"] = {k: done.get(k) for k in keys}
    res["again_report"] = {k: again.get(k) for k in keys}
    res["dry_deleted"] = [d["ref"] for d in dry["deletions"]]
    problems = []
    if res["dry_deleted"] != res["deleted"]:
        problems.append(f"the dry run would delete {res['dry_deleted']}, gc deleted "
                        f"{res['deleted']}")
    for k in ("freed_chunks", "freed_bytes", "pack_bytes_after"):
        if dry.get(k) != done.get(k):
            problems.append(f"dry run {k} {dry.get(k)} != gc's {done.get(k)}")
    if done["pack_bytes_after"] != res["packs_after"]:
        problems.append(f"gc reports {done['pack_bytes_after']} pack bytes after, the pack "
                        f"files hold {res['packs_after']}")
    res["estimate_problems"] = problems
    res["again_problem"] = None
    if again["deletions"] or again["freed_chunks"] or again["packs_rewritten"] \
            or again["packs_dropped"]:
        res["again_problem"] = (f"a second gc, with nothing left to delete, still rewrote or "
                                f"dropped packs: {res['again_report']}")
    for p in problems + [res["again_problem"]] * bool(res["again_problem"]):
        log(f"  NOTE: {p}")

    # What is left, and that it reads back.
    listed = []
    for run in ctx.runs:
        _, out = R.run([C, "ls", store, run], f"{label} ls {run}")
        listed += [f"{run}/{line.split()[0]}" for line in out.splitlines() if line.strip()]
    res["kept_problem"] = check_kept(tool, listed, ctx)
    readable = []
    for ref in res["deleted"]:
        dest = os.path.join(ctx.work, "restore", "deleted")
        rm(dest)
        p = subprocess.run([C, "get", store, ref, dest], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        if p.returncode == 0:
            readable.append(ref)
        rm(dest)
    if readable:
        res["kept_problem"] = (res["kept_problem"] or "") + f" deleted yet readable: {readable}"

    def restore(ref, dest):
        rm(dest)
        R.run([C, "get", store, ref, dest], f"{label} get {ref}")
        return dest
    res["restore_problem"] = check_restores(ctx, restore)
    if rewrite_below is None:
        # What the kept checkpoints take when imported alone into a new store (no delta
        # bases from the deleted ones): the floor a gc could reach.
        rm(store)
        bs.ckptfs_import_all(R, C, store, [(ctx.sources[ref], ref) for ref in ctx.kept],
                             f"{label} kept alone")
        res["kept_alone_bytes"], res["kept_alone_packs"] = du_bytes(store), pack_bytes(store)
    report_one(res)
    rm(store)
    return res


# -- borg --------------------------------------------------------------------------------
def bench_borg(R, ctx):
    repo = os.path.join(ctx.work, "borg-repo")
    home = os.path.join(ctx.work, "borg-home")
    rm(repo)
    rm(home)
    env = dict(os.environ, BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes",
               BORG_RELOCATED_REPO_ACCESS_IS_OK="yes", BORG_BASE_DIR=home)
    env.pop("BORG_PASSPHRASE", None)
    total, _ = bs.borg_create_all(R, repo, env, ctx.checkpoints)
    res = {"tool": "borg", "import_s": total, "bytes_before": du_bytes(repo)}
    keep = str(ctx.keep_last)
    log("borg: prune -n per run, prune per run + compact, check --verify-data")
    res["dry"] = {"s": 0.0, "cpu_s": 0.0}
    res["prune_only"] = {"s": 0.0, "cpu_s": 0.0}
    for i, run in enumerate(ctx.runs):
        glob = bs.archive_name(run) + "_*"
        t, _ = timed(R, ["borg", "prune", "-n", "--list", "--keep-last", keep, "-a", glob, repo],
                     f"borg prune dry run {run}", env=env, cold=(i == 0))
        res["dry"] = add(res["dry"], t)
    outputs = []
    for i, run in enumerate(ctx.runs):
        glob = bs.archive_name(run) + "_*"
        t, out = timed(R, ["borg", "prune", "--list", "--stats", "--keep-last", keep, "-a",
                           glob, repo], f"borg prune {run}", env=env, cold=(i == 0))
        res["prune_only"] = add(res["prune_only"], t)
        outputs.append(out)
    res["compact"], out = timed(R, ["borg", "compact", repo], "borg compact", env=env,
                                cold=False)
    res["prune"] = add(res["prune_only"], res["compact"])
    res["gc_sync_s"] = bs.timed_sync()
    res["bytes_after"] = du_bytes(repo)
    res["verify"], _ = timed(R, ["borg", "check", "--verify-data", repo], "borg check",
                             env=env)
    _, out = R.run(["borg", "list", "--short", repo], "borg list", env=env)
    by_name = {bs.archive_name(ref): ref for _, ref in ctx.checkpoints}
    left = [by_name.get(n, n) for n in out.split()]
    res["deleted"] = [ref for _, ref in ctx.checkpoints if ref not in left]
    res["prune_output"] = "".join(outputs)
    res["kept_problem"] = check_kept("borg", left, ctx)

    def restore(ref, dest):
        src = ctx.sources[ref]
        strip = len(os.path.abspath(src).strip("/").split("/"))
        R.run(["borg", "extract", "--strip-components", str(strip),
               f"{repo}::{bs.archive_name(ref)}"], f"borg extract {ref}", env=env, cwd=dest)
        return dest
    res["restore_problem"] = check_restores(ctx, restore)
    report_one(res)
    rm(repo)
    rm(home)
    return res


# -- restic ------------------------------------------------------------------------------
def bench_restic(R, ctx):
    repo = os.path.join(ctx.work, "restic-repo")
    cache = os.path.join(ctx.work, "restic-cache")
    rm(repo)
    rm(cache)
    env = dict(os.environ, RESTIC_PASSWORD="bench", RESTIC_REPOSITORY=repo,
               RESTIC_CACHE_DIR=cache)
    total, _, snapshots = bs.restic_backup_all(R, env, ctx.checkpoints, tag=run_tag)
    res = {"tool": "restic", "import_s": total, "bytes_before": du_bytes(repo)}
    keep = str(ctx.keep_last)
    log("restic: forget --prune -n, forget --prune, check --read-data")
    res["dry"], _ = timed(R, ["restic", "forget", "-n", "--keep-last", keep, "--group-by",
                              "tags", "--prune"], "restic forget dry run", env=env)
    res["prune"], out = timed(R, ["restic", "forget", "--keep-last", keep, "--group-by",
                                  "tags", "--prune"], "restic forget --prune", env=env)
    res["gc_sync_s"] = bs.timed_sync()
    res["bytes_after"] = du_bytes(repo)
    by_id = {sid: ref for ref, sid in snapshots.items()}
    _, out = R.run(["restic", "snapshots", "--json"], "restic snapshots", env=env)
    left = [by_id.get(s["short_id"], s["short_id"]) for s in json.loads(out)]
    res["deleted"] = [ref for ref in snapshots if ref not in left]
    res["verify"], _ = timed(R, ["restic", "check", "--read-data"], "restic check", env=env)
    res["kept_problem"] = check_kept("restic", left, ctx)

    def restore(ref, dest):
        R.run(["restic", "restore", snapshots[ref], "--target", dest],
              f"restic restore {ref}", env=env)
        return os.path.join(dest, os.path.abspath(ctx.sources[ref]).lstrip("/"))
    res["restore_problem"] = check_restores(ctx, restore)
    report_one(res)
    rm(repo)
    rm(cache)
    return res


# -- report ------------------------------------------------------------------------------
def report_one(res):
    ok = not (res["kept_problem"] or res["restore_problem"])
    log(f"  {res['tool']}: {len(res['deleted'])} deleted; {res['bytes_before'] / 1e6:.1f} MB "
        f"-> {res['bytes_after'] / 1e6:.1f} MB; dry run {res['dry']['s']:.2f} s; "
        f"prune+reclaim {res['prune']['s']:.2f} s (cpu {res['prune']['cpu_s']:.2f} s); "
        f"verify {res['verify']['s']:.2f} s; kept versions "
        + ("restore byte-identical" if ok else "WRONG"))
    for key in ("kept_problem", "restore_problem"):
        if res[key]:
            log(f"  WARNING: {res['tool']}: {res[key]}")


def summarize(rows: list[dict]) -> dict:
    def stat(xs):
        return {"median": median(xs), "min": min(xs), "max": max(xs)}
    out = {"reps": len(rows), "deleted": len(rows[0]["deleted"]),
           "ok": all(not (r["kept_problem"] or r["restore_problem"]) for r in rows)}
    for k in ("bytes_before", "bytes_after", "import_s"):
        out[k] = stat([r[k] for r in rows])
    out["reclaimed"] = stat([r["bytes_before"] - r["bytes_after"] for r in rows])
    for k in ("dry", "prune", "verify", "prune_only", "compact", "gc_again"):
        if k in rows[0]:
            out[k] = stat([r[k]["s"] for r in rows])
            out[k + "_cpu"] = stat([r[k]["cpu_s"] for r in rows])
    for k in ("packs_before", "packs_after"):
        if k in rows[0]:
            out[k] = stat([r[k] for r in rows])
    return out


def spread(st, spec, n):
    if n == 1:
        return format(st["median"], spec)
    return f"{format(st['median'], spec)} ({format(st['min'], spec)}-{format(st['max'], spec)})"


def print_tables(result):
    n = result["repeat"]
    log()
    log(f"corpus {result['corpus']['path']}: {len(result['corpus']['checkpoints'])} checkpoints, "
        f"{result['corpus']['bytes'] / 1e6:.1f} MB; keep the newest {result['keep_last']} of "
        f"each run: kept {', '.join(result['kept'])}")
    log(("median (min-max) of " + str(n) + " repetitions") if n > 1 else "one repetition")
    log()
    w = 20 if n > 1 else 10
    head = (f"{'tool':<24}{'deleted':>8}{'before MB':>11}{'after MB':>10}{'reclaimed MB':>14}"
            f"{'dry run s':>{w}}{'prune+reclaim s':>{w + 6}}{'cpu s':>7}{'verify s':>{w}}"
            "  kept restore ok")
    log(head)
    log("-" * len(head))
    for tool, s in result["summary"].items():
        log(f"{tool:<24}{s['deleted']:>8}{s['bytes_before']['median'] / 1e6:>11.1f}"
            f"{s['bytes_after']['median'] / 1e6:>10.1f}{s['reclaimed']['median'] / 1e6:>14.1f}"
            f"{spread(s['dry'], '.2f', n):>{w}}{spread(s['prune'], '.2f', n):>{w + 6}}"
            f"{s['prune_cpu']['median']:>7.2f}{spread(s['verify'], '.2f', n):>{w}}  "
            f"{'yes' if s['ok'] else 'NO (see above)'}")
    log()
    log("prune+reclaim: ckptfs `gc`; borg `prune` per run + `compact`; restic `forget --prune`. "
        "verify: `ckptfs verify`, `borg check --verify-data`, `restic check --read-data`.")
    if "borg" in result["summary"]:
        s = result["summary"]["borg"]
        log(f"borg: prune {spread(s['prune_only'], '.2f', n)} s + compact "
            f"{spread(s['compact'], '.2f', n)} s")
    for tool, s in result["summary"].items():
        if "gc_again" in s:
            log(f"{tool}: pack files {s['packs_before']['median'] / 1e6:.1f} MB -> "
                f"{s['packs_after']['median'] / 1e6:.1f} MB; a second gc (nothing to delete) "
                f"{spread(s['gc_again'], '.2f', n)} s (cpu {s['gc_again_cpu']['median']:.2f} s)")
    log()
    log("ckptfs gc: the dry run's estimate / what gc did (last repetition):")
    for rep in result["repetitions"][-1:]:
        for r in rep:
            if "dry_report" not in r:
                continue
            d, g = r["dry_report"], r["gc_report"]
            log(f"  {r['tool']}: versions {len(r['dry_deleted'])} / {len(r['deleted'])}; chunks "
                f"freed {d['freed_chunks']} / {g['freed_chunks']}; bytes freed "
                f"{d['freed_bytes'] / 1e6:.1f} / {g['freed_bytes'] / 1e6:.1f} MB; pack bytes after "
                f"{d['pack_bytes_after']} / {g['pack_bytes_after']} (files: {r['packs_after']}); "
                f"packs rewritten {d['packs_rewritten']} / {g['packs_rewritten']}, dropped "
                f"{d['packs_dropped']} / {g['packs_dropped']}; live bytes copied "
                f"{d['bytes_copied'] / 1e6:.2f} / {g['bytes_copied'] / 1e6:.2f} MB; dead bytes "
                f"left in packs {g['dead_bytes_left'] / 1e6:.1f} MB")
            for p in r["estimate_problems"]:
                log(f"    MISMATCH: {p}")
            if r["again_problem"]:
                log(f"    PROBLEM: {r['again_problem']}")
            if "kept_alone_packs" in r:
                log(f"  the kept checkpoints imported alone into a new store: "
                    f"{r['kept_alone_packs'] / 1e6:.1f} MB of packs "
                    f"({r['kept_alone_bytes'] / 1e6:.1f} MB du -sb)")
    if n > 1:
        log()
        log("per repetition (prune+reclaim s / verify s), tools in the order they ran:")
        for i, rep in enumerate(result["repetitions"]):
            log(f"  rep {i + 1}: " + "; ".join(
                f"{r['tool']} {r['prune']['s']:.2f} / {r['verify']['s']:.2f}" for r in rep))
    log()
    log(f"results: {result['json_path']}")


# -- main --------------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", help="corpus directory (default: build/use ./bench-out/corpus)")
    ap.add_argument("--work", default=DEFAULT_WORK,
                    help="scratch directory for stores and repos (default ./bench-out/gc)")
    ap.add_argument("--keep-last", type=int, default=1, metavar="N",
                    help="keep the newest N checkpoints of each run (default 1)")
    ap.add_argument("--skip-borg", action="store_true")
    ap.add_argument("--skip-restic", action="store_true")
    ap.add_argument("--skip-rewrite-all", action="store_true",
                    help="leave out ckptfs with [gc] rewrite_below = 1")
    ap.add_argument("--repeat", type=int, default=1, metavar="N",
                    help="measure everything N times, in rotated order (default 1)")
    a = ap.parse_args()
    if a.repeat < 1 or a.keep_last < 1:
        ap.error("--repeat and --keep-last must be at least 1")

    corpus, work = bs.corpus_and_work(a)
    ckptfs = bs.find_ckptfs()
    os.makedirs(work, exist_ok=True)
    for sub in OWNED:
        p = os.path.join(work, sub)
        if os.path.commonpath([p, corpus]) in (p, corpus):
            raise BenchError(f"{p} overlaps the corpus {corpus}: choose another --work")
        rm(p)
    for sub in ("logs", "restore"):
        os.makedirs(os.path.join(work, sub))
    R = bs.Runner(os.path.join(work, "logs"))

    checkpoints = bs.find_checkpoints(corpus)
    runs = runs_of(checkpoints)
    kept = [ref for refs in runs.values() for ref in refs[-a.keep_last:]]
    ctx = bs.Context(work=work, ckptfs=ckptfs, checkpoints=checkpoints, runs=list(runs),
                     projects=sorted({r.split("/")[0] for r in runs}), keep_last=a.keep_last,
                     kept=kept, sources={ref: src for src, ref in checkpoints},
                     digests={ref: bs.tree_digests(src) for src, ref in checkpoints
                              if ref in kept})
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "repeat": a.repeat,
        "keep_last": a.keep_last,
        "kept": kept,
        "machine": bs.machine_info(),
        "versions": {"ckptfs": bs.tool_version([ckptfs, "--version"]),
                     "borg": None if a.skip_borg else bs.tool_version(["borg", "--version"]),
                     "restic": None if a.skip_restic else bs.tool_version(["restic", "version"])},
        "ckptfs_source": bs.ckptfs_source(ckptfs),
        "corpus": {"path": corpus, "bytes": sum(bs.tree_bytes(s) for s, _ in checkpoints),
                   "checkpoints": [ref for _, ref in checkpoints]},
        "json_path": os.path.join(work, "bench_gc.json"),
    }
    m, src = result["machine"], result["ckptfs_source"]
    log(f"machine: {m['nproc']} cpus, {m['cpu']}; "
        + ", ".join(v for v in result["versions"].values() if v))
    log(bs.describe_source(src))
    log(f"corpus: {corpus}, {len(checkpoints)} checkpoints in {len(runs)} runs; keeping "
        + ", ".join(kept))

    benches = [("ckptfs", lambda: bench_ckptfs(R, ctx))]
    if not a.skip_rewrite_all:
        benches.append((f"ckptfs rewrite_below={REWRITE_ALL:g}",
                        lambda: bench_ckptfs(R, ctx, REWRITE_ALL)))
    if not a.skip_borg:
        benches.append(("borg", lambda: bench_borg(R, ctx)))
    if not a.skip_restic:
        benches.append(("restic", lambda: bench_restic(R, ctx)))
    result["repetitions"] = []
    for rep in range(a.repeat):
        if a.repeat > 1:
            log(f"== repetition {rep + 1} of {a.repeat}")
        result["repetitions"].append([fn() for _, fn in bs.rotate(benches, rep)])
        with open(result["json_path"], "w") as f:   # partial results survive an interruption
            json.dump(result, f, indent=2)
    result["drop_caches"] = bool(bs._drop_caches_ok)
    result["summary"] = {name: summarize([r for rep in result["repetitions"] for r in rep
                                          if r["tool"] == name]) for name, _ in benches}
    rm(os.path.join(work, "restore"))
    with open(result["json_path"], "w") as f:
        json.dump(result, f, indent=2)
    print_tables(result)
    ok = all(s["ok"] for s in result["summary"].values())
    estimates = all(not (r.get("estimate_problems") or r.get("again_problem"))
                    for rep in result["repetitions"] for r in rep)
    return 0 if ok and estimates else 1


if __name__ == "__main__":
    bs.run_main(main, "bench_gc")
