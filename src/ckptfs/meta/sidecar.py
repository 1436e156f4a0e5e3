"""The version sidecar `projects/<p>/<r>/<v>.json` (schema `ckptfs.version/1`) and the
run sidecar `projects/<p>/<r>/run.json` (schema `ckptfs.run/1`).

Both are views: built from the store's catalog documents (what the seal recorded) and,
for a version, its file entries; tags follow the aliases as they move. Pretty-printed
JSON (two-space indent, `"key": value`, so `grep '"version": "v3"'` works) with a fixed
key order: identity first, the file list last. docs/sidecar.md describes every field.
"""
import json

import orjson

SCHEMA = "ckptfs.version/1"
RUN_SCHEMA = "ckptfs.run/1"

# Top-level keys in the order a reader wants them; keys not listed follow, sorted.
KEY_ORDER = ("schema", "project", "run", "version", "sealed_at", "sealed_by", "digest",
             "signature", "deleted_at", "deletion", "kind", "inbox", "tags", "aliases", "notes", "step",
             "epoch", "metrics", "best_by", "lineage", "storage", "provenance", "imported_from",
             "extracted", "scan", "warnings", "files", "symlinks")
CATALOG_ONLY = ("seq", "file_count")  # kept for the catalog, not shown in the sidecar


def ordered(doc: dict) -> dict:
    known = {k: doc[k] for k in KEY_ORDER if k in doc}
    rest = {k: doc[k] for k in sorted(doc) if k not in known and k not in CATALOG_ONLY}
    return {**known, **rest}


def file_list(entries: list[dict]) -> tuple[list[dict], list[dict]]:
    """(files, symlinks) of a version's entries, as the sidecar shows them."""
    files = [{"path": e["path"], "size": e["size"], "mode": e["mode"], "sha256": e.get("sha256"),
              "stored_bytes": e.get("stored", 0)}
             for e in entries if e["type"] == "file"]
    symlinks = [{"path": e["path"], "target": e["target"]} for e in entries if e["type"] == "symlink"]
    return files, symlinks


def version_sidecar(doc: dict, entries: list[dict]) -> dict:
    """The sidecar of a version: its catalog document (with current tags) and files."""
    files, symlinks = file_list(entries)
    # `signature`: null for a version sealed without a signing key.
    return ordered({"signature": None, **doc, "schema": SCHEMA, "files": files,
                    "symlinks": symlinks})


def tombstone_sidecar(doc: dict, entries: list[dict]) -> dict:
    """The sidecar of a deleted version as it was (files and SHA-256 included), with
    `deleted_at` and `deletion` (reason, policy, manual, uid, user): `doc` is
    `Store.tombstone_document`, `entries` its manifest's."""
    return version_sidecar(doc, entries)


def run_sidecar(project: str, run: str, docs: list[dict], aliases: dict[str, str],
                deleted: list[dict] = ()) -> dict:
    """run.json: every version of a run in sealing order, with what it scored; deleted
    ones (`deleted` documents, from `Store.tombstone_document`) stay, marked as such."""
    versions = []
    for doc in sorted([*docs, *deleted], key=lambda d: d["seq"]):
        storage = doc.get("storage") or {}
        gone = {"deleted": True, "deleted_at": doc["deleted_at"]} if "deleted_at" in doc else {}
        versions.append({
            "version": doc["version"], "kind": doc.get("kind", "checkpoint"),
            "sealed_at": doc["sealed_at"],
            "step": doc.get("step"), "epoch": doc.get("epoch"),
            "metrics": doc.get("metrics") or {},
            "logical_bytes": storage.get("logical_bytes"),
            "stored_bytes": storage.get("new_stored_bytes"),
            "parent": (doc.get("lineage") or {}).get("parent"),
            "tags": doc.get("tags") or [],
            **gone,
        })
    return {"schema": RUN_SCHEMA, "project": project, "run": run,
            "aliases": dict(sorted(aliases.items())), "versions": versions}


def render(doc: dict) -> bytes:
    """Pretty JSON bytes. Names that are not UTF-8 (kept with surrogateescape) are written
    as their original bytes, as a shell would show them."""
    try:
        return orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)
    except TypeError:  # orjson refuses lone surrogates
        text = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
        return text.encode("utf-8", "surrogateescape")


def sidecar_of(store, project: str, run: str, version: str, deleted: bool = False) -> dict:
    """The sidecar of a sealed version as the mount shows it (NotFoundError if none);
    with `deleted`, a deleted version's tombstone sidecar too."""
    docs = {d["version"]: d for d in store.catalog_documents(project, run)}
    if version not in docs:
        tomb = store.tombstone(project, run, version) if deleted else None
        if tomb is not None:
            return tombstone_sidecar(store.tombstone_document(tomb), store.tombstone_entries(tomb))
        store.require_version(project, run, version)  # raises the usual NotFoundError
    return version_sidecar(docs[version], store.walk(project, run, version))
