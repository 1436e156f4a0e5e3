"""The store's settings file, `STORE/ckptfs.toml` (the backend's object `ckptfs.toml`)."""
import os
import re
import secrets
import tomllib
from dataclasses import dataclass, field
from datetime import datetime, timezone

import tomli_w

from .backend import Backend, ObjectMissingError
from .errors import NotAStoreError, StoreFormatError

# Store formats: 1, the first; 2, pack records may be encrypted (docs/format.md). A store
# is written as format 1 unless it is encrypted, so that an older ckptfs, which would
# take ciphertext for data, refuses an encrypted store instead of reading it.
PLAIN_FORMAT = 1
ENCRYPTED_FORMAT = 2
FORMAT_VERSION = ENCRYPTED_FORMAT  # the newest format this ckptfs reads
CONFIG_NAME = "ckptfs.toml"
CIPHER = "aes-256-gcm"


@dataclass
class ChunkingSettings:
    # Content-defined chunking (FastCDC) of ordinary files. Defaults measured on the
    # shared corpus: see docs/benchmarks.md.
    min_size: int = 256 * 1024
    avg_size: int = 1024 * 1024
    max_size: int = 4 * 1024 * 1024
    # Tensors inside safetensors files are cut into fixed blocks aligned to the tensor
    # start, so block i of a tensor lines up with block i of the same tensor in the
    # previous checkpoint (what the XOR-delta codec needs).
    tensor_block: int = 1024 * 1024


@dataclass
class CompressionSettings:
    level: int = 3
    # A chunk (or byte plane) is stored raw unless zstd saves at least this fraction.
    min_saving: float = 0.03
    # XOR-delta of float tensors against the same tensor of the run's previous version.
    delta: bool = True


@dataclass
class PackSettings:
    target_size: int = 128 * 1024 * 1024


SHARED_GRACE_SECONDS = 24 * 3600  # like kopia's (24 h) and rustic's (23 h) safety margin


@dataclass
class GcSettings:
    # `ckptfs gc` rewrites a pack whose live records fill less than this fraction of it
    # (copying them into a new pack, then deleting the old one); a pack above it keeps
    # its dead records on disk until more of it dies. 0 never rewrites (only packs with
    # nothing live are dropped); 1 rewrites every pack with any dead record.
    rewrite_below: float = 0.5
    # Seconds a pack gc retired (its records copied elsewhere, or all dead) stays before
    # a later gc deletes it, and the age a pack nothing references must reach before gc
    # takes it for the leftover of a writer that died. None: the default of the backend
    # (`grace_for`): a day on a shared backend (S3: many machines, whose indexes and
    # readers may still point into a retired pack, and whose ingests write packs that
    # no journal entry names yet), none on a local store (its gc sees every ingest).
    grace_seconds: float | None = None

    def grace_for(self, shared: bool) -> float:
        if self.grace_seconds is not None:
            return float(self.grace_seconds)
        return SHARED_GRACE_SECONDS if shared else 0.0


@dataclass
class EncryptionSettings:
    """Pack records are encrypted with the key in `key_file` (docs/encryption.md)."""
    key_file: str   # absolute path; CKPTFS_KEY_FILE overrides it
    key_check: str  # proves a key is this store's without revealing it (encryption.py)
    cipher: str = CIPHER


@dataclass
class SigningSettings:
    """Sealed versions are signed with the Ed25519 private key in `key_file`."""
    key_file: str   # absolute path of a PEM file


