"""Version manifests: the list of entries of a sealed version, stored as a pack record.

A manifest is zstd-compressed JSON (schema `ckptfs.manifest/1`):

    {"schema": "ckptfs.manifest/1", "project": …, "run": …, "version": …,
     "root": {"mode": …, "mtime_ns": …}, "digest": "<sha256 hex>",
     "entries": [ {"path": "sub/model.safetensors", "type": "file", "mode": 420,
                   "mtime_ns": …, "size": …, "sha256": …, "stored": …,
                   "chunks": [["<chunk id hex>", <raw length>], …]},
                  {"path": "sub", "type": "dir", "mode": …, "mtime_ns": …},
                  {"path": "latest.pt", "type": "symlink", "target": "…", …} ]}

Paths are relative, '/'-separated; names that are not UTF-8 are kept with Python's
surrogateescape and written as JSON \\udcXX escapes.
"""
import hashlib
import json

import zstandard

SCHEMA = "ckptfs.manifest/1"


def version_digest(entries: list[dict]) -> str:
    """SHA-256 over "path NUL size NUL sha256 LF" of every file and symlink, by path.

    A symlink counts with the length and SHA-256 of its target string."""
    h = hashlib.sha256()
    for entry in sorted(entries, key=lambda e: e["path"].encode("utf-8", "surrogateescape")):
        if entry["type"] == "file":
            size, digest = entry["size"], entry["sha256"]
        elif entry["type"] == "symlink":
            target = entry["target"].encode("utf-8", "surrogateescape")
            size, digest = len(target), hashlib.sha256(target).hexdigest()
        else:
            continue
        h.update(entry["path"].encode("utf-8", "surrogateescape"))
        h.update(b"\0%d\0%s\n" % (size, digest.encode()))
    return h.hexdigest()


def encode_manifest(doc: dict) -> bytes:
    raw = json.dumps(doc, sort_keys=True, ensure_ascii=True, separators=(",", ":")).encode()
    return raw


def compress_manifest(raw: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=9).compress(raw)


def decode_manifest(raw: bytes) -> dict:
    doc = json.loads(raw)
    if doc.get("schema") != SCHEMA:
        raise ValueError(f"unknown manifest schema {doc.get('schema')!r}")
    return doc
