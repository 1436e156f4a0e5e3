"""The journal of a store on object storage: one object per entry (`S3JournalLog`).

Entry `seq` is the object `journal/entries/<seq, 20 digits>.json` holding its line,
created with put-if-absent (`If-None-Match: *`): two machines can never take one seq,
the one refused catches up and tries the next (the Delta Lake protocol's commit), and
the fixed width makes a listing come in seq order, so `StartAfter` lists only what is
new. Entries k*SEGMENT+1 … (k+1)*SEGMENT are also kept together as one object,
`journal/segments/<first>-<last>.jsonl`, so that a machine with a new cache reads a
long journal in few requests. A PUT whose reply was lost is resolved by reading the
entry back: the same bytes (each entry has a random nonce) are this writer's.
"""
import fcntl
import os
import re
import threading
from contextlib import contextmanager

from .backend import (
    BackendUnavailableError,
    JournalLog,
    ObjectExistsError,
    ObjectMissingError,
    SeqTakenError,
)
from .errors import IntegrityError, StoreError
from .private import make_private_dirs, private_open

SEGMENT = 1000  # journal entries per segment object
# A journal PUT whose reply was lost and that is not there when read back is sent
# again, this many times in all.
JOURNAL_PUT_TRIES = 3
ENTRIES_DIR = "journal/entries"
SEGMENTS_DIR = "journal/segments"
JOURNAL_LOCK_FILE = "journal.lock"

_ENTRY_RE = re.compile(r"^(\d{20})\.json$")
_SEGMENT_RE = re.compile(r"^(\d{20})-(\d{20})\.jsonl$")


def entry_name(seq: int) -> str:
    return f"{ENTRIES_DIR}/{seq:020d}.json"


def segment_name(first: int, last: int) -> str:
    return f"{SEGMENTS_DIR}/{first:020d}-{last:020d}.jsonl"


