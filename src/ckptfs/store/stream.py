"""Ingest of a file while it is being written: chunks cut, hashed, deduplicated, encoded
and packed behind the writer, so that a file is prepared moments after its close.

The caller (the mount's inbox, fs/streaming.py) opens a `FileStream` on an ingest when a
file starts being written from offset 0, and reports as it goes how far the file is
written without a gap (`written_to`); the stream's own thread reads that prefix with
pread (it is in the page cache) and feeds it, in order, through the ingest's
`FilePipeline`, exactly as a whole-file ingest would cut it:

  * a safetensors file's header comes first: once it is there the tensors are planned
    (fixed blocks aligned to each tensor, delta-coded against the parent's blocks), and
    only what follows the last tensor is content-defined, cut as it arrives;
  * any other file is cut content-defined as it arrives: a cut is final once the bytes
    after it are known (up to the largest chunk), so the cuts are those of the whole file.

What the stream has read is `claimed`: a write below it is a rewrite and the caller
cancels the stream (the file is then prepared from its bytes at close, as before). When
the writer closes the file the caller gives its size and the prepared-result token
(`close`); the stream reads the tail, finishes the file's SHA-256 and registers its
fields in the ingest under that token: the seal only commits.

Memory: the content-defined window (two largest chunks) and the shared encoder budget
(ingest.EncoderPool): never more, however large the file or slow the encoders; a stream
that falls behind its writer reads the rest from the spool file after the close.
"""
import errno
import os
import threading
from concurrent.futures import ThreadPoolExecutor

from .chunking import (Segment, parse_safetensors_header, plan_segments,
                       safetensors_header_size)
from .errors import SourceError
from .encoders import EncoderPool, yield_to_others

PAGE = 4096   # claimed only up to whole pages until the close: a writeback cache
              # writes back a partly filled last page again once it is filled


class StreamStopped(Exception):
    """The stream was cancelled: the file is prepared some other way (or not at all)."""


