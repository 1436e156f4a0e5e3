"""The mount's reads of sealed files: as little as possible on the event loop per request.

    read(entry, off, size)
      reader.prefetch          decode the chunks ahead of a sequential reader on the
                               reader's threads (one a core), into its decoded-chunk cache
      reader.read_view_cached  every chunk of the range decoded already: a slice of the
                               cached chunk, no copy, no thread (most reads)
      reader.decoding          chunks of the range being decoded ahead: wait for them
                               here, woken by their Future (no worker thread), then slice
      trio.to_thread           anything else (a seek, an evicted chunk, a damaged record:
                               its error is raised here, in this read)

Errors are the caller's to map (ops.read: EIO and a counted read error).
"""
import trio


async def finished(future) -> None:
    """Wait in trio until a concurrent.futures.Future is done, without holding a thread."""
    if future.done():
        return
    done = trio.Event()
    token = trio.lowlevel.current_trio_token()

    def wake(_future):
        try:
            token.run_sync_soon(done.set)
        except trio.RunFinishedError:
            pass  # the daemon is stopping: nobody waits any more
    future.add_done_callback(wake)
    await done.wait()


class SealedReads:
    """Reads of sealed files' entries through `reader` (a ChunkReader)."""

    def __init__(self, reader):
        self.reader = reader

    async def read(self, entry: dict, off: int, size: int):
        reader = self.reader
        # Decoding ahead starts first, so it overlaps this read.
        reader.prefetch(entry, off)
        data = reader.read_view_cached(entry, off, size)
        if data is not None:
            return data
        for future in reader.decoding(entry, off, size):
            await finished(future)
        data = reader.read_view_cached(entry, off, size)
        if data is not None:
            return data
        return await trio.to_thread.run_sync(reader.read_view, entry, off, size)