class S3JournalLog(JournalLog):
    """The journal's entries as objects of an `S3Backend` (module docstring);
    `local_dir`: the machine's directory of the store, where the lock file is."""

    wants_nonce = True

    def __init__(self, backend, local_dir: str | None = None):
        self._backend = backend
        self.location = f"{backend.location}/{ENTRIES_DIR}"
        self._root = backend.key(ENTRIES_DIR) + "/"
        self._segment_root = backend.key(SEGMENTS_DIR) + "/"
        self._lock_path = os.path.join(local_dir, JOURNAL_LOCK_FILE) if local_dir else None
        self._thread_lock = threading.Lock()
        self._known: tuple[int, str | None, bytes] | None = None  # (seq, ETag, line) of the last
        self._appended: tuple[int, str | None, bytes] | None = None  # what this log appended last

    @contextmanager
    def locked(self):
        """This process's threads, and this machine's processes (flock on a file in its
        local directory), one at a time; other machines are kept apart by the
        conditional create of each entry, not by a lock."""
        with self._thread_lock:
            if self._lock_path is None:
                yield
                return
            make_private_dirs(os.path.dirname(self._lock_path))
            fd = private_open(self._lock_path, os.O_RDWR | os.O_CREAT)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    # -- the end of the journal ----------------------------------------------------------
    def last(self) -> bytes | None:
        known = self._known
        for start in self._last_search_starts(known):
            newest = None
            for newest in self._listed(start):
                pass
            if newest is not None:
                break
        else:
            self._known = None
            return None
        if known is not None and known[:2] == newest:
            return known[2]  # listed with the same ETag: the entry it knew
        line = self._backend.get(entry_name(newest[0]))
        self._known = (*newest, line)
        return line

    def _last_search_starts(self, known):
        """After which seqs to list for the last entry: just before the one this log
        knows (listed too, to see it is still there: a writer may take its entry back),
        else before the last segment's end, and from the start if those are gone."""
        if known is not None:
            yield known[0] - 1
        ends = self._segment_ends(0)
        if ends:
            yield ends[-1] - 1
        yield 0

    def _listed(self, after_seq: int = 0):
        """(seq, ETag) of the entries after `after_seq`, in seq order, as listed."""
        for item in self._backend.list_keys(self._root, self._start_key(after_seq)):
            match = _ENTRY_RE.match(item["Key"][len(self._root):])
            if match:
                yield int(match[1]), item.get("ETag")

    def _start_key(self, after_seq: int) -> str | None:
        """Where a listing of the entries after `after_seq` starts (after that key)."""
        return self._backend.key(entry_name(after_seq)) if after_seq > 0 else None

    # -- appending -----------------------------------------------------------------------
    def append(self, seq: int, line: bytes) -> None:
        etag = self._create_entry(seq, line)
        self._known = self._appended = (seq, etag, line)
        if seq % SEGMENT == 0:
            self._write_segment_quietly(seq - SEGMENT + 1, seq)

    def _create_entry(self, seq: int, line: bytes) -> str | None:
        """Create entry `seq`; its ETag (None: unknown). A lost reply is resolved by
        reading the entry back."""
        name = entry_name(seq)
        for _try in range(JOURNAL_PUT_TRIES):
            try:
                return self._backend.create(name, line)
            except ObjectExistsError:
                if self._stored(name) == line:
                    return None  # ours: an earlier try of this PUT made it
                raise SeqTakenError(f"journal entry {seq} exists in {self.location}") from None
            except BackendUnavailableError:
                stored = self._stored(name)  # unreachable still: that error goes up
                if stored == line:
                    return None
                if stored is not None:
                    raise SeqTakenError(
                        f"journal entry {seq} exists in {self.location}") from None
                # not there: the PUT never arrived; send it again
        raise self._backend.unavailable(f"journal entry {seq} could not be stored")

    def _stored(self, name: str) -> bytes | None:
        try:
            return self._backend.get(name)
        except ObjectMissingError:
            return None

    def remove_last(self, seq: int) -> None:
        if self._appended is None or self._appended[0] != seq:
            raise RuntimeError("rollback of an entry that was not the last one appended")
        _seq, _etag, line = self._appended
        self._refuse_if_followed(seq)
        if seq % SEGMENT == 0:
            self._backend.delete(segment_name(seq - SEGMENT + 1, seq))
        self._backend.delete(entry_name(seq))
        self._appended = self._known = None
        try:
            self._refuse_if_followed(seq)
        except StoreError:
            # Another writer appended after the entry while it was being removed: put it
            # back, or that writer's entry would follow nothing.
            self._backend.put_if_absent(entry_name(seq), line)
            raise

    def _refuse_if_followed(self, seq: int) -> None:
        for later, _etag in self._listed(seq):
            raise StoreError(
                f"journal entry {seq} cannot be taken back: another writer has appended "
                f"entry {later} after it in {self.location}; the entry stays, and the "
                "index applies it when it next catches up")

    # -- reading -------------------------------------------------------------------------
    def lines(self, after_seq: int = 0):
        covered = after_seq
        for first, segment_lines in self._segments_from(after_seq):
            for seq, line in enumerate(segment_lines, first):
                if seq > after_seq:
                    yield line
            covered = first + len(segment_lines) - 1
        yield from self._entries_after(covered)

    def _segment_ends(self, after_seq: int) -> list[int]:
        """The last seqs of the segments from the one holding `after_seq` + 1 on."""
        return [last for _first, last in self._segment_spans(after_seq)]

    def _segment_spans(self, after_seq: int) -> list[tuple[int, int]]:
        """(first, last) of the whole segments that continue one another from the one
        holding entry `after_seq` + 1."""
        expected = after_seq // SEGMENT * SEGMENT + 1
        start = self._segment_root + f"{expected - 1:020d}" if expected > 1 else None
        spans = []
        for item in self._backend.list_keys(self._segment_root, start):
            match = _SEGMENT_RE.match(item["Key"][len(self._segment_root):])
            if not match:
                continue
            first, last = int(match[1]), int(match[2])
            if first != expected or last != first + SEGMENT - 1:
                break  # a segment missing: the entries' own objects are read from here
            spans.append((first, last))
            expected = last + 1
        return spans

    def _segments_from(self, after_seq: int):
        """(first seq, its lines) of the segments that cover entries after `after_seq`,
        fetched in parallel; stops at a segment that is not whole."""
        spans = self._segment_spans(after_seq)
        fetched = self._backend.pool().map(
            lambda span: self._backend.get(segment_name(*span)), spans)
        for (first, last), data in zip(spans, fetched):
            segment_lines = data.split(b"\n")
            if len(segment_lines) != last - first + 1:
                return  # damaged: the entries' own objects are read instead
            yield first, segment_lines

    def _entries_after(self, after_seq: int):
        seqs = [seq for seq, _etag in self._listed(after_seq)]
        fetched = self._backend.pool().map(self._stored, map(entry_name, seqs))
        by_seq = {}
        for expected, (seq, line) in enumerate(zip(seqs, fetched), after_seq + 1):
            if line is None and seq == seqs[-1]:
                return  # the last entry, taken back by its writer since it was listed
            if line is None or seq != expected:
                raise IntegrityError(f"journal entry {expected} is missing from "
                                     f"{self.location}, though later ones are there: the "
                                     "journal was damaged")
            by_seq[seq] = line
            yield line
        self._write_missing_segments(by_seq, seqs[-1] if seqs else 0)

    def _write_missing_segments(self, by_seq: dict[int, bytes], newest: int) -> None:
        """Write the segments a reader found missing: whole ones it has every line of,
        that end before the journal's last entry (which its writer may still take back)."""
        first = min(by_seq, default=0)
        first = (first - 1) // SEGMENT * SEGMENT + 1 if first else 0
        while first and first + SEGMENT - 1 < newest:
            last = first + SEGMENT - 1
            if all(seq in by_seq for seq in range(first, last + 1)):
                self._put_segment(first, last, [by_seq[s] for s in range(first, last + 1)])
            first += SEGMENT

    def _write_segment_quietly(self, first: int, last: int) -> None:
        """The segment the writer of its last entry writes (best effort: a reader that
        finds it missing writes it later)."""
        try:
            names = [entry_name(seq) for seq in range(first, last + 1)]
            lines = list(self._backend.pool().map(self._backend.get, names))
        except (OSError, StoreError):
            return  # the entry is stored: its commit must not fail for its segment
        self._put_segment(first, last, lines)

    def _put_segment(self, first: int, last: int, lines: list[bytes]) -> None:
        try:
            self._backend.put_if_absent(segment_name(first, last), b"\n".join(lines))
        except (OSError, StoreError):
            pass  # there already, or not allowed (a reader's credentials): the entries serve

    def raw(self) -> bytes:
        return b"".join(line + b"\n" for line in self.lines())
