"""Errors the store raises. Each one a user can cause carries a message that says what to do.

The CLI prints `str(error)` and exits non-zero; the daemon (a later layer) maps
`errno` to the file-system error a caller sees.
"""
import errno as _errno


class StoreError(Exception):
    """Base class: an error a user can cause or must know about."""

    errno = _errno.EIO


class NotAStoreError(StoreError):
    errno = _errno.ENOENT


class StoreFormatError(StoreError):
    """The store was written by a newer ckptfs, or its settings are malformed."""

    errno = _errno.EINVAL


class InvalidNameError(StoreError, ValueError):
    errno = _errno.EINVAL


class VersionExistsError(StoreError):
    errno = _errno.EEXIST


class NotFoundError(StoreError):
    errno = _errno.ENOENT


class SourceError(StoreError):
    """The directory being imported is missing, unreadable or holds something we cannot store."""

    errno = _errno.EIO


class IntegrityError(StoreError):
    """Stored bytes failed a check. Never served: the read fails instead."""

    errno = _errno.EIO

    def __init__(self, message, pack_id=None, chunk_id=None):
        super().__init__(message)
        self.pack_id = pack_id
        self.chunk_id = chunk_id


class StoreFullError(StoreError):
    """The disk under the store is full; nothing was committed."""

    errno = _errno.ENOSPC


class AliasError(StoreError, ValueError):
    """An alias that cannot be set: a bad name, or a target that is not a version."""

    errno = _errno.EINVAL


class ReservedAliasError(AliasError):
    """`latest` and `best` are maintained by ckptfs itself."""

    errno = _errno.EPERM


class SettingError(StoreError, ValueError):
    """An unknown project setting or a value of the wrong kind."""

    errno = _errno.EINVAL


class AccessError(StoreError, ValueError):
    """A grant that cannot be made: an unknown role, user or group, or one that would
    leave the store without an admin."""

    errno = _errno.EINVAL


class AccessDeniedError(StoreError):
    """The caller's role on the project is too low for what it asked (docs/access.md)."""

    errno = _errno.EACCES

    def __init__(self, message, actor=None, project=None, needed=None, operation=None,
                 path=None):
        super().__init__(message)
        self.actor = actor or {}
        self.project = project
        self.needed = needed
        self.operation = operation
        self.path = path


class JournalDamagedError(StoreError):
    """The journal's last line is damaged and the index committed it: a write would cut
    a committed entry off, so the store refuses to write."""


class ChunkKeyError(StoreFormatError):
    """`secret.chunk_id_key` in ckptfs.toml is not the key this store's chunks were named
    with (it was changed, or the file is another store's)."""


class PackMissingError(IntegrityError):
    """A pack file the index pointed at is gone: damage, or a garbage collection in
    another process moved its records meanwhile (readers look the location up again)."""


class VersionDeletedError(VersionExistsError):
    """The name belongs to a deleted version: names are never reused."""


class ChunksReclaimedError(StoreError):
    """An import deduplicated against chunks that a concurrent garbage collection
    reclaimed before the import committed. The import path retries once from scratch."""

    errno = _errno.EAGAIN


class RetentionError(SettingError):
    """A retention policy that cannot be set: an unknown rule or a bad value."""


class DeletionRefusedError(StoreError):
    """A version that must be kept: it has an alias, or a kept version descends from it."""

    errno = _errno.EPERM


class GcBusyError(StoreError):
    """Another garbage collection is running on the store."""

    errno = _errno.EBUSY


class EncryptionKeyError(StoreError):
    """The key of an encrypted store is missing, unreadable, malformed or another store's."""

    errno = _errno.EACCES


class SigningKeyError(StoreError):
    """The configured signing key cannot be used: nothing is sealed unsigned instead."""

    errno = _errno.EACCES


def read_key_material(path: str, what: str, error: type[StoreError], limit: int) -> bytes:
    """The first `limit` bytes of a key file. FileNotFoundError if it is missing (the
    caller says what to do); `error` (a StoreError class) if it cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read(limit)
    except FileNotFoundError:
        raise
    except IsADirectoryError:
        raise error(f"{what} {path} is a directory, not a key file") from None
    except PermissionError:
        raise error(f"{what} {path} cannot be read: permission denied") from None
    except OSError as e:
        raise error(f"{what} {path} cannot be read: {e.strerror}") from None
