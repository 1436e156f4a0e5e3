"""Ingest behind the writer, in-process: the inbox's writes feed a stream of the file
into its unit's ingest (fs/streaming.py), which the seal then reuses; writes that arrive
out of order (a writeback cache, mmap pages) still stream once each gap is filled. The
same through a kernel mount with real tools, and every fall-back (rewrite, truncate,
hole, append, mmap, rename): tests/mount/test_mount_stream.py."""
import os

import pytest

from tests.fs.driver import poll

pytestmark = pytest.mark.trio

RUN = "inbox/p/r"
BLOCK = 64 * 1024


async def counted(fs, name: str, value: int):
    async def done():
        return fs.inbox.counters[name] >= value
    await poll(done, f"{name} to reach {value}")


async def write_blocks(fs, path: str, data: bytes, order):
    """create, write the BLOCK-sized pieces of `data` in `order` (their indexes), release."""
    parent, name = await fs.parent_and_name(path)
    info, _ = await fs.ops.create(parent, name, 0o644, os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                                  fs.ctx)
    try:
        for index in order:
            piece = data[index * BLOCK:(index + 1) * BLOCK]
            assert await fs.ops.write(info.fh, index * BLOCK, piece) == len(piece)
    finally:
        await fs.ops.release(info.fh)


async def sealed_bytes(fs, ref: str, name: str) -> bytes:
    await fs.write(f"inbox/{ref}/.seal", b"")
    await fs.wait_sealed(ref)
    return await fs.read(f"projects/{ref}/{name}")


async def test_a_file_written_in_order_is_streamed_and_its_seal_reuses_it(fs):
    data = os.urandom(20 * BLOCK * 16)
    await fs.makedirs(f"{RUN}/v2")
    await fs.write(f"{RUN}/v2/model.safetensors", data)
    await counted(fs, "files_streamed", 1)
    assert await sealed_bytes(fs, "p/r/v2", "model.safetensors") == data
    assert fs.inbox.counters["files_reused_at_seal"] == 1


async def test_writes_out_of_order_stream_once_their_gaps_are_filled(fs):
    data = os.urandom(300 * BLOCK)
    order = [0]  # the file starts with its first block, then runs of 6 back to front
    for start in range(1, 300, 6):
        order += reversed(range(start, min(start + 6, 300)))
    await fs.makedirs(f"{RUN}/v2")
    await write_blocks(fs, f"{RUN}/v2/model.bin", data, order)
    await counted(fs, "files_streamed", 1)
    assert await sealed_bytes(fs, "p/r/v2", "model.bin") == data
