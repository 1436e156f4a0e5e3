"""The journal: a hash-chained, append-only event log (`STORE/journal/journal.jsonl`).

One JSON object per line. Each entry carries `seq` (1, 2, …), `time` (UTC), `type`,
`uid`, `pid`, the event's own fields, and `prev`: the SHA-256 of the previous line's
bytes (64 zeros for the first). Together with the packs it is the store's truth: the
LMDB index is rebuilt from the two.

Writers hold the log's lock for the whole commit (check, append, index update), which
serialises commits between threads and processes (locally an exclusive flock on
`journal/lock`). Where the lines are kept is the backend's business (backend.py,
`JournalLog`): this module builds entries and checks their chain.
"""
import hashlib
import json
import os
import secrets
from datetime import datetime, timezone

from .backend import JournalLog, SeqTakenError, last_entry_seq
from .errors import IntegrityError, StoreError
from .users import user_name

GENESIS = "0" * 64


def entry_hash(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def encode_entry(entry: dict) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def check_text(entry: dict) -> None:
    """Refuse text that is not Unicode: Python hands over the bytes of a command-line
    argument or file name that are not UTF-8 as lone surrogates, which JSON would keep
    as escapes the index and every reader then choke on."""
    try:
        json.dumps(entry, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as e:
        near = e.object[max(0, e.start - 20):e.end + 20]
        raise StoreError(f"text that is not valid UTF-8 cannot be recorded (near {near!a}): "
                         "give names, values and reasons as UTF-8") from None


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def check_chain(journal: bytes, committed: tuple[int, str | None] | None = None) -> dict:
    """Walk the journal (its JSON lines) and report the first entry that breaks the hash
    chain.

    Returns {"entries": n, "ok": bool, "problem": text or None, "line": n or None}.
    `committed` is (seq, entry hash) of the last entry the index applied: it catches
    what the chain alone cannot, an altered or removed last entry."""
    lines = journal.split(b"\n")
    torn = lines.pop()  # b"" after the final newline; else a torn append (or damage)
    parsed = []
    for number, line in enumerate(lines, 1):
        try:
            parsed.append(json.loads(line))
        except ValueError:
            return _broken(len(lines), number, f"line {number} is not a JSON entry: it was altered")
    seqs = [entry.get("seq") for entry in parsed]
    prev = GENESIS
    for number, (line, entry) in enumerate(zip(lines, parsed), 1):
        if entry.get("seq") != number:
            if number in seqs[number:]:
                return _broken(len(lines), number, f"line {number} holds entry {entry.get('seq')}, "
                               f"and entry {number} comes later: entries were reordered")
            return _broken(len(lines), number, f"entry {number} is missing (line {number} holds "
                           f"entry {entry.get('seq')}): entries were removed")
        if entry.get("prev") != prev:
            what = (f"entry {number - 1} was altered (its hash is not the one entry {number} "
                    "names)") if number > 1 else "entry 1 was altered"
            return _broken(len(lines), number - 1 or 1, what)
        prev = entry_hash(line)
    if committed is not None and committed[0]:
        seq, head = committed
        if len(lines) < seq and torn and seq == len(lines) + 1:
            return _broken(len(lines), seq, f"entry {seq}, the last one committed, is cut short "
                           "(its line is damaged): writes are refused until the journal is "
                           "restored from a backup")
        if len(lines) < seq:
            return _broken(len(lines), len(lines) + 1,
                           f"the journal ends at entry {len(lines)}, but entries up to {seq} were "
                           "committed: entries were removed from its end")
        if head is not None and entry_hash(lines[seq - 1]) != head:
            return _broken(len(lines), seq, f"entry {seq} was altered (it is not the entry "
                           "that was committed)")
    return {"entries": len(lines), "ok": True, "problem": None, "line": None}


def _broken(count: int, line: int, problem: str) -> dict:
    return {"entries": count, "ok": False, "problem": problem, "line": line}


class Journal:
    """The journal's entries and their hash chain, kept in a backend's `JournalLog`."""

    def __init__(self, log: JournalLog):
        self.log = log
        # For messages ("restore … from a backup"); the mount serves the local journal
        # file at this path as `.ckptfs/audit.jsonl` (fs/tree.py).
        self.path = log.location
        self._last_append: str | None = None  # hash of the entry this process appended last

    def locked(self):
        """Held for a whole commit (check, append, index update): one writer at a time."""
        return self.log.locked()

    def _tail(self) -> tuple[int, str]:
        """(last seq, hash of the last entry's line). A torn append (a crash) is not part
        of the journal: the next append cuts it off. The store first makes sure no
        committed entry is cut that way (`Committer.settle_journal_tail`)."""
        line = self.log.last()
        if line is None:
            return 0, GENESIS
        return last_entry_seq(line), entry_hash(line)

    def append(self, event: dict, actor: dict | None = None,
               after_seq: int | None = None) -> dict:
        """Append one event; the caller holds `locked()`. Durable when this returns.

        `actor` ({"uid", "pid"}) is who asked for it when that is not this process (a
        user of the mount); it defaults to this process. `after_seq`: the last entry the
        caller's checks saw; SeqTakenError if the journal has gone past it since (on a
        shared store another machine's entry can land between a catch-up and this append,
        and chaining onto it would commit a change checked against an older state)."""
        seq, prev = self._tail()
        if after_seq is not None and seq != after_seq:
            raise SeqTakenError(f"journal entry {after_seq + 1} was taken by another writer")
        entry = dict(event)
        uid = (actor or {}).get("uid", os.getuid())
        entry.update(seq=seq + 1, prev=prev, time=utc_now(), uid=uid,
                     pid=(actor or {}).get("pid", os.getpid()), user=user_name(uid))
        if self.log.wants_nonce:
            entry["nonce"] = secrets.token_hex(12)
        check_text(entry)
        line = encode_entry(entry)
        self.log.append(entry["seq"], line)
        self._last_append = entry_hash(line)
        return entry

    def rollback(self, entry: dict) -> None:
        """Remove `entry`, the last one this process appended, while still holding the lock:
        used when the commit that wrote it could not finish (e.g. the index hit a full disk)."""
        if self._last_append != entry_hash(encode_entry(entry)):
            raise RuntimeError("rollback of an entry that was not the last one appended")
        self.log.remove_last(entry["seq"])
        self._last_append = None

    def torn_tail(self) -> tuple[bytes, int] | None:
        """(the bytes after the last newline, where they start), or None when the
        journal ends with a newline (or is empty)."""
        torn = self.log.torn_tail()
        if torn is not None:
            self._tail()  # a damaged last entry is named before anything is done to the tail
        return torn

    def tail_is_whole_entry(self, tail: bytes) -> bool:
        """True if a torn tail is a whole entry that only lost its newline: it parses,
        and its `seq` and `prev` continue the chain."""
        seq, prev = self._tail()
        try:
            entry = json.loads(tail)
        except ValueError:
            return False
        return (isinstance(entry, dict) and entry.get("seq") == seq + 1
                and entry.get("prev") == prev and encode_entry(entry) == tail)

    def restore_newline(self) -> None:
        """Give a whole last entry back its newline (the caller holds `locked()`)."""
        self.log.mend_tail()

    def last_seq(self) -> int:
        return self._tail()[0]

    def raw(self) -> bytes:
        """The journal as JSON lines, byte for byte (`.ckptfs/audit.jsonl` in the mount)."""
        return self.log.raw()

    def check_chain(self, committed: tuple[int, str | None] | None = None) -> dict:
        """`check_chain` of this journal as it is now."""
        return check_chain(self.log.raw(), committed)

    def entries(self, after_seq: int = 0, verify_chain: bool = True,
                after_hash: str | None = None):
        """Yield entries with seq > after_seq, checking the hash chain as it goes: from
        `after_hash`, the hash of entry `after_seq` (the index's head), when it is given,
        else from the first entry (the whole journal is read)."""
        start, prev = (after_seq, after_hash) if after_hash is not None else (0, GENESIS)
        for number, line in enumerate(self.log.lines(start), start + 1):
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