class FileStream:
    """One file of an ingest, read behind its writer on a thread of its own."""

    def __init__(self, ingest, rel_path: str, fd: int):
        self.ingest, self.rel_path, self.fd = ingest, rel_path, fd
        self._cond = threading.Condition()
        self._available = 0        # bytes from offset 0 written without a gap
        self._wanted = 1 << 62     # the reader sleeps until this many are available
        self._final_size: int | None = None
        self._token = None
        self._cancelled = False
        self._settling = False     # the seal waits: a file not closed yet is given up
        self.claimed = 0           # bytes read (or being read) by the stream
        self.fields: dict | None = None
        self.error: BaseException | None = None   # what ended it other than a change
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ckptfs-stream", daemon=True)
        self._window = 2 * ingest.chunker.max_size
        self._pipeline = None

    def start(self) -> None:
        self._thread.start()

    # -- the writer's side: called by the daemon, never blocks on the ingest ------------------
    def written_to(self, end: int) -> None:
        """The file is written without a gap up to `end` (never moves back)."""
        self._available = end
        if end >= self._wanted:
            with self._cond:
                self._cond.notify()

    def close(self, size: int, token) -> None:
        """The writer closed the file at `size` bytes: finish it under `token`."""
        with self._cond:
            self._final_size, self._token = size, token
            self._cond.notify()

    def cancel(self) -> None:
        with self._cond:
            self._cancelled = True
            self._cond.notify()

    def settle(self) -> None:
        """Wait for the stream's end: a closed file is finished, any other given up."""
        with self._cond:
            self._settling = True
            self._cond.notify()
        self.join()

    def join(self) -> None:
        self._done.wait()

    def result(self) -> dict | None:
        """The file's fields once the stream ended (None: it was stopped or failed)."""
        self._done.wait()
        return self.fields

    @property
    def done(self) -> bool:
        return self._done.is_set()

    # -- the stream's thread ------------------------------------------------------------------
    def _run(self):
        yield_to_others()
        try:
            with ThreadPoolExecutor(1, thread_name_prefix="ckptfs-sha256",
                                    initializer=yield_to_others) as hasher:
                fields = self._ingest(hasher)
            self.ingest.add_prepared(self._token, fields)
            self.fields = fields
        except (StreamStopped, SourceError):
            pass  # cancelled, or the file was not what the writes said: prepared at close
        except BaseException as e:  # e.g. a full disk: the caller logs it
            self.error = e
        finally:
            os.close(self.fd)
            self._done.set()

    def _ingest(self, hasher) -> dict:
        layout = self._tensor_layout()
        pipeline = self.ingest.pipeline(self.ingest.delta_bases(self.rel_path, layout),
                                        EncoderPool.shared(), hasher)
        with pipeline.cancelled_on_error():
            self._pipeline = pipeline
            tail = 0
            if layout is not None:
                tail = max((end for _s, end, _d in layout.tensors.values()), default=layout.data_start)
                tail = max(tail, layout.data_start)
                for segment in plan_segments(layout, tail, self.ingest.tensor_block):
                    self._cut_known(segment, pipeline)
            self._cut_content_defined(tail, None, pipeline)
            return pipeline.finish(self._final_size)

    def _tensor_layout(self):
        """The tensors of a safetensors file, planned from its header alone (the file's
        size is not known yet: it must reach the end of the last tensor, which the close
        checks); None for any other file, as FileReader.tensor_layout would say."""
        first = self._read_available(0, 10)
        header_size = safetensors_header_size(first[:8]) if len(first) >= 10 else 0
        if not header_size or first[8:9] != b"{":
            return None
        head = self._read_available(0, header_size)
        if len(head) < header_size:
            return None  # closed before its header's end: not a safetensors file
        layout = parse_safetensors_header(head, 1 << 62)
        if layout is None:
            return None
        spans = sorted(layout.tensors.values())
        if any(a[1] > b[0] for a, b in zip(spans, spans[1:])):
            return None  # overlapping tensors: cut as an ordinary file (planned at close)
        return layout

    def _cut_known(self, segment: Segment, pipeline) -> None:
        """A segment of the header's plan: fixed blocks, or content-defined (the header,
        gaps between tensors) over bytes whose end is known."""
        end = segment.offset + segment.length
        if segment.fixed_block:
            pos = segment.offset
            while pos < end:
                n = min(segment.fixed_block, end - pos)
                data = self._read_exact(pos, n)
                pipeline.add(segment, pos, data)
                pos += n
            return
        self._cut_content_defined(segment.offset, end, pipeline, segment)

    def _cut_content_defined(self, start: int, end: int | None, pipeline,
                             segment: Segment | None = None) -> None:
        """Content-defined chunks from `start` to `end` (None: to the end of the file,
        whose size is only known at the close), read a window at a time as they are
        written: a chunk is passed on once the bytes after it are there."""
        chunker = self.ingest.chunker

        def fill(offset: int, free) -> tuple[int, bool]:
            room = len(free) if end is None else min(len(free), end - offset)
            # As much as is written, once a largest chunk more is (a cut needs no more).
            n = self._read_available(offset, room, into=free,
                                     at_least=min(room, chunker.max_size))
            file_ends = self._final_size is not None and offset + n >= self._final_size
            if end is None:
                return n, file_ends
            if n < room and file_ends:
                raise SourceError(f"{self.rel_path}: ends before its last tensor")
            return n, offset + n >= end
        for offset, data in chunker.cut_windows(start, bytearray(self._window), fill):
            pipeline.add(segment or Segment(offset, len(data)), offset, data)

    # -- reading what the writer has written ---------------------------------------------------
    def _wait(self, end: int) -> int:
        """Block until `end` bytes are written without a gap, or the file is closed;
        the bytes that may be read now (below `end` only at the close)."""
        if self._readable() < end and self._pipeline is not None:
            self._pipeline.drain()  # hold no encoder places while waiting for the writer
        with self._cond:
            while True:
                if self._cancelled:
                    raise StreamStopped()
                if self._final_size is not None:
                    return min(end, self._final_size)
                if self._settling:
                    raise StreamStopped()  # still being written when its version seals
                readable = self._readable()
                if readable >= end:
                    self._wanted = 1 << 62  # no more wake-ups until the next wait
                    return readable
                self._wanted = end
                self._cond.wait(0.5)  # (a wake-up lost to a race costs this much)

    def _readable(self) -> int:
        if self._final_size is not None:
            return self._final_size
        return self._available - self._available % PAGE

    def _read_available(self, offset: int, length: int, into=None, at_least: int | None = None):
        """Up to `length` bytes at `offset` once `at_least` of them (default: all) are
        written, fewer at the file's end; into a buffer if given (then the count read)."""
        wanted = length if at_least is None else at_least
        end = min(self._wait(offset + wanted), offset + length)
        n = max(0, end - offset)
        self.claimed = max(self.claimed, offset + n)
        if into is None:
            return self._pread(offset, n)
        done = 0
        while done < n:
            got = os.preadv(self.fd, [into[done:n]], offset + done)
            if got == 0:
                raise SourceError(f"{self.rel_path}: shorter than written")
            done += got
        return n

    def _read_exact(self, offset: int, length: int) -> bytes:
        data = self._read_available(offset, length)
        if len(data) != length:
            raise SourceError(f"{self.rel_path}: ends before its last tensor")
        return data

    def _pread(self, offset: int, n: int) -> bytes:
        try:
            data = os.pread(self.fd, n, offset)
        except OSError as e:
            if e.errno == errno.EIO:
                raise SourceError(f"{self.rel_path}: read error") from None
            raise
        if len(data) != n:
            raise SourceError(f"{self.rel_path}: shorter than written")
        return data

