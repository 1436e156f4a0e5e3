"""When the daemon answers FLUSH: only where the kernel would otherwise keep a closed
file's dirty pages past close() (the writeback cache, Linux before 5.16)."""
from ckptfs.fs.ops import kernel_writes_back_on_close


def test_kernels_from_5_16_write_back_at_close_without_flush():
    assert kernel_writes_back_on_close("6.18.44-fc-v1045")
    assert kernel_writes_back_on_close("5.16.0")
    assert kernel_writes_back_on_close("10.1")


def test_older_or_unknown_kernels_get_flush_answered():
    assert not kernel_writes_back_on_close("5.15.0-91-generic")
    assert not kernel_writes_back_on_close("4.18.0-513.el8.x86_64")
    assert not kernel_writes_back_on_close("unknown")
