"""ckptfs.fs: the FUSE daemon (pyfuse3 + trio), a thin layer over ckptfs.store."""
