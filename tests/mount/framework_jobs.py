"""Helpers for test_frameworks.py: run the training scripts of tests/mount/frameworks/ as
subprocesses (two at a time: most of each is Python importing torch), mount a store for
one scenario, wait for versions by polling, and read versions back from projects/."""
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field

from tests.helpers.cli import run_cli_checked
from tests.helpers.mounts import unmount

from ckptfs.store import Store

SCRIPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "frameworks")
sys.path.insert(0, SCRIPTS)
from hashing import sha256_file, state_sha256  # noqa: E402,F401  (for test_frameworks)
SEAL_TIMEOUT = 60.0   # for a version to appear under projects/ once its writer is done
JOB_TIMEOUT = 240.0   # for one training script (a few seconds when the machine is idle)
ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
       "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
       "TRANSFORMERS_VERBOSITY": "warning"}


@dataclass
class Done:
    """A finished training script."""
    name: str
    argv: list
    returncode: int
    stdout: str
    stderr: str
    report: dict | None
    seconds: float

    def describe(self) -> str:
        tail = "\n".join(self.stderr.splitlines()[-25:])
        return f"job {self.name} ({' '.join(self.argv)}): exit {self.returncode}\n{tail}"


@dataclass
class Job:
    """A training script to run: `script` with --output-dir and --report, plus `args`."""
    name: str
    script: str
    output_dir: str
    args: list = field(default_factory=list)


