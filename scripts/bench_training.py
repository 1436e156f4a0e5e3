#!/usr/bin/env python3
"""Training benchmark: one transformers Trainer run writing its checkpoints to a local
directory and straight into a ckptfs mount, in one run (issue 12).

    scripts/bench_training.py [--work DIR] [--repeat N] [--legs local,mount,mount-short,callback]
                              [--seal-after S] [--short-seal-after S] [--steps N]
                              [--save-steps N] [--ckpt-mb MB] [--threads N] [--cpu-hogs N]

Run it as root (it mounts), with the ckptfs to measure importable by this Python; to
measure the work tree rather than the editable install, put its src/ first on
PYTHONPATH (the mount daemon, started as `python -m ckptfs mount`, inherits it). The run
records the code it measured (path, git commit, uncommitted changes).

The job: a BERT sequence classifier built from a config (no hub), hidden 256, 4 layers,
its vocabulary sized so that one checkpoint (weights, the two AdamW moments, scheduler,
RNG state, trainer state) is about --ckpt-mb MB (default 64); synthetic token ids,
batch 16 of 128 tokens, CPU, --threads torch threads (default 1: the other core is left
to the daemon, as a GPU job leaves CPU to it), seeded and deterministic; --steps steps
(default 20), a checkpoint every --save-steps (default 5), no evaluation, no rotation,
report_to none. Each leg runs this job in a fresh process (the same imports in every
leg, ckptfs's callback module included):

  local        output_dir on the local disk (WORK/local/run)
  mount        output_dir = MNT/inbox/bench/run-N of a new store mounted with
               --seal-after S (default 5, the mount's default): sealed after the quiet period
  mount-short  the same with --seal-after --short-seal-after (default 1)
  callback     the same as mount, with ckptfs's CkptfsCallback (seals at on_save)

Every leg runs --repeat times (default 3), the legs in a rotated order in each repetition
so that none always goes first; the tables give the median and, in brackets, the range.
`sync` runs (timed, outside the legs) before each leg so that no leg pays for the dirty
pages of the one before.

What the job measures itself (a TrainerCallback of this benchmark, placed after
ckptfs's, and a Trainer subclass that wraps `_save_checkpoint`):

  train s   wall time of trainer.train() (perf_counter)
  save s    per checkpoint: from the start of Trainer._save_checkpoint (model, optimizer,
            scheduler, RNG, trainer state) to the end of the last on_save callback (ours),
            so it includes CkptfsCallback's seal request. Wrapping _save_checkpoint is
            exact: on_step_end -> on_save would also count the logging and evaluation
            Trainer does in the same step before it saves.
  saved at  time.time() when _save_checkpoint returned: every file of the checkpoint is
            written and closed.

Seal latency, per checkpoint: the time it appeared sealed minus its "saved at". Nothing
polls for it (a poller would take CPU from the job it measures); the daemon's own records
give it afterwards, on the same clock (CLOCK_REALTIME):

  journal   the `time` of the `version.sealed` entry in STORE/journal/journal.jsonl
            (microseconds; taken at the commit, before the journal's fsync and the index
            update): a lower bound of when projects/ shows it;
  log       the timestamp of the daemon's "sealed P/R/V" line in STORE/logs/mount.log
            (milliseconds; written once the inbox released the unit, after the commit):
            an upper bound, and the figure the targets are judged on.

After training the benchmark waits (reading the mount log every 0.1 s) until every
checkpoint has its "sealed" line, then reads MNT/.ckptfs/stats.json (files prepared
ahead of their seal, reused at the seal, ingest seconds, stored bytes), the daemon's CPU
time (/proc/PID/stat, from mount to the end), each seal's log line (files, prepared
ahead) and journal entry (new bytes stored, the delta parent if its tensors were
XOR-delta coded) and `du -sb` of the store, and unmounts.

Targets (issue 12), judged on the medians, with the number of repetitions they held in:
training through the mount <= 1.1 x the local leg's train time; every checkpoint sealed
within 0.5 s of its save with the callback, within the quiet period + 0.5 s without.

--cpu-hogs N starts N `yes > /dev/null` processes for the whole run (a busy machine)
and stops them at the end. MB are 10^6 bytes. Prints tables and writes every figure of
every repetition as JSON to WORK/bench_training.json (WORK defaults to ./bench-out,
git-ignored); each command's output goes to WORK/logs/, each leg's mount log is kept in
WORK/logs/ too.
"""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_store as bs  # noqa: E402  (shared helpers: runner, median, source, machine)
from bench_mount import Mounts  # noqa: E402
from bench_store import BenchError, log, median, rm, timed_sync  # noqa: E402

