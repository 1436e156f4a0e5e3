"""The committer: the one way into the journal and the index.

Every change is an event appended to the journal and then applied to the index
(events.apply), both under the journal's lock, so that checks and change see the same
state and commits of threads and processes are serialised. If the index update fails,
the entry is taken back: the journal never claims a change the caller reports as failed.
An index behind the journal (a commit that crashed after its append) catches up first.

Parts that change something are given this object; none of them appends to the journal
on its own. What parts write into the index directly is derived state the journal does
not hold: damage marks, and which retired packs this machine's gc has deleted.
"""
import os
import threading
from contextlib import contextmanager
from functools import partial

from .backend import BackendUnavailableError, SeqTakenError
from .damage import record_missing_chunks
from .errors import IntegrityError, JournalDamagedError
from .events import apply
from .index import Index
from .journal import Journal


COMMIT_CRASH_ENV = "CKPTFS_COMMIT_CRASH_AT"
COMMIT_CRASH_POINTS = ("before-journal", "after-journal")
COMMIT_CRASH_EXIT = 98


def commit_crash_point(name: str) -> None:
    """Test hook: die here, without cleaning up, if CKPTFS_COMMIT_CRASH_AT names this
    point (a writer killed between its packs and its journal entry, or after it)."""
    if os.environ.get(COMMIT_CRASH_ENV) == name:
        os._exit(COMMIT_CRASH_EXIT)


class Committer:
    def __init__(self, index: Index, journal: Journal, records):
        self.index = index
        self.journal = journal
        self.records = records  # replay.PackRecords (scanning): for a catch-up
        self._holder: int | None = None  # the thread holding the commit lock

    @contextmanager
    def locked(self):
        """The commit lock (the journal's flock), for a check and its change together."""
        with self.journal.locked():
            self._holder = threading.get_ident()
            try:
                yield
            finally:
                self._holder = None

    def catch_up_for_reader(self) -> None:
        """Catch up for a reader that found a pack gone (a gc on another machine deleted
        it; the index learns where its records went). Never waits for a thread of this
        process that holds the lock: it catches up itself, and may be waiting for this
        reader (gc reads delta bases on a pool under the lock)."""
        holder = self._holder
        if holder == threading.get_ident():
            self.catch_up()
        elif holder is None:
            self.catch_up_if_behind()

    def commit_event(self, make_event, actor: dict | None = None) -> dict | None:
        """Journal the event `make_event()` returns (None: nothing to change) and apply it,
        both under the journal lock, so checks and change see the same state."""
        def journal_it():
            event = make_event()
            return None if event is None else self.journal_and_index(event, actor)
        return self.attempt(journal_it)

    def attempt(self, body):
        """Run `body` (checks, then `journal_and_index`) under the journal lock on an
        index that has caught up, and again whenever another writer took the journal
        seq it wanted (an object store: no lock spans machines, the conditional create
        of the entry decides). Each try sees the entries it lost to, so its checks
        ("the name is still free") are made again. Returns what `body` returns."""
        with self.locked():
            while True:
                self.catch_up()
                try:
                    return body()
                except SeqTakenError:
                    continue

    def journal_and_index(self, event: dict, actor: dict | None, records=None) -> dict:
        """Append `event` to the journal (the caller holds its lock), then apply it to the
        index (`records`: what its packs hold) in one transaction that also records it
        as applied. If the index update fails the entry is taken back."""
        self.settle_journal_tail(strict=True)
        commit_crash_point("before-journal")
        with self.index.read() as txn:
            checked_against = self.index.get_int(txn, b"journal_seq")
        entry = self.journal.append(event, actor, after_seq=checked_against)
        commit_crash_point("after-journal")
        try:
            self.index.commit(lambda txn: apply(self.index, txn, entry, records))
        except BaseException:
            self.journal.rollback(entry)
            raise
        return entry

    # -- an index behind the journal ---------------------------------------------------
    def catch_up_if_behind(self, when_unreachable: str = "go on") -> None:
        """Apply what others committed since. An object store that cannot be reached
        is not an error when opening a store (`go on`: reads are answered from the
        index and the chunk cache) but is for the mount's poll (`raise`: it says so)."""
        with self.index.read() as txn:
            applied = self.index.get_int(txn, b"journal_seq")
        try:
            behind = self.journal.last_seq() > applied or self.journal.torn_tail() is not None
        except IntegrityError:
            return  # a damaged last entry: reads go on from the index, writes are refused
        except BackendUnavailableError:
            if when_unreachable == "raise":
                raise
            return  # the object store is down: reads go on from the index and the cache
        if behind:
            with self.locked():
                self.settle_journal_tail(strict=False)
                self.catch_up()

    def catch_up(self) -> None:
        """Apply journal entries the index has not seen (the caller holds the lock).

        This finishes a commit that crashed after its journal append: the journal is
        the truth, the index follows it. An index recreated from nothing (its directory
        was removed) also learns which files lost chunks to damaged packs."""
        with self.index.read() as txn:
            applied, head = self.index.applied(txn)
        for entry in self.journal.entries(after_seq=applied, after_hash=head if applied else None):
            self.index.commit(partial(self._apply, entry))
        if applied == 0:
            self.index.commit(lambda txn: record_missing_chunks(self.index, txn))

    def _apply(self, entry: dict, txn) -> None:
        apply(self.index, txn, entry, self.records)

    def settle_journal_tail(self, strict: bool) -> None:
        """Deal with a last journal line that lacks its newline (the caller holds the
        journal lock) before anything could cut it off.

        A whole entry that continues the chain only lost its newline: it gets it back
        (and is applied like a commit that crashed before its index update). Anything
        else is a torn append, which the next append cuts off, unless the index applied
        that entry: then it was committed and cutting it would erase it, so a writer
        (`strict`) refuses."""
        torn = self.journal.torn_tail()
        if torn is None:
            return
        if self.journal.tail_is_whole_entry(torn[0]):
            self.journal.restore_newline()
            return
        with self.index.read() as txn:
            committed, _head = self.index.applied(txn)
        if strict and committed > self.journal.last_seq():
            raise JournalDamagedError(
                f"the journal's last line is damaged, and the index says entry {committed} was "
                f"committed: ckptfs refuses to write, which would cut that entry off; restore "
                f"{self.journal.path} from a backup (`ckptfs audit verify` names the damage)")

    # -- reading the journal -------------------------------------------------------------
    def applied_seq(self) -> int:
        """The last journal entry the index reflects: changes whenever a version is sealed
        (by this process or another), so callers can cache catalog answers against it."""
        with self.index.read() as txn:
            return self.index.get_int(txn, b"journal_seq")

    def check_journal(self) -> dict:
        """Recompute the journal's hash chain (`ckptfs audit verify`): the first entry
        altered, removed or reordered, against the chain and the index's last entry."""
        with self.index.read() as txn:
            committed = self.index.applied(txn)
        return self.journal.check_chain(committed)

    def journal_entries(self):
        """Every journal entry, oldest first, without stopping at a broken chain
        (`ckptfs audit` shows what is there; `check_journal` says whether to trust it)."""
        return self.journal.entries(verify_chain=False)
