"""ckptfs.store: the storage engine (chunking, codecs, packs, index, journal, catalog).

Usable on its own, without FUSE: `Store.init(path)` / `Store.open(path)`.
"""
from .errors import (AliasError, ChunksReclaimedError, DeletionRefusedError, GcBusyError,
                     IntegrityError, InvalidNameError, NotAStoreError, NotFoundError,
                     PackMissingError, RetentionError, SourceError, StoreError,
                     StoreFormatError, StoreFullError, ReservedAliasError, SettingError,
                     VersionDeletedError, VersionExistsError)
from .names import parse_version_ref, validate_name
from .store import RestoreReport, Store, VerifyReport

__all__ = ["Store", "RestoreReport", "VerifyReport", "StoreError", "NotAStoreError",
           "StoreFormatError", "InvalidNameError", "VersionExistsError", "NotFoundError",
           "SourceError", "IntegrityError", "StoreFullError", "validate_name",
           "parse_version_ref", "AliasError", "ReservedAliasError", "SettingError",
           "ChunksReclaimedError", "DeletionRefusedError", "GcBusyError", "PackMissingError",
           "RetentionError", "VersionDeletedError"]

from .errors import AccessDeniedError, AccessError  # noqa: E402  (access control)

__all__ += ["AccessDeniedError", "AccessError"]
