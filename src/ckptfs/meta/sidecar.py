"""The version sidecar `projects/<p>/<r>/<v>.json` (schema `ckptfs.version/1`).

Pretty-printed JSON with a stable key order. This holds identity, storage figures, the
files with their SHA-256 and the version digest; lineage, metrics and provenance join it
as the metadata layer grows (docs/sidecar.md).
"""
import json

SCHEMA = "ckptfs.version/1"


def version_sidecar(record: dict, entries: list[dict]) -> bytes:
    files = [{"path": e["path"], "size": e["size"], "mode": e["mode"], "sha256": e["sha256"],
              "stored_bytes": e.get("stored", 0)}
             for e in entries if e["type"] == "file"]
    symlinks = [{"path": e["path"], "target": e["target"]} for e in entries if e["type"] == "symlink"]
    logical = record["logical_bytes"]
    doc = {
        "schema": SCHEMA,
        "project": record["project"],
        "run": record["run"],
        "version": record["version"],
        "sealed_at": record["sealed_at"],
        "digest": record["digest"],
        "storage": {
            "logical_bytes": logical,
            "new_stored_bytes": record["new_stored_bytes"],
            "new_unique_bytes": record["new_raw_bytes"],
            "dedup_ratio": round(logical / record["new_raw_bytes"], 3) if record["new_raw_bytes"] else None,
            "delta_parent": record.get("delta_parent"),
        },
        "files": files,
        "symlinks": symlinks,
    }
    return (json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode(
        "utf-8", "surrogateescape")
