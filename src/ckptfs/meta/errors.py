"""Errors of the meta layer that more than one module raises."""
from ckptfs.store import StoreError


class SealRefused(StoreError):
    """A project policy refused a version before any of its bytes were stored (its schema,
    its unsafe-pickles policy). Nothing was written, so the same directory (or the same
    ingest begun ahead of the seal) can be sealed again once it is fixed."""