LEGS = ("local", "mount", "mount-short", "callback")
PROJECT = "bench"
HIDDEN, LAYERS, SEQ_LEN, BATCH = 256, 4, 128, 16
TARGET_TRAIN_RATIO = 1.1
TARGET_CALLBACK_S = 0.5
TARGET_QUIET_SLACK_S = 0.5
WAIT_POLL_S = 0.1          # how often the benchmark reads the mount log after training
SEAL_LINE = re.compile(r"^(\S+ \S+) INFO \S+: sealed (\S+?)/(\S+?)/(\S+) \(written at .*?\): "
                       r"(\d+) files \((\d+) prepared ahead\), (\d+) bytes, (\d+) new stored")


# -- the job (runs in a child process: `bench_training.py --_train SPEC.json`) -------------
def train_job(spec_path):
    """Train as the spec says; write what was measured to spec["report"]."""
    with open(spec_path) as f:
        spec = json.load(f)
    t_import = time.perf_counter()
    import torch
    from transformers import (BertConfig, BertForSequenceClassification, Trainer,
                              TrainerCallback, TrainingArguments)
    from ckptfs.integrations.transformers import CkptfsCallback
    import_s = time.perf_counter() - t_import

    torch.manual_seed(spec["seed"])
    torch.set_num_threads(spec["threads"])
    torch.use_deterministic_algorithms(True)
    model = BertForSequenceClassification(bert_config(BertConfig, spec["ckpt_mb"]))
    saves = []

    class TimedTrainer(Trainer):
        def _save_checkpoint(self, model, trial):
            t0, w0 = time.perf_counter(), time.time()
            super()._save_checkpoint(model, trial)
            saves.append({"step": self.state.global_step, "started_at": w0,
                          "saved_at": time.time(), "write_s": time.perf_counter() - t0,
                          "t0": t0})

    class Measure(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            saves[-1]["save_s"] = time.perf_counter() - saves[-1].pop("t0")
            saves[-1]["on_save_done_at"] = time.time()

    g = torch.Generator().manual_seed(spec["seed"] + 1)
    n = spec["steps"] * BATCH
    ids = torch.randint(1, model.config.vocab_size, (n, SEQ_LEN), generator=g)
    data = [{"input_ids": ids[i], "labels": torch.tensor(i % 2)} for i in range(n)]
    args = TrainingArguments(
        output_dir=spec["output_dir"], max_steps=spec["steps"], save_strategy="steps",
        save_steps=spec["save_steps"], per_device_train_batch_size=BATCH, learning_rate=1e-4,
        logging_steps=spec["steps"], report_to="none", seed=spec["seed"],
        data_seed=spec["seed"], use_cpu=True, dataloader_num_workers=0, disable_tqdm=True)
    callbacks = ([CkptfsCallback()] if spec["callback"] else []) + [Measure()]
    trainer = TimedTrainer(model=model, args=args, train_dataset=data, callbacks=callbacks)

    cpu0 = os.times()
    t0 = time.perf_counter()
    result = trainer.train()
    train_s = time.perf_counter() - t0
    cpu1 = os.times()
    if len(saves) != spec["steps"] // spec["save_steps"] or any("save_s" not in s for s in saves):
        raise SystemExit(f"expected a _save_checkpoint and an on_save per checkpoint, got {saves}")
    report = {
        "train_s": train_s, "import_s": import_s,
        "train_cpu_s": (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system),
        "train_loss": result.training_loss, "params": model.num_parameters(),
        "vocab_size": model.config.vocab_size, "saves": saves,
        "checkpoint_bytes": {f"checkpoint-{s['step']}": bs.tree_bytes(
            os.path.join(spec["output_dir"], f"checkpoint-{s['step']}")) for s in saves},
    }
    with open(spec["report"], "w") as f:
        json.dump(report, f, indent=1)


def bert_config(BertConfig, ckpt_mb):
    """A BERT config whose checkpoint is about ckpt_mb MB: fp32 weights plus AdamW's two
    moments are 12 bytes a parameter; the vocabulary takes up what the body does not."""
    def config(vocab):
        return BertConfig(vocab_size=vocab, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                          num_attention_heads=4, intermediate_size=4 * HIDDEN,
                          max_position_embeddings=SEQ_LEN, num_labels=2,
                          hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    body = body_params(config(1024)) - 1024 * HIDDEN
    vocab = max(1024, int((ckpt_mb * 1e6 / 12 - body) / HIDDEN))
    return config(vocab)


def body_params(config) -> int:
    """Parameters of a BERT classifier with this config, counted without building it."""
    h, i, L = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    emb = (config.vocab_size + config.max_position_embeddings + config.type_vocab_size) * h + 2 * h
    layer = 4 * (h * h + h) + 2 * h + (h * i + i) + (i * h + h) + 2 * h
    return emb + L * layer + (h * h + h) + (h * config.num_labels + config.num_labels)


# -- one leg --------------------------------------------------------------------------------
def run_job(R, ctx, label, output_dir, callback) -> dict:
    spec = {"output_dir": output_dir, "callback": callback, "steps": ctx.steps,
            "save_steps": ctx.save_steps, "ckpt_mb": ctx.ckpt_mb, "threads": ctx.threads,
            "seed": 7, "report": os.path.join(ctx.work, "job-report.json")}
    spec_path = os.path.join(ctx.work, "job-spec.json")
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    if os.path.exists(spec["report"]):
        os.unlink(spec["report"])
    wall, _ = R.run([sys.executable, os.path.abspath(__file__), "--_train", spec_path], label,
                    env=ctx.job_env)
    with open(spec["report"]) as f:
        report = json.load(f)
    report["process_s"] = wall
    return report


def leg_local(R, ctx, rep) -> dict:
    out = os.path.join(ctx.work, "local", "run")
    rm(os.path.dirname(out))
    os.makedirs(out)
    job = run_job(R, ctx, f"rep{rep} local train", out, callback=False)
    job["sync_after_s"] = timed_sync()   # what the local leg left dirty, for the record
    return job


def leg_mount(R, ctx, rep, seal_after, callback) -> dict:
    store = os.path.join(ctx.work, "stores", "store")
    mnt = os.path.join(ctx.work, "mnt")
    rm(os.path.dirname(store))
    R.run([sys.executable, "-m", "ckptfs", "init", store], f"rep{rep} init")
    pid = ctx.mounts.ckptfs(ctx.ckptfs_cmd, store, mnt, seal_after)
    cpu0 = proc_cpu_s(pid)
    run = f"run-{rep}"
    try:
        os.makedirs(os.path.join(mnt, "inbox", PROJECT, run))
        job = run_job(R, ctx, f"rep{rep} {'callback' if callback else 'mount'} train",
                      os.path.join(mnt, "inbox", PROJECT, run), callback)
        expected = [f"checkpoint-{s['step']}" for s in job["saves"]]
        job["wait_after_train_s"] = wait_sealed(store, run, expected, timeout=seal_after + 300)
        job["daemon_cpu_s"] = proc_cpu_s(pid) - cpu0
        job["stats"] = read_json(os.path.join(mnt, ".ckptfs", "stats.json"))
    finally:
        ctx.mounts.umount(mnt)
    job["store_bytes"] = bs.du_bytes(store)
    job["seals"] = seal_records(store, run, job["saves"])
    log_copy = os.path.join(ctx.work, "logs", f"mount-rep{rep}-{'callback' if callback else 'mount'}"
                            f"-{seal_after:g}s.log")
    os.replace(os.path.join(store, "logs", "mount.log"), log_copy)
    return job


def wait_sealed(store, run, versions, timeout) -> float:
    """Seconds until each of `versions` has its "sealed" line in the mount log. The line
    comes after the journal entry and after the daemon counted the seal in stats.json."""
    t0 = time.perf_counter()
    while True:
        sealed = set(log_seals(store, run))
        if set(versions) <= sealed:
            return time.perf_counter() - t0
        if time.perf_counter() - t0 > timeout:
            raise BenchError(f"not sealed within {timeout:.0f} s: {sorted(set(versions) - sealed)}")
        time.sleep(WAIT_POLL_S)


def journal_seals(store, run) -> list[dict]:
    out = []
    with open(os.path.join(store, "journal", "journal.jsonl")) as f:
        for line in f:
            e = json.loads(line)
            if e["type"] == "version.sealed" and e["project"] == PROJECT and e["run"] == run:
                out.append(e)
    return out


def log_seals(store, run) -> dict:
    """{version: match of its "sealed" line} from the daemon's log."""
    lines = {}
    with open(os.path.join(store, "logs", "mount.log")) as f:
        for line in f:
            m = SEAL_LINE.match(line)
            if m and m.group(2) == PROJECT and m.group(3) == run:
                lines[m.group(4)] = m
    return lines


def seal_records(store, run, saves) -> list[dict]:
    """Per checkpoint: its save, its journal entry and its log line, and the latencies."""
    journal = {e["version"]: e for e in journal_seals(store, run)}
    lines = log_seals(store, run)
    out = []
    for s in saves:
        v = f"checkpoint-{s['step']}"
        e, m = journal[v], lines[v]
        journal_at = datetime.fromisoformat(e["time"].replace("Z", "+00:00")).timestamp()
        log_at = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        out.append({
            "version": v, "saved_at": s["saved_at"], "journal_at": journal_at, "log_at": log_at,
            "latency_journal_s": journal_at - s["saved_at"],
            "latency_s": log_at - s["saved_at"],
            "files": e["files"], "logical_bytes": e["logical_bytes"],
            "new_stored_bytes": e["new_stored_bytes"], "delta_parent": e["delta_parent"],
            "prepared_ahead": int(m.group(6))})
    return out


def read_json(path):
    with open(path) as f:
        return json.load(f)


def proc_cpu_s(pid) -> float:
    """User + system CPU seconds of a process so far (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_leg(R, ctx, leg, rep) -> dict:
    sync_s = timed_sync()
    log(f"  {leg:<12} ...")
    if leg == "local":
        job = leg_local(R, ctx, rep)
    else:
        seal_after = ctx.short_seal_after if leg == "mount-short" else ctx.seal_after
        job = leg_mount(R, ctx, rep, seal_after, callback=leg == "callback")
        job["seal_after"] = seal_after
    job.update(leg=leg, sync_before_s=sync_s)
    lat = [s["latency_s"] for s in job.get("seals", [])]
    log(f"  {leg:<12} train {job['train_s']:6.2f} s, saves "
        + " ".join(f"{s['save_s']:.2f}" for s in job["saves"]) + " s"
        + (", sealed after " + " ".join(f"{x:.2f}" for x in lat) + " s" if lat else ""))
    return job


# -- summary, targets, tables ---------------------------------------------------------------
def stat(xs) -> dict | None:
    xs = [x for x in xs if x is not None]
    return {"median": median(xs), "min": min(xs), "max": max(xs)} if xs else None


def summarize(result) -> dict:
    out = {}
    for leg in result["legs"]:
        jobs = [r[leg] for r in result["repetitions"]]
        s = {
            "train_s": stat([j["train_s"] for j in jobs]),
            "train_cpu_s": stat([j["train_cpu_s"] for j in jobs]),
            "save_median_s": stat([median([x["save_s"] for x in j["saves"]]) for j in jobs]),
            "save_max_s": stat([max(x["save_s"] for x in j["saves"]) for j in jobs]),
            "checkpoint_mb": median([b for j in jobs for b in j["checkpoint_bytes"].values()]) / 1e6,
            "train_loss": sorted({round(j["train_loss"], 6) for j in jobs}),
        }
        if "local" in result["legs"]:
            s["ratio"] = stat([j["train_s"] / r["local"]["train_s"]
                               for j, r in zip(jobs, result["repetitions"])])
        if leg != "local":
            s.update(seal_after=jobs[0]["seal_after"],
                     latency_median_s=stat([median([x["latency_s"] for x in j["seals"]]) for j in jobs]),
                     latency_max_s=stat([max(x["latency_s"] for x in j["seals"]) for j in jobs]),
                     latency_journal_max_s=stat([max(x["latency_journal_s"] for x in j["seals"])
                                                 for j in jobs]),
                     wait_after_train_s=stat([j["wait_after_train_s"] for j in jobs]),
                     daemon_cpu_s=stat([j["daemon_cpu_s"] for j in jobs]),
                     ingest_s=stat([j["stats"]["ingest_seconds"] for j in jobs]),
                     files_prepared=stat([j["stats"]["files_prepared"] for j in jobs]),
                     files_reused=stat([j["stats"]["files_reused_at_seal"] for j in jobs]),
                     files_sealed=stat([sum(x["files"] for x in j["seals"]) for j in jobs]),
                     delta_coded=stat([sum(bool(x["delta_parent"]) for x in j["seals"]) for j in jobs]),
                     logical_mb=stat([j["stats"]["logical_bytes"] / 1e6 for j in jobs]),
                     stored_mb=stat([j["stats"]["stored_bytes"] / 1e6 for j in jobs]),
                     store_du_mb=stat([j["store_bytes"] / 1e6 for j in jobs]))
        out[leg] = s
    return out


def evaluate_targets(result) -> list[dict]:
    s, reps, targets = result["summary"], result["repetitions"], []
    for leg in result["legs"]:
        if leg == "local":
            continue
        if "local" in s:
            ratio = s[leg]["ratio"]["median"]
            count = sum(r[leg]["train_s"] <= TARGET_TRAIN_RATIO * r["local"]["train_s"] for r in reps)
            targets.append({"name": f"train_ratio_{leg}", "met": ratio <= TARGET_TRAIN_RATIO,
                            "reps_met": count, "text": f"{leg}: train {s[leg]['train_s']['median']:.2f} s "
                            f"<= {TARGET_TRAIN_RATIO} x local {s['local']['train_s']['median']:.2f} s "
                            f"(ratio {ratio:.3f}); held in {count} of {len(reps)}"})
        limit = TARGET_CALLBACK_S if leg == "callback" else s[leg]["seal_after"] + TARGET_QUIET_SLACK_S
        worst = s[leg]["latency_max_s"]["median"]
        count = sum(max(x["latency_s"] for x in r[leg]["seals"]) <= limit for r in reps)
        targets.append({"name": f"seal_latency_{leg}", "met": worst <= limit, "reps_met": count,
                        "text": f"{leg}: every checkpoint sealed within {limit:g} s of its save "
                        f"(slowest {worst:.2f} s, median of the repetitions); held in {count} "
                        f"of {len(reps)}"})
    return targets


def spread(st, spec=".2f", n=2) -> str:
    if st is None:
        return "-"
    if n == 1:
        return format(st["median"], spec)
    return f"{st['median']:{spec}} ({st['min']:{spec}}-{st['max']:{spec}})"


def table(head, rows):
    """Print rows under head, the first column left-aligned, each as wide as it needs."""
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    for i, row in enumerate([head, *rows]):
        log(f"{row[0]:<{widths[0]}}" + "".join(f"  {c:>{w}}" for c, w in zip(row[1:], widths[1:])))
        if i == 0:
            log("-" * (sum(widths) + 2 * (len(widths) - 1)))


def checkpoints_per_run(result, leg) -> list:
    return result["repetitions"][0][leg]["saves"]  # the same in every repetition


def print_tables(result):
    s, n = result["summary"], result["repeat"]
    log()
    log(f"median (min-max) of {n} repetitions" if n > 1 else "one repetition")
    log(bs.describe_source(result["ckptfs_source"]))
    log(f"job: {result['job']['steps']} steps, a checkpoint every {result['job']['save_steps']}, "
        f"{s[result['legs'][0]]['checkpoint_mb']:.1f} MB each, {result['job']['threads']} torch "
        f"thread(s); cpu hogs: {result['cpu_hogs']}")
    legs = result["legs"]
    table(["leg", "quiet s", "train s", "vs local", "save s, median", "save s, max",
           "sealed after s, median", "sealed after s, max"],
          [[leg, bs.fmt(s[leg].get("seal_after"), "g"), spread(s[leg]["train_s"], n=n),
            spread(s[leg].get("ratio"), ".3f", n), spread(s[leg]["save_median_s"], n=n),
            spread(s[leg]["save_max_s"], n=n), spread(s[leg].get("latency_median_s"), n=n),
            spread(s[leg].get("latency_max_s"), n=n)] for leg in legs])
    log()
    table(["leg", "train CPU s", "daemon CPU s", "ingest s", "prepared", "reused", "files",
           "delta-coded", "logical MB", "stored MB", "store du MB"],
          [[leg, spread(s[leg]["train_cpu_s"], n=n)] + (["-"] * 9 if leg == "local" else [
              spread(s[leg]["daemon_cpu_s"], n=n), spread(s[leg]["ingest_s"], n=n),
              f"{s[leg]['files_prepared']['median']:.0f}", f"{s[leg]['files_reused']['median']:.0f}",
              f"{s[leg]['files_sealed']['median']:.0f}",
              f"{s[leg]['delta_coded']['median']:.0f} of {len(checkpoints_per_run(result, leg))}",
              f"{s[leg]['logical_mb']['median']:.1f}",
              f"{s[leg]['stored_mb']['median']:.1f}", f"{s[leg]['store_du_mb']['median']:.1f}"])
           for leg in legs])
    log()
    log("each repetition, legs in the order they ran: train s / slowest seal s")
    for i, r in enumerate(result["repetitions"], 1):
        cells = [f"{leg} {r[leg]['train_s']:.2f}" + (
            f" / {max(x['latency_s'] for x in r[leg]['seals']):.2f}" if leg != "local" else "")
            for leg in r["order"]]
        log(f"  {i}: " + ", ".join(cells))
    losses = {leg: s[leg]["train_loss"] for leg in legs}
    if len({tuple(v) for v in losses.values()}) != 1 or len(next(iter(losses.values()))) != 1:
        log(f"WARNING: the legs did not train the same: train losses {losses}")
    bs.print_targets(result["targets"])
    log()
    log(f"results: {result['json_path']}")


# -- main -----------------------------------------------------------------------------------
def start_hogs(n) -> list:
    return [subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) for _ in range(n)]


def stop_hogs(hogs):
    for p in hogs:
        p.send_signal(signal.SIGTERM)
        p.wait()


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=bs.DEFAULT_WORK, help="scratch directory (default ./bench-out)")
    ap.add_argument("--repeat", type=int, default=3, metavar="N")
    ap.add_argument("--legs", default=",".join(LEGS), help=f"a subset of {','.join(LEGS)}")
    ap.add_argument("--seal-after", type=float, default=5.0, metavar="S",
                    help="quiet period of the mount and callback legs (default 5)")
    ap.add_argument("--short-seal-after", type=float, default=1.0, metavar="S",
                    help="quiet period of the mount-short leg (default 1)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--save-steps", type=int, default=5)
    ap.add_argument("--ckpt-mb", type=float, default=64.0, help="checkpoint size, MB (default 64)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the job (default 1)")
    ap.add_argument("--cpu-hogs", type=int, default=0, metavar="N",
                    help="run N `yes > /dev/null` processes during the whole run")
    ap.add_argument("--_train", metavar="SPEC", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._train:
        return a
    a.legs = [x.strip() for x in a.legs.split(",") if x.strip()]
    if set(a.legs) - set(LEGS) or not a.legs:
        ap.error(f"--legs: choose from {','.join(LEGS)}")
    if a.repeat < 1 or a.steps < a.save_steps:
        ap.error("--repeat must be at least 1, --steps at least --save-steps")
    return a


def main():
    a = parse_args()
    if a._train:
        train_job(a._train)
        return 0
    if os.geteuid() != 0:
        raise BenchError("run as root (it mounts ckptfs and needs /dev/fuse)")
    work = os.path.abspath(a.work)
    for sub in ("mnt", "stores", "local", "logs"):
        p = os.path.join(work, sub)
        if os.path.ismount(p):
            raise BenchError(f"{p} is still mounted: unmount it first")
        rm(p)
    os.makedirs(os.path.join(work, "logs"))
    R = bs.Runner(os.path.join(work, "logs"))
    ctx = bs.Context(
        work=work, steps=a.steps, save_steps=a.save_steps, ckpt_mb=a.ckpt_mb, threads=a.threads,
        seal_after=a.seal_after, short_seal_after=a.short_seal_after, mounts=Mounts(R),
        ckptfs_cmd=os.path.join(work, "ckptfs-cmd"),
        job_env=dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads),
                     HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false"))
    # Mounts.ckptfs runs `CMD mount …`: a one-line wrapper for `python -m ckptfs`.
    with open(ctx.ckptfs_cmd, "w") as f:
        f.write(f'#!/bin/sh\nexec "{sys.executable}" -m ckptfs "$@"\n')
    os.chmod(ctx.ckptfs_cmd, 0o755)
    source = bs.ckptfs_source(ctx.ckptfs_cmd)
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv), "repeat": a.repeat, "legs": a.legs,
        "cpu_hogs": a.cpu_hogs, "machine": bs.machine_info(), "ckptfs_source": source,
        "versions": {"python": sys.version.split()[0], **tool_versions()},
        "job": {"steps": a.steps, "save_steps": a.save_steps, "ckpt_mb": a.ckpt_mb,
                "threads": a.threads, "hidden": HIDDEN, "layers": LAYERS, "seq_len": SEQ_LEN,
                "batch": BATCH},
        "seal_after": a.seal_after, "short_seal_after": a.short_seal_after,
        "json_path": os.path.join(work, "bench_training.json"), "repetitions": [],
    }
    log(bs.describe_source(source))
    hogs = start_hogs(a.cpu_hogs)

    def on_signal(signum, _frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    try:
        for rep in range(a.repeat):
            order = bs.rotate(a.legs, rep)
            log(f"== repetition {rep + 1} of {a.repeat}: {', '.join(order)}")
            r = {"order": order}
            result["repetitions"].append(r)
            for leg in order:
                r[leg] = run_leg(R, ctx, leg, rep)
                with open(result["json_path"], "w") as f:   # partial results survive
                    json.dump(result, f, indent=1)
    finally:
        ctx.mounts.umount_all()
        stop_hogs(hogs)
    result["summary"] = summarize(result)
    result["targets"] = evaluate_targets(result)
    with open(result["json_path"], "w") as f:
        json.dump(result, f, indent=1)
    print_tables(result)
    return 0


def tool_versions() -> dict:
    out = subprocess.run([sys.executable, "-c", "import torch, transformers; "
                          "print(torch.__version__, transformers.__version__)"],
                         stdout=subprocess.PIPE, text=True).stdout.split()
    return {"torch": out[0], "transformers": out[1]} if len(out) == 2 else {}


if __name__ == "__main__":
    bs.run_main(main, "bench_training")
