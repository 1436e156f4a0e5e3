"""Packs are written with direct I/O in aligned blocks (backend._LocalWriter): whatever
the sizes of the writes, the file holds exactly the bytes written, on a file system
with direct I/O and on one without (tmpfs), and an aborted writer leaves nothing."""
import os
import tempfile

import pytest

from ckptfs.store.backend import DIRECT_BLOCK, LocalBackend


def _pieces(seed: int) -> list[bytes]:
    sizes = [1, 4095, 4097, DIRECT_BLOCK - 5, DIRECT_BLOCK, 3 * DIRECT_BLOCK + 17, 0, 12345]
    return [os.urandom(size) if size else b"" for size in sizes[seed:] + sizes[:seed]]


def _roots(tmp_path):
    yield str(tmp_path)  # ext4 here: direct I/O
    if os.path.isdir("/dev/shm"):
        with tempfile.TemporaryDirectory(dir="/dev/shm") as shm:  # tmpfs: no direct I/O
            yield shm


@pytest.mark.parametrize("seed", [0, 3])
def test_a_committed_object_holds_every_byte_written(tmp_path, seed):
    for root in _roots(tmp_path):
        backend = LocalBackend(root)
        writer = backend.open_writer("packs/00/0000000%d.pack" % seed)
        pieces = _pieces(seed)
        for piece in pieces:
            writer.write(piece)
        assert writer.size == sum(map(len, pieces))
        writer.commit()
        with open(backend.path_of("packs/00/0000000%d.pack" % seed), "rb") as f:
            assert f.read() == b"".join(pieces)


def test_an_aborted_writer_leaves_no_file(tmp_path):
    backend = LocalBackend(str(tmp_path))
    writer = backend.open_writer("packs/00/00000009.pack")
    writer.write(os.urandom(DIRECT_BLOCK + 1))
    path = backend.path_of("packs/00/00000009.pack")
    assert os.path.exists(path)
    writer.abort()
    writer.abort()  # twice: never raises
    assert not os.path.exists(path)
