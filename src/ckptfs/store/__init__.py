"""ckptfs.store: the storage engine (chunking, codecs, packs, index, journal, catalog).

Usable on its own, without FUSE: `Store.init(path)` / `Store.open(path)`.
"""
from .errors import (AliasError, ChunksReclaimedError, DeletionRefusedError, GcBusyError,
                     IntegrityError, InvalidNameError, NotAStoreError, NotFoundError,
                     PackMissingError, RetentionError, SourceError, StoreError,
                     StoreFormatError, StoreFullError, ReservedAliasError, SettingError,
                     VersionDeletedError, VersionExistsError)
from .names import parse_version_ref, validate_name

__all__ = ["Store", "RestoreReport", "VerifyReport", "StoreError", "NotAStoreError",
           "StoreFormatError", "InvalidNameError", "VersionExistsError", "NotFoundError",
           "SourceError", "IntegrityError", "StoreFullError", "validate_name",
           "parse_version_ref", "AliasError", "ReservedAliasError", "SettingError",
           "ChunksReclaimedError", "DeletionRefusedError", "GcBusyError", "PackMissingError",
           "RetentionError", "VersionDeletedError"]

from .errors import AccessDeniedError, AccessError  # noqa: E402  (access control)

__all__ += ["AccessDeniedError", "AccessError"]


def __getattr__(name):
    # The engine (store.py and all it imports, numpy among them) loads on first use:
    # importing ckptfs.store.names or .errors, as `ckptfs --help` does, stays light.
    if name in ("Store", "RestoreReport", "VerifyReport"):
        from . import store
        return getattr(store, name)
    raise AttributeError(f"module 'ckptfs.store' has no attribute {name!r}")
