"""The encoder threads of a process, shared by every file being ingested at once.

An import's files and the mount's streams (stream.py) all encode on one pool of threads,
one per core unless CKPTFS_INGEST_WORKERS says otherwise, with one budget of chunks in
flight (read and not yet written): the memory an ingest holds does not grow with the
number of files it takes at once. Ingest threads run at a lower CPU priority, so that a
writer the mount follows, and the daemon's file-system calls, go first.
"""
import os
import threading
from concurrent.futures import ThreadPoolExecutor

WORKERS_VARIABLE = "CKPTFS_INGEST_WORKERS"  # encoder threads (default: one per core)
INFLIGHT_PER_WORKER = 2  # chunks read and not yet written, per encoder, for the whole process


def ingest_workers() -> int:
    """Encoder threads of this process: CKPTFS_INGEST_WORKERS, else one per core."""
    try:
        wanted = int(os.environ.get(WORKERS_VARIABLE, "0"))
    except ValueError:
        wanted = 0
    return wanted if wanted > 0 else (os.cpu_count() or 2)


BACKGROUND_NICE = 10  # ingest threads run at this niceness: a writer they follow comes first


def yield_to_others() -> None:
    """Lower the calling thread's CPU priority (Linux: niceness is per thread). The
    mount ingests behind a writer: on a machine with few cores, the writer and the
    daemon's file-system calls go first, and the ingest uses what they leave."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)
    except (OSError, AttributeError):
        pass


class EncoderPool:
    """The process's encoder threads and its budget of chunks in flight, shared by every
    file being ingested at once (an import's files, the mount's streams): memory stays
    bounded by the budget however many files are ingested together."""
    _shared: "EncoderPool | None" = None
    _shared_lock = threading.Lock()

    def __init__(self, workers: int):
        self.workers = workers
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix="ckptfs-encode",
                                           initializer=yield_to_others)
        self.budget = threading.Semaphore(INFLIGHT_PER_WORKER * workers + 2)

    @classmethod
    def shared(cls) -> "EncoderPool":
        with cls._shared_lock:
            if cls._shared is None or cls._shared.workers != ingest_workers():
                cls._shared = cls(ingest_workers())
            return cls._shared

    @classmethod
    def _forget_in_child(cls) -> None:
        """After fork(): the parent's encoder threads do not exist in the child, so a task
        given to them would never run. The child makes its own pool when it needs one."""
        cls._shared = None
        cls._shared_lock = threading.Lock()

    def submit(self, fn, *args):
        return self.executor.submit(fn, *args)


os.register_at_fork(after_in_child=EncoderPool._forget_in_child)
