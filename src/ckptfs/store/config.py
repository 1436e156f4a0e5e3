"""The store's settings file, `STORE/ckptfs.toml`."""
import os
import secrets
import tomllib
from dataclasses import dataclass, field
from datetime import datetime, timezone

import tomli_w

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


@dataclass
class GcSettings:
    # `ckptfs gc` rewrites a pack whose live records fill less than this fraction of it
    # (copying them into a new pack, then deleting the old one); a pack above it keeps
    # its dead records on disk until more of it dies. 0 never rewrites (only packs with
    # nothing live are dropped); 1 rewrites every pack with any dead record.
    rewrite_below: float = 0.5


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
            "gc": vars(self.gc),
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
    def load(cls, store_path: str) -> "StoreConfig":
        path = os.path.join(store_path, CONFIG_NAME)
        if not os.path.isdir(store_path):
            raise NotAStoreError(f"{store_path}: no such store (create one with `ckptfs init`)")
        try:
            with open(path, "rb") as f:
                doc = tomllib.load(f)
        except FileNotFoundError:
            raise NotAStoreError(
                f"{store_path} is not a ckptfs store: it has no {CONFIG_NAME} "
                "(create one with `ckptfs init`)") from None
        except tomllib.TOMLDecodeError as e:
            raise StoreFormatError(f"{path} is not valid TOML: {e}") from None
        fmt = doc.get("format")
        if not isinstance(fmt, int):
            raise StoreFormatError(f"{path} has no valid 'format' number")
        if fmt > FORMAT_VERSION:
            raise StoreFormatError(
                f"{store_path} has store format {fmt}, newer than this ckptfs supports "
                f"({FORMAT_VERSION}): upgrade ckptfs to use it")
        try:
            config = cls(
                chunk_id_key=bytes.fromhex(doc["secret"]["chunk_id_key"]),
                format=fmt,
                created=doc.get("created", ""),
                chunking=ChunkingSettings(**doc.get("chunking", {})),
                compression=CompressionSettings(**doc.get("compression", {})),
                packs=PackSettings(**doc.get("packs", {})),
                gc=GcSettings(**doc.get("gc", {})),
                encryption=_table(EncryptionSettings, doc.get("encryption")),
                signing=_table(SigningSettings, doc.get("signing")),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise StoreFormatError(f"{path} is malformed: {e}") from None
        rewrite_below = config.gc.rewrite_below
        if isinstance(rewrite_below, bool) or not isinstance(rewrite_below, (int, float)) \
                or not 0 <= rewrite_below <= 1:
            raise StoreFormatError(f"{path}: gc.rewrite_below must be a number from 0 to 1, "
                                   f"not {rewrite_below!r}")
        if config.encryption is not None and config.encryption.cipher != CIPHER:
            raise StoreFormatError(f"{path}: unknown cipher {config.encryption.cipher!r} in "
                                   f"[encryption] (this ckptfs knows {CIPHER!r})")
        return config

    def save(self, store_path: str) -> None:
        """Write ckptfs.toml atomically (a new file renamed over the old), mode 0600: it
        holds the chunk-id secret."""
        tmp = os.path.join(store_path, CONFIG_NAME + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.to_toml())
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, os.path.join(store_path, CONFIG_NAME))


def _table(cls, table):
    """A settings table that is absent in stores made before it existed: None."""
    return None if table is None else cls(**table)
