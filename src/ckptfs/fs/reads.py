"""Lineage without instrumentation: which archived versions each process read.

The mount sees every `open` of a sealed file (under `projects/` or in a run's working
view) with the caller's pid. A process that loads a version's weights and later writes
a new version through the inbox made that version from those weights: its
`lineage.parent` is the version it loaded (a resume from `checkpoint-10`, a fine-tune's
`from_pretrained` base), and `lineage.inputs` lists every archived version it read
before writing. Reads are kept in memory for the processes alive; a daemon restart
between the read and the write forgets them (the parent then defaults to the run's
previous checkpoint, as without this).
"""
import time
from dataclasses import dataclass, field

from ckptfs.meta.layout import is_weights

# Files a checkpoint holds that are not its model (reading them is not loading weights).
NOT_MODEL_WEIGHTS = ("training_args.bin", "scheduler.", "scaler.", "sampler", "rng_state",
                     "random_states", "custom_checkpoint")
MAX_PROCESSES = 4096
MAX_VERSIONS_PER_PROCESS = 1024
ANCESTORS = 8


def _stat_fields(pid: int) -> list[bytes] | None:
    """The fields of /proc/<pid>/stat after the command name (None if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        return data[data.rindex(b")") + 2:].split()
    except (OSError, ValueError):
        return None


def process_start(pid: int) -> int | None:
    """The start time of process `pid` (clock ticks since boot), None if it is gone: with
    the pid, it names one process (pids are reused)."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields and len(fields) > 19 else None


def parent_pid(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[1]) if fields and len(fields) > 1 else None


def process_chain(pid: int) -> list[tuple[int, int]]:
    """(pid, start) of a process and its ancestors, nearest first (init left out)."""
    chain = []
    while pid and pid > 1 and len(chain) <= ANCESTORS:
        start = process_start(pid)
        if start is None:
            break
        chain.append((pid, start))
        pid = parent_pid(pid)
    return chain


def is_model_weights(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return is_weights(name) and not name.startswith(NOT_MODEL_WEIGHTS)


MAX_WEIGHT_READS = 64


@dataclass
class VersionRead:
    first: float                 # monotonic time of the first read of any of its files
    weights: list = field(default_factory=list)  # times its weights files were opened

    def last_weights_read(self, after: float, until: float) -> float | None:
        within = [t for t in self.weights if after < t <= until]
        return within[-1] if within else None


@dataclass
class ProcessReads:
    start: int
    versions: dict = field(default_factory=dict)   # (p, r, v) -> VersionRead
    last_seen: float = 0.0


class ReadTracker:
    def __init__(self):
        self._processes: dict[int, ProcessReads] = {}

    def note(self, pid: int, version: tuple, path: str) -> None:
        """Process `pid` opened file `path` of sealed version (p, r, v)."""
        now = time.monotonic()
        reads = self._processes.get(pid)
        if reads is None:
            start = process_start(pid)
            if start is None:
                return
            if len(self._processes) >= MAX_PROCESSES:
                self.forget_dead()
            reads = self._processes[pid] = ProcessReads(start)
        reads.last_seen = now
        seen = reads.versions.get(version)
        if seen is None:
            if len(reads.versions) >= MAX_VERSIONS_PER_PROCESS:
                return
            seen = reads.versions[version] = VersionRead(now)
        if is_model_weights(path):
            seen.weights.append(now)
            del seen.weights[:-MAX_WEIGHT_READS]

    def forget_dead(self) -> None:
        """Drop what processes that have exited (or whose pid was reused) read."""
        for pid, reads in list(self._processes.items()):
            if process_start(pid) != reads.start:
                del self._processes[pid]
        while len(self._processes) >= MAX_PROCESSES:  # still full: the least recent go
            oldest = min(self._processes, key=lambda p: self._processes[p].last_seen)
            del self._processes[oldest]

    def lineage(self, chain: list[tuple[int, int]], since: float, until: float,
                itself: tuple) -> tuple[tuple | None, list[tuple]]:
        """(parent, inputs) of a version whose writer and its ancestors are `chain`,
        first written at `until`; `since`: when the same writer began its previous
        version in the run. The parent is the version whose weights it read last in
        between (none: the caller's default); inputs, every version it read before."""
        parent, parent_time, inputs = None, since, {}
        for pid, start in chain:
            reads = self._processes.get(pid)
            if reads is None or reads.start != start:
                continue
            for version, seen in reads.versions.items():
                if version == itself or seen.first > until:
                    continue
                inputs[version] = min(seen.first, inputs.get(version, seen.first))
                loaded = seen.last_weights_read(parent_time, until)
                if loaded is not None:
                    parent, parent_time = version, loaded
        return parent, sorted(inputs, key=inputs.get)
