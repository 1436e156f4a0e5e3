"""Which files of the inbox are ingested while they are written (store/stream.py).

A file whose first write lands at offset 0 of an empty file gets a `FileStream` in its
unit's ingest (the one the prepare-ahead uses). Every later write reports its range here
(`WriteStreams.wrote`, the inbox's write hook: a few integer operations, no I/O): the
written ranges are kept as a prefix from offset 0 and the pieces past a gap, and the
stream is told when the prefix grows. The stream is given up, and the file prepared from
its bytes at close as before, when

  * a write lands below what the stream has read (a rewrite),
  * anything else changes the content (a truncate, an O_TRUNC open: the activity's
    `bump` that is not a write's own),
  * at close the written prefix is not the whole file (a hole, a write never made) or
    the file has moved to another unit or run (a rename away), or the stream failed.

At the last writer's close the stream is told the size and the prepared-result token
(the inode and its write generation, as for the prepare-ahead): a task waits for its end
and counts it (`files_prepared`, `files_streamed`) or queues the usual prepare.
"""
import errno
import logging
import os

import trio

from ckptfs.meta.layout import FILE, SEAL_MARKER, parent_of, unit_of
from ckptfs.spool.directory import inner_path
from ckptfs.store.ingest import open_without_atime

log = logging.getLogger("ckptfs.inbox")

MAX_GAPS = 256  # written pieces past a gap kept per file (mmap writes back in any order)


def _beside(unit):
    """Checkpoint files in the directory of `unit` (a checkpoint file): most likely the
    other shards of one checkpoint, which a `.seal` or `config.json` will join into
    one unit; they do not hold up its stream as an earlier checkpoint would."""
    folder = parent_of(unit.path)
    return lambda other: unit.shape == FILE and other.shape == FILE and \
        parent_of(other.path) == folder


class WriteTracker:
    """What has been written of one streamed file."""

    def __init__(self, stream, run: tuple, unit_path: str):
        self.stream, self.run, self.unit_path = stream, run, unit_path
        self.prefix = 0                  # written without a gap from offset 0
        self.beyond: dict[int, int] = {}  # start -> end of pieces written past a gap

    def wrote(self, off: int, n: int) -> bool:
        """Note a write; False if the stream cannot go on (a rewrite, too many gaps)."""
        end = off + n
        if off < self.stream.claimed:
            return False
        if off > self.prefix:
            if len(self.beyond) >= MAX_GAPS:
                return False
            self.beyond[off] = max(end, self.beyond.get(off, 0))
            return True
        if end <= self.prefix:
            return True
        self.prefix = end
        while self.beyond:
            start = min(self.beyond)
            if start > self.prefix:
                break
            self.prefix = max(self.prefix, self.beyond.pop(start))
        self.stream.written_to(self.prefix)
        return True


