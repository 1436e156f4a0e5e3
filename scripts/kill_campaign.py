#!/usr/bin/env python3
"""Kill campaign: SIGKILL the mount daemon at random moments and check that nothing is
lost and nothing is sealed twice (not part of the test suite; docs/mount.md, "Stopping
and recovery").

Each round mounts the store, writes the next checkpoint directory into the inbox
(inbox/p/r/ckpt-<i>/: a safetensors file of 1-6 MB and a config.json), and kills the
daemon at one of these moments, chosen at random:

  write    part-way through writing the checkpoint
  seal     once a seal's intent appears in spool/sealing/, after a random short delay
  commit   the instant the journal grows (a seal committed, its clean-up not done)
  idle     a random delay after the checkpoint was written (prepare, seal, or nothing)

Then it recovers as docs/mount.md says: `ckptfs umount` (or `ckptfs mount` straight onto
the dead mount), mount again, rewrite a checkpoint whose writing was cut short (as a
resumed job would), `ckptfs seal` a complete one that waits held. At the end every
checkpoint must be sealed exactly once (no `ckpt-<i>~2`), with the bytes written,
nothing may wait in the inbox, held or failed, and `ckptfs verify` must pass.

    PYTHONPATH=src python scripts/kill_campaign.py --kills 84 [--seed N] [--keep DIR]
"""
import argparse
import collections
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

CHUNK = 256 << 10
DEADLINE = 60.0


def ckptfs(*args, check=True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "ckptfs", *map(str, args)],
                          capture_output=True, text=True)
    if "Traceback" in done.stderr:
        raise SystemExit(f"ckptfs {' '.join(map(str, args))}: traceback\n{done.stderr}")
    if check and done.returncode:
        raise SystemExit(f"ckptfs {' '.join(map(str, args))} failed: {done.stderr.strip()}")
    return done


def wait_for(predicate, what: str, timeout: float = DEADLINE, pause: float = 0.002):
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up waiting for {what}")
        time.sleep(pause)
    return result