@dataclass
class StoreConfig:
    chunk_id_key: bytes
    format: int = PLAIN_FORMAT
    created: str = ""
    chunking: ChunkingSettings = field(default_factory=ChunkingSettings)
    compression: CompressionSettings = field(default_factory=CompressionSettings)
    packs: PackSettings = field(default_factory=PackSettings)
    gc: GcSettings = field(default_factory=GcSettings)
    encryption: EncryptionSettings | None = None
    signing: SigningSettings | None = None

    @classmethod
    def new(cls, encryption: EncryptionSettings | None = None) -> "StoreConfig":
        return cls(chunk_id_key=secrets.token_bytes(32),
                   format=ENCRYPTED_FORMAT if encryption else PLAIN_FORMAT,
                   created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   encryption=encryption)

    def to_toml(self) -> str:
        doc = {
            "format": self.format,
            "created": self.created,
            "chunking": vars(self.chunking),
            "compression": vars(self.compression),
            "packs": vars(self.packs),
            "gc": {k: v for k, v in vars(self.gc).items() if v is not None},
            "secret": {"chunk_id_key": self.chunk_id_key.hex()},
        }
        if self.encryption is not None:
            doc["encryption"] = vars(self.encryption)
        if self.signing is not None:
            doc["signing"] = vars(self.signing)
        header = ("# ckptfs store settings. `secret.chunk_id_key` keys the chunk ids:\n"
                  "# keep it private and never change it (docs/format.md).\n")
        return header + tomli_w.dumps(doc)

    @classmethod
    def load(cls, backend: Backend) -> "StoreConfig":
        path = backend.describe(CONFIG_NAME)
        problem = backend.root_problem()
        if problem:
            # Only where there is nothing: not when the storage is down or refuses us.
            hint = " (create a store with `ckptfs init`)" if "no such" in problem else ""
            raise NotAStoreError(f"{backend.location}{problem}{hint}")
        try:
            doc = tomllib.loads(backend.get(CONFIG_NAME).decode())
        except ObjectMissingError:
            raise NotAStoreError(
                f"{backend.location} is not a ckptfs store: it has no {CONFIG_NAME} "
                "(create one with `ckptfs init`)") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise StoreFormatError(f"{path} is not valid TOML: {e}") from None
        fmt = doc.get("format")
        if not isinstance(fmt, int) or isinstance(fmt, bool):
            raise StoreFormatError(f"{path} has no valid 'format' number")
        if fmt > FORMAT_VERSION:
            raise StoreFormatError(
                f"{backend.location} has store format {fmt}, newer than this ckptfs supports "
                f"({FORMAT_VERSION}): upgrade ckptfs to use it")
        return cls._from_document(doc, fmt, path)

    @classmethod
    def from_file(cls, path: str) -> "StoreConfig":
        """Settings from a local copy of a store's ckptfs.toml (a cache dir's)."""
        with open(path, "rb") as f:
            doc = tomllib.load(f)
        return cls._from_document(doc, doc["format"], path)

    @classmethod
    def _from_document(cls, doc: dict, fmt: int, path: str) -> "StoreConfig":
        """Every setting checked against its rule (SETTING_RULES); the first that breaks
        one is named in the error, with the rule."""
        try:
            tables = {name: _checked_table(doc, name) for name in SETTING_TABLES}
            _check_chunk_sizes(tables["chunking"])
            secret = doc.get("secret")
            key_hex = secret.get("chunk_id_key") if isinstance(secret, dict) else None
            if not isinstance(key_hex, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", key_hex):
                raise _BadSetting("secret.chunk_id_key", CHUNK_ID_KEY_RULE, key_hex,
                                  missing=key_hex is None)
            created = doc.get("created", "")
            if not isinstance(created, str):
                raise _BadSetting("created", "a date and time as text", created)
        except _BadSetting as bad:
            raise StoreFormatError(f"{path}: {bad}") from None
        encryption, signing = tables["encryption"], tables["signing"]
        return cls(
            chunk_id_key=bytes.fromhex(key_hex),
            format=fmt,
            created=created,
            chunking=ChunkingSettings(**tables["chunking"]),
            compression=CompressionSettings(**tables["compression"]),
            packs=PackSettings(**tables["packs"]),
            gc=GcSettings(**tables["gc"]),
            encryption=None if encryption is None else EncryptionSettings(**encryption),
            signing=None if signing is None else SigningSettings(**signing),
        )

    def save(self, backend: Backend) -> None:
        """Write ckptfs.toml atomically (locally a new file renamed over the old), private
        to the store's owner (mode 0600): it holds the chunk-id secret."""
        backend.put(CONFIG_NAME, self.to_toml().encode(), secret=True)


# -- checking settings ---------------------------------------------------------------------
class _BadSetting(Exception):
    """A setting that breaks its rule; str() names both."""

    def __init__(self, name: str, rule: str, value=None, missing: bool = False):
        found = "it is missing" if missing else f"not {value!r}"
        super().__init__(f"{name} must be {rule}, {found}")


class _UnknownSetting(_BadSetting):
    def __init__(self, name: str, known):
        Exception.__init__(self, f"{name} is not a setting (known: {', '.join(known)})")


def _int_in(low: int, high: int):
    return (lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v <= high,
            f"a whole number from {low} to {high}")


def _number_in(low: float, high: float):
    return (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and low <= v <= high,
            f"a number from {low} to {high}")


BOOLEAN = (lambda v: isinstance(v, bool), "true or false")
ABSOLUTE_PATH = (lambda v: isinstance(v, str) and os.path.isabs(v), "an absolute path")
HEX_TEXT = (lambda v: isinstance(v, str) and re.fullmatch(r"[0-9a-fA-F]+", v) is not None,
            "hexadecimal text")
CIPHER_NAME = (lambda v: v == CIPHER, f"{CIPHER!r} (the cipher this ckptfs knows)")
CHUNK_ID_KEY_RULE = ("64 hexadecimal digits (32 bytes; it keys every chunk id: restore the "
                     "original, never make a new one)")
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

# table -> {setting: (test, rule)}. The FastCDC bounds are pyfastcdc's own.
SETTING_TABLES = {
    "chunking": {"min_size": _int_in(64, 1 * MiB), "avg_size": _int_in(256, 4 * MiB),
                 "max_size": _int_in(1 * KiB, 16 * MiB), "tensor_block": _int_in(4 * KiB, 1 * GiB)},
    "compression": {"level": _int_in(-7, 22), "min_saving": _number_in(0, 1),
                    "delta": BOOLEAN},
    "packs": {"target_size": _int_in(1 * MiB, 64 * GiB)},
    "gc": {"rewrite_below": _number_in(0, 1), "grace_seconds": _number_in(0, 30 * 24 * 3600)},
    "encryption": {"key_file": ABSOLUTE_PATH, "key_check": HEX_TEXT, "cipher": CIPHER_NAME},
    "signing": {"key_file": ABSOLUTE_PATH},
}
# Tables a store may lack (made before they existed, or the feature is off): None.
OPTIONAL_TABLES = ("encryption", "signing")
# Settings a table may leave out, the dataclass default applying (None: any of them).
REQUIRED = {"encryption": ("key_file", "key_check"), "signing": ("key_file",)}


def _checked_table(doc: dict, name: str) -> dict | None:
    """The table `name` of the settings, each value checked; None for an optional table
    that is absent (encryption, signing: stores made before them lack them)."""
    rules = SETTING_TABLES[name]
    table = doc.get(name)
    if table is None:
        return None if name in OPTIONAL_TABLES else {}
    if not isinstance(table, dict):
        raise _BadSetting(f"[{name}]", "a table of settings", table)
    for key, value in table.items():
        if key not in rules:
            raise _UnknownSetting(f"{name}.{key}", rules)
        test, rule = rules[key]
        if not test(value):
            raise _BadSetting(f"{name}.{key}", rule, value)
    for key in REQUIRED.get(name, ()):
        if key not in table:
            raise _BadSetting(f"{name}.{key}", rules[key][1], missing=True)
    return table


def _check_chunk_sizes(chunking: dict) -> None:
    sizes = {**vars(ChunkingSettings()), **chunking}
    if not sizes["min_size"] <= sizes["avg_size"] <= sizes["max_size"]:
        raise _BadSetting("chunking.min_size, avg_size, max_size",
                          "in increasing order (min_size <= avg_size <= max_size)",
                          (sizes["min_size"], sizes["avg_size"], sizes["max_size"]))