class WriteStreams:
    """The streams of the inbox's files being written, by spool inode."""

    def __init__(self, sealer):
        self.sealer = sealer
        self.activity = sealer.activity
        # inode -> its tracker; None: not streamed until its writers have all closed it.
        self.trackers: dict[int, WriteTracker | None] = {}
        self._write_of: int | None = None  # the inode whose write's own bump comes next
        self.activity.on_bump = self.changed

    # -- the write hook (hot path) ----------------------------------------------------------
    def wrote(self, handle, off: int, n: int) -> None:
        ino = handle.ino
        tracker = self.trackers.get(ino, False)
        if tracker is False:
            tracker = self.trackers[ino] = self._begin(handle, off, n) if off == 0 else None
        if tracker is not None and not tracker.wrote(off, n):
            self._give_up(ino)
        self._write_of = ino

    def changed(self, ino: int) -> None:
        """The activity's bump: the content of `ino` changed."""
        if self._write_of == ino:
            self._write_of = None  # the write just noted
        elif self.trackers.get(ino) is not None:
            self._give_up(ino)

    def _give_up(self, ino: int) -> None:
        tracker = self.trackers.get(ino)
        if tracker is not None:
            tracker.stream.cancel()
        self.trackers[ino] = None

    def _begin(self, handle, off: int, n: int) -> WriteTracker | None:
        """A stream for a file written from its start, if its unit can take one now."""
        try:
            return self._stream_for(handle, n)
        except Exception:  # a write must never fail for the stream's sake
            log.exception("could not start ingesting a file of the inbox as it is written")
            return None

    def _stream_for(self, handle, n: int) -> WriteTracker | None:
        where = self.activity.paths.get(handle.ino)
        if where is None or os.fstat(handle.fd).st_size > n:
            return None  # not a new file written from its start
        run, rel = where[:2], where[2]
        sealer = self.sealer
        unit = unit_of(sealer.inbox.units_of(*run), rel)
        if unit is None or os.path.basename(rel) == SEAL_MARKER:
            return None
        state = sealer.state_for(run, unit, keep=False)  # the sealer's round adds it
        if state.sealing or sealer._earlier_pending(run, unit, state, _beside(unit)):
            return None  # its chunks would miss the earlier version's: prepared at close
        ingest = sealer._ingest_for(run, unit, state)
        if ingest is None:
            return None
        fd = open_without_atime(f"/proc/self/fd/{handle.fd}")  # the job's atime stays
        stream = ingest.stream_file(inner_path(unit, rel), fd)
        return WriteTracker(stream, run, unit.path)

    # -- the close ----------------------------------------------------------------------------
    def closed(self, run: tuple | None, ino: int) -> bool:
        """The file's last writer closed it: True if its stream finishes it (the usual
        prepare is not needed), False if the file must be prepared from its bytes."""
        tracker = self.trackers.pop(ino, None)
        if tracker is None:
            return False
        stream = tracker.stream
        if ino in self.activity.incomplete:  # a write failed: the disk is full
            stream.cancel()
            self._give_space_back(tracker)
            return False
        size = self._size_if_whole(run, ino, tracker)
        if size is None or stream.done:
            stream.cancel()
            return False
        token = (ino, self.activity.generations.get(ino))
        stream.close(size, token)
        self.sealer.start_soon(self._count_when_done, tracker, ino, token)
        return True

    def _size_if_whole(self, run, ino: int, tracker: WriteTracker) -> int | None:
        """The file's size if the stream saw all of it, where it began."""
        where = self.activity.paths.get(ino)
        if run is None or where is None or where[:2] != tracker.run:
            return None
        unit = unit_of(self.sealer.inbox.units_of(*run), where[2])
        if unit is None or unit.path != tracker.unit_path:
            return None
        try:
            st = os.lstat(self.sealer.inbox.run_path(run, where[2]))
        except FileNotFoundError:
            return None
        if st.st_ino != ino or st.st_size != tracker.prefix or tracker.beyond:
            return None
        return st.st_size

    def _give_space_back(self, tracker: WriteTracker) -> None:
        """The disk is full: what the unit's ingest packed ahead goes (its files stay in
        the spool, and its seal reads them), so that removing files frees their space."""
        self.sealer.discard_staged((*tracker.run, tracker.unit_path))

    async def _count_when_done(self, tracker: WriteTracker, ino: int, token: tuple):
        stream = tracker.stream
        fields = await trio.to_thread.run_sync(stream.result, abandon_on_cancel=True)
        counters = self.sealer.counters
        if fields is not None:
            counters["files_prepared"] += 1
            counters["files_streamed"] += 1
            return
        if stream.error is not None:
            log.warning("ingesting inbox/%s/%s/%s as it was written failed: %s", *tracker.run,
                        tracker.unit_path or ".", stream.error)
            if getattr(stream.error, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
                self._give_space_back(tracker)
        where = self.activity.paths.get(ino)
        if where is not None and self.activity.generations.get(ino) == token[1]:
            self.activity.unprepared.add(ino)  # unchanged since: prepared as before
            self.sealer.queue_prepare(where[:2], ino)