def checkpoint_files(i: int) -> dict[str, bytes]:
    """What checkpoint i holds: the same bytes whenever it is (re)written."""
    rng = random.Random(i)
    size = rng.randint(1 << 20, 6 << 20)
    header = json.dumps({"w": {"dtype": "U8", "shape": [size], "data_offsets": [0, size]}})
    header = header.encode().ljust((len(header) + 7) // 8 * 8)
    weights = len(header).to_bytes(8, "little") + header + rng.randbytes(size)
    return {"model.safetensors": weights, "config.json": json.dumps({"step": i}).encode()}


class Campaign:
    def __init__(self, work: str, seed: int):
        self.rng = random.Random(seed)
        self.store = os.path.join(work, "store")
        self.mnt = os.path.join(work, "mnt")
        os.mkdir(self.mnt)
        ckptfs("init", self.store)
        self.pid = None
        self.next_ckpt = 0
        self.cut_short: set[int] = set()   # writing interrupted: the job writes it again
        self.written: set[int] = set()     # written completely
        self.figures = collections.Counter()

    # -- the daemon ---------------------------------------------------------------------
    def mount(self):
        said = ckptfs("mount", self.store, self.mnt, "--seal-after", "0.3").stdout
        if "detached the dead mount" in said:
            self.figures["remounts onto the dead mount"] += 1
        self.pid = int(re.search(r"daemon pid (\d+)", said).group(1))

    def kill(self, mode: str):
        os.kill(self.pid, signal.SIGKILL)
        sealing = os.listdir(os.path.join(self.store, "spool", "sealing")) \
            if os.path.isdir(os.path.join(self.store, "spool", "sealing")) else []
        self.figures[f"kills: {mode}"] += 1
        if sealing:
            self.figures["kills with a seal under way (intent in spool/sealing)"] += 1
        wait_for(lambda: self._gone(self.pid), "the daemon to die")

    @staticmethod
    def _gone(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] == "Z"
        except FileNotFoundError:
            return True

    def recover(self):
        if self.rng.random() < 0.5:
            ckptfs("umount", self.mnt)
        self.mount()
        status = ckptfs("status", self.mnt).stdout
        if "failed" in status:
            raise SystemExit(f"a unit failed after the restart:\n{status}")
        self.figures["held after a restart"] += status.count(": held")
        for i in sorted(self.written):
            if f"p/r/ckpt-{i}: held" in status:
                ckptfs("seal", self.store, f"p/r/ckpt-{i}", "--timeout", "60")
                self.figures["held and complete: sealed with ckptfs seal"] += 1
        for i in sorted(self.cut_short):  # a resumed job writes it again
            if not self.write(i):
                raise SystemExit(f"rewriting ckpt-{i} failed with the daemon alive")
            self.figures["cut short: written again"] += 1

    # -- the job ------------------------------------------------------------------------
    def write(self, i: int, stop_after: int | None = None) -> bool:
        """Write checkpoint i; with `stop_after`, kill the daemon once that many bytes
        went out. True if it was written completely."""
        where = os.path.join(self.mnt, "inbox", "p", "r", f"ckpt-{i}")
        sent = 0
        try:
            os.makedirs(where, exist_ok=True)
            for name, data in checkpoint_files(i).items():
                with open(os.path.join(where, name), "wb") as f:
                    for start in range(0, len(data), CHUNK):
                        if stop_after is not None and sent >= stop_after:
                            self.kill("write")
                            stop_after = None
                        f.write(data[start:start + CHUNK])
                        f.flush()
                        sent += min(CHUNK, len(data) - start)
        except OSError:
            self.cut_short.add(i)
            self.written.discard(i)
            return False
        self.written.add(i)
        self.cut_short.discard(i)
        return True

    def round(self):
        i = self.next_ckpt
        self.next_ckpt += 1
        mode = self.rng.choice(["write", "seal", "seal", "commit", "idle"])
        if mode == "write":
            total = sum(map(len, checkpoint_files(i).values()))
            self.write(i, stop_after=self.rng.randrange(total))
        else:
            if not self.write(i):
                raise SystemExit(f"writing ckpt-{i} failed with the daemon alive")
            self.kill_later(mode)
        self.recover()

    def kill_later(self, mode: str):
        sealing = os.path.join(self.store, "spool", "sealing")
        journal = os.path.join(self.store, "journal", "journal.jsonl")
        if mode == "seal":
            wait_for(lambda: os.path.isdir(sealing) and os.listdir(sealing), "a seal to begin")
            time.sleep(self.rng.uniform(0, 0.15))
        elif mode == "commit":
            size = os.path.getsize(journal)
            # Spin: the clean-up after the commit takes well under a millisecond.
            wait_for(lambda: os.path.getsize(journal) > size, "a commit", pause=0)
        else:
            time.sleep(self.rng.uniform(0, 1.5))
        self.kill(mode)

    # -- the verdict ----------------------------------------------------------------------
    def finish(self) -> list[str]:
        for i in sorted(self.written):
            if f"p/r/ckpt-{i}: held" in ckptfs("status", self.mnt).stdout:
                ckptfs("seal", self.store, f"p/r/ckpt-{i}", "--timeout", "60")
        wait_for(lambda: "nothing waits in the inbox" in ckptfs("status", self.mnt).stdout,
                 "the inbox to empty", 120)
        ckptfs("umount", self.mnt)
        wait_for(lambda: not os.path.exists(os.path.join(self.store, "spool", "daemon.running")),
                 "the daemon to stop")
        with open(os.path.join(self.store, "logs", "mount.log"), errors="replace") as f:
            log = f.read()
        self.figures["seals committed, cleaned up by the next start"] = \
            log.count("finished the clean-up of")
        self.figures["restarts after a kill mid-prepare: unfinished packs removed"] = \
            log.count("unfinished pack(s) left by the daemon that died")
        return self.problems()

    def problems(self) -> list[str]:
        found = []
        versions = ckptfs("ls", self.store, "p/r").stdout.split()
        expected = {f"ckpt-{i}" for i in range(self.next_ckpt)}
        if sorted(versions) != sorted(expected):
            found.append(f"versions {sorted(set(versions) ^ expected)} unexpected or missing")
        out = os.path.join(os.path.dirname(self.store), "out")
        for i in range(self.next_ckpt):
            if f"ckpt-{i}" not in versions:
                continue
            target = os.path.join(out, str(i))
            ckptfs("get", self.store, f"p/r/ckpt-{i}", target)
            for name, data in checkpoint_files(i).items():
                with open(os.path.join(target, name), "rb") as f:
                    if f.read() != data:
                        found.append(f"ckpt-{i}/{name}: bytes differ")
            shutil.rmtree(target)
        verified = ckptfs("verify", self.store, check=False)
        if verified.returncode:
            found.append(f"verify: {verified.stdout.strip()} {verified.stderr.strip()}")
        return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=84)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--keep", help="work here (kept) instead of a temporary directory")
    args = parser.parse_args()
    work = args.keep or tempfile.mkdtemp(prefix="kill-campaign-")
    os.makedirs(work, exist_ok=True)
    campaign = Campaign(work, args.seed)
    started = time.monotonic()
    try:
        campaign.mount()
        for n in range(args.kills):
            campaign.round()
            print(f"kill {n + 1}/{args.kills}", end="\r", flush=True, file=sys.stderr)
        problems = campaign.finish()
    finally:
        subprocess.run(["umount", "-l", campaign.mnt], capture_output=True)
    print(f"seed {args.seed}: {args.kills} kills, {campaign.next_ckpt} checkpoints, "
          f"{time.monotonic() - started:.0f} s")
    for what, count in sorted(campaign.figures.items()):
        print(f"  {what}: {count}")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    if not args.keep and not problems:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
