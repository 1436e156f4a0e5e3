"""The journal: a hash-chained, append-only event log (`STORE/journal/journal.jsonl`).

One JSON object per line. Each entry carries `seq` (1, 2, …), `time` (UTC), `type`,
`uid`, `pid`, the event's own fields, and `prev`: the SHA-256 of the previous line's
bytes (64 zeros for the first). Together with the packs it is the store's truth: the
LMDB index is rebuilt from the two.

Writers take an exclusive flock on `journal/lock` for the whole commit (check, append,
index update), which serialises commits between threads and processes.
"""
import fcntl
import hashlib
import json
import os
import threading
from contextlib import contextmanager
from datetime import datetime, timezone

from .errors import IntegrityError

GENESIS = "0" * 64


def entry_hash(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def encode_entry(entry: dict) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


class Journal:
    def __init__(self, journal_dir: str):
        self.dir = journal_dir
        self.path = os.path.join(journal_dir, "journal.jsonl")
        self.lock_path = os.path.join(journal_dir, "lock")
        self._thread_lock = threading.Lock()  # flock does not exclude threads of one process

    @contextmanager
    def locked(self):
        with self._thread_lock:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # releases the flock

    def _tail(self) -> tuple[int, str, int]:
        """(last seq, hash of last line, length of the valid journal).

        A last line without its newline is a torn append from a crash: it never
        committed, so it is not part of the journal (and is cut off by the next append).
        """
        try:
            size = os.path.getsize(self.path)
        except FileNotFoundError:
            return 0, GENESIS, 0
        if size == 0:
            return 0, GENESIS, 0
        with open(self.path, "rb") as f:
            window = 1 << 16
            while True:
                start = max(0, size - window)
                f.seek(start)
                data = f.read(size - start)
                end = data.rfind(b"\n")
                if end < 0:
                    if start == 0:
                        return 0, GENESIS, 0
                    window *= 4
                    continue
                begin = data.rfind(b"\n", 0, end) + 1
                if begin == 0 and start > 0:
                    window *= 4
                    continue
                line = data[begin:end]
                entry = json.loads(line)
                return entry["seq"], entry_hash(line), start + end + 1

    def append(self, event: dict) -> dict:
        """Append one event; the caller holds `locked()`. Durable when this returns."""
        seq, prev, valid_len = self._tail()
        entry = dict(event)
        entry.update(seq=seq + 1, prev=prev, time=utc_now(), uid=os.getuid(), pid=os.getpid())
        line = encode_entry(entry) + b"\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size != valid_len:
                os.ftruncate(fd, valid_len)
            try:
                os.pwrite(fd, line, valid_len)
                os.fsync(fd)
            except OSError:
                os.ftruncate(fd, valid_len)  # never leave half an entry behind
                raise
        finally:
            os.close(fd)
        self._last_append = (entry_hash(line[:-1]), valid_len)
        return entry

    def rollback(self, entry: dict) -> None:
        """Remove `entry`, the last one this process appended, while still holding the lock:
        used when the commit that wrote it could not finish (e.g. the index hit a full disk)."""
        last_hash, offset = getattr(self, "_last_append", (None, None))
        if last_hash != entry_hash(encode_entry(entry)):
            raise RuntimeError("rollback of an entry that was not the last one appended")
        fd = os.open(self.path, os.O_WRONLY)
        try:
            os.ftruncate(fd, offset)
            os.fsync(fd)
        finally:
            os.close(fd)
        self._last_append = (None, None)

    def last_seq(self) -> int:
        return self._tail()[0]

    def entries(self, after_seq: int = 0, verify_chain: bool = True):
        """Yield entries with seq > after_seq, checking the hash chain as it goes."""
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            return
        with f:
            prev = GENESIS
            for number, line in enumerate(f, 1):
                if not line.endswith(b"\n"):
                    return  # torn tail: never committed
                line = line[:-1]
                try:
                    entry = json.loads(line)
                except ValueError:
                    raise IntegrityError(f"journal line {number} is not valid JSON") from None
                if verify_chain and entry.get("prev") != prev:
                    raise IntegrityError(
                        f"journal line {number} (seq {entry.get('seq')}) does not follow "
                        "the previous entry: the journal was altered")
                prev = entry_hash(line)
                if entry["seq"] > after_seq:
                    yield entry