def run_jobs(workdir: str, *jobs: Job) -> dict[str, Done]:
    """Run the jobs at the same time (give at most two: the machine has two cores) and
    wait for all of them; {name: Done}. Reports go to `workdir`, outside every output
    directory; so do stdout and stderr."""
    running = []
    for job in jobs:
        report = os.path.join(workdir, f"{job.name}.report.json")
        argv = [sys.executable, os.path.join(SCRIPTS, job.script), "--output-dir",
                job.output_dir, "--report", report, *map(str, job.args)]
        out = open(os.path.join(workdir, f"{job.name}.stdout"), "w+")
        err = open(os.path.join(workdir, f"{job.name}.stderr"), "w+")
        proc = subprocess.Popen(argv, cwd=workdir, stdout=out, stderr=err,
                                env={**os.environ, **ENV})
        running.append((job, argv, report, out, err, proc, time.monotonic()))
    done = {}
    for job, argv, report, out, err, proc, started in running:
        try:
            proc.wait(JOB_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        seconds = time.monotonic() - started
        texts = []
        for f in (out, err):
            f.seek(0)
            texts.append(f.read())
            f.close()
        loaded = None
        if os.path.exists(report):
            with open(report) as f:
                loaded = json.load(f)
        done[job.name] = Done(job.name, argv[1:], proc.returncode, *texts, loaded, seconds)
    return done


def wait_for(predicate, timeout: float):
    """Poll `predicate` until it returns something true (returned) or `timeout` passes
    (None)."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            return None
        time.sleep(0.1)


class Scenario:
    """One store, mounted with a 1 s quiet period while in a `with` block, and a local
    directory for the reference runs; what went wrong while driving the jobs is kept in
    `problems` (the tests report it) instead of failing the module fixture. `config`:
    {project: ["key=value", …]} set with `ckptfs config set` before mounting."""

    def __init__(self, tmp_path_factory, name: str, seal_after: str = "1",
                 config: dict | None = None):
        self.root = str(tmp_path_factory.mktemp(name))
        self.store = os.path.join(self.root, "store")
        self.mnt = os.path.join(self.root, "mnt")
        self.local_root = os.path.join(self.root, "local")
        self.work = os.path.join(self.root, "work")
        for d in (self.mnt, self.local_root, self.work):
            os.makedirs(d)
        Store.init(self.store).close()
        self.jobs: dict[str, Done] = {}
        self.problems: list[str] = []
        self.seal_after = seal_after
        for project, settings in (config or {}).items():
            run_cli_checked("config", "set", self.store, project, *settings)

    def __enter__(self):
        run_cli_checked("mount", self.store, self.mnt, "--seal-after", self.seal_after)
        return self

    def __exit__(self, *exc):
        unmount(self.mnt)

    def inbox(self, *parts) -> str:
        return os.path.join(self.mnt, "inbox", *parts)

    def projects(self, *parts) -> str:
        return os.path.join(self.mnt, "projects", *parts)

    def local(self, name: str) -> str:
        return os.path.join(self.local_root, name)

    def run(self, *jobs: Job) -> dict[str, Done]:
        done = run_jobs(self.work, *jobs)
        self.jobs.update(done)
        return done

    def wait_versions(self, *refs: str, timeout: float = SEAL_TIMEOUT) -> bool:
        """Wait (one deadline for all) for each p/r/v to be sealed: its sidecar readable
        under projects/. False, with a problem noted, if one did not come."""
        deadline = time.monotonic() + timeout
        for ref in refs:
            path = self.projects(ref + ".json")
            if not wait_for(lambda: os.path.isfile(path), max(0.0, deadline - time.monotonic())):
                self.problems.append(f"{ref} was not sealed within {timeout:.0f} s")
                return False
        return True

    def settle(self, timeout: float = SEAL_TIMEOUT) -> bool:
        """Wait until the mount has nothing pending in the inbox (.ckptfs/stats.json)."""
        def nothing_pending():
            try:
                with open(os.path.join(self.mnt, ".ckptfs", "stats.json")) as f:
                    return json.load(f).get("pending_inbox_versions") == []
            except (OSError, ValueError):
                return False
        if wait_for(nothing_pending, timeout):
            return True
        self.problems.append(f"inbox versions still pending after {timeout:.0f} s: "
                             f"{run_cli_checked('status', self.mnt, rc=None).stdout.decode()}")
        return False

    def ok(self, *names: str, rc: int = 0) -> bool:
        """Each job ran and ended with `rc` and its report (else waiting for what it should
        have written would only take the whole timeout)."""
        return all(n in self.jobs and self.jobs[n].returncode == rc and self.jobs[n].report
                   for n in names)

    def run_then_resume(self, script: str, project: str, run: str, first: list, resume: list,
                        first_versions=(), resumed_versions=()):
        """`script` run to local/<project> (the reference, job `ref`) and, at the same
        time, into inbox/<project>/<run> with `first` (job `a`); once that is sealed,
        again into the same run with `resume` (job `b`)."""
        self.run(Job("ref", script, self.local(project)),
                 Job("a", script, self.inbox(project, run), first))
        if self.ok("a"):
            self.wait_versions(*first_versions)
        self.settle()
        self.run(Job("b", script, self.inbox(project, run), resume))
        if self.ok("b"):
            self.wait_versions(*resumed_versions)
        self.settle()

    def job(self, name: str) -> Done:
        """The finished job `name`; fails the test if it never ran."""
        assert name in self.jobs, f"job {name} never ran: {self.problems}"
        return self.jobs[name]

    def report(self, name: str) -> dict:
        """The report of job `name`; fails the test if the job wrote none."""
        done = self.job(name)
        assert done.report is not None, f"{name} wrote no report\n{done.describe()}"
        return done.report

    # -- reading what was archived -------------------------------------------------------
    def versions(self, project: str, run: str) -> list[str]:
        """The version directories of a run under projects/ (no aliases, no sidecars)."""
        where = self.projects(project, run)
        if not os.path.isdir(where):
            return []
        return sorted(n for n in os.listdir(where)
                      if os.path.isdir(os.path.join(where, n))
                      and not os.path.islink(os.path.join(where, n)))

    def sidecar(self, ref: str) -> dict:
        path = self.projects(ref + ".json")
        assert os.path.isfile(path), (
            f"{ref} is not archived; the run has {self.versions(*ref.split('/')[:2])}; "
            f"problems: {self.problems}")
        with open(path) as f:
            return json.load(f)

    def archived_files(self, ref: str) -> dict[str, str]:
        """{path: sha256} of the version's files as read back from projects/, checked
        against its sidecar: the same paths, the same sha256."""
        root = self.projects(ref)
        listed = {f["path"]: f["sha256"] for f in self.sidecar(ref)["files"]}
        read_back = {}
        for dirpath, _, filenames in os.walk(root):
            for name in filenames:
                full = os.path.join(dirpath, name)
                read_back[os.path.relpath(full, root)] = sha256_file(full)
        assert read_back == listed, f"{ref}: the files read back differ from its sidecar"
        return read_back


def ref_of(entry) -> str | None:
    """'p/r/v' of a lineage reference ({project, run, version} or a 'p/r/v' string)."""
    if not entry:
        return None
    if isinstance(entry, str):
        return entry
    return f"{entry.get('project')}/{entry.get('run')}/{entry.get('version')}"


def parent_of(sidecar: dict) -> str | None:
    return ref_of((sidecar.get("lineage") or {}).get("parent"))


def inputs_of(sidecar: dict) -> set[str]:
    return {ref_of(e) for e in (sidecar.get("lineage") or {}).get("inputs") or []}


def suffix_number(name: str, base: str) -> int | None:
    """1 for `base`, n for `base~n`, None for any other name."""
    m = re.fullmatch(re.escape(base) + r"(?:~(\d+))?", name)
    if not m:
        return None
    return int(m.group(1) or 1)


def renamed(versions, base: str) -> list[str]:
    """`base`, `base~2`, … among `versions`, in that order."""
    found = [(suffix_number(v, base), v) for v in versions]
    return [v for n, v in sorted(x for x in found if x[0] is not None)]
