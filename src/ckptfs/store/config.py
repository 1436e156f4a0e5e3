"""The store's settings file, `STORE/ckptfs.toml`."""
import os
import secrets
import tomllib
from dataclasses import dataclass, field
from datetime import datetime, timezone

import tomli_w

from .errors import NotAStoreError, StoreFormatError

FORMAT_VERSION = 1
CONFIG_NAME = "ckptfs.toml"


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
class StoreConfig:
    chunk_id_key: bytes
    format: int = FORMAT_VERSION
    created: str = ""
    chunking: ChunkingSettings = field(default_factory=ChunkingSettings)
    compression: CompressionSettings = field(default_factory=CompressionSettings)
    packs: PackSettings = field(default_factory=PackSettings)
    gc: GcSettings = field(default_factory=GcSettings)

    @classmethod
    def new(cls) -> "StoreConfig":
        return cls(chunk_id_key=secrets.token_bytes(32),
                   created=datetime.now(timezone.utc).isoformat(timespec="seconds"))

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
            )
        except (KeyError, TypeError, ValueError) as e:
            raise StoreFormatError(f"{path} is malformed: {e}") from None
        rewrite_below = config.gc.rewrite_below
        if isinstance(rewrite_below, bool) or not isinstance(rewrite_below, (int, float)) \
                or not 0 <= rewrite_below <= 1:
            raise StoreFormatError(f"{path}: gc.rewrite_below must be a number from 0 to 1, "
                                   f"not {rewrite_below!r}")
        return config
