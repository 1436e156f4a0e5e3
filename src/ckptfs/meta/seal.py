"""Sealing a checkpoint directory with its metadata: the one ingest path.

`archive_directory` is what `ckptfs import` and the mount's seal both call:

    read what the files say (extract.py)  \
    who wrote them (provenance.py)          > merged metadata -> project policies
    the user's own ckptfs.json (user.py)  /   + pickle scan    -> Store.import_directory
                                                (scan.py)

Sources merge in this order, later wins: extracted facts < provenance < ckptfs.json.
Nothing in the directory can make metadata fail the seal: a malformed input is skipped
and named in the sidecar's `warnings`. Only a project policy can refuse a version (its
schema, or `unsafe_pickles=refuse` when a pickle imports a global off the safe list),
and that is checked before any byte is stored (SealRefused).
"""
import copy
import os
from datetime import datetime, timezone

from ckptfs.store.ingest import walk_source
from ckptfs.store.parentage import with_default_parent
from ckptfs.store.users import user_name

from .best import best_by
from .extract import extract_facts
from .fields import json_safe
from .provenance import DEFAULT_ENV_ALLOW, describe_this_process, lineage_from_provenance
from .scan import DEFAULT_POLICY, refuse_if_unsafe, scan_directory, scan_warnings
from .schema import validate_version
from .sidecar import file_list, version_sidecar
from .user import read_user_metadata


def deep_merge(base: dict, over: dict) -> dict:
    """`over` on top of `base`: objects merge key by key, anything else is replaced."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def env_allow_list(store, project: str) -> list[str]:
    return store.project_settings(project).get("env_allow", list(DEFAULT_ENV_ALLOW))


def implied_lineage(provenance: dict) -> dict:
    """What the writing process says about lineage. `ckptfs import` is not the training
    process: its code commit (the directory it runs in) and host count, its Python and
    packages (ckptfs's own) do not."""
    lineage = lineage_from_provenance(provenance)
    if provenance.get("via") == "import":
        environment = {k: v for k, v in (lineage.get("environment") or {}).items() if k == "host"}
        lineage = {**lineage, "environment": environment} if environment else \
            {k: v for k, v in lineage.items() if k != "environment"}
    return lineage


def build_metadata(store, src: str, project: str, run: str, provenance: dict | None,
                   recorded: dict | None = None, *, read_lineage: dict | None = None,
                   annotations: dict | None = None, system: dict | None = None) -> dict:
    """The metadata sealed with a version (its sidecar minus identity, storage and files).

    `recorded` is metadata recorded elsewhere that outranks what the files and the
    writing process say: an exported version's own sidecar, when `ckptfs import` brings
    it into this store (its metrics, lineage, provenance…, and `imported_from`). Its
    top-level keys replace this seal's whole; its `warnings` are added to this seal's.

    From the mount: `read_lineage` is what the writing process read ({"parent": …,
    "inputs": […]}, fs/reads.py), ranked with its provenance; `annotations` are the
    user's (`ckptfs.annotate`), ranked above ckptfs.json; `system` sets `kind` and
    `inbox` (where in the run directory the version was written)."""
    facts, warnings = extract_facts(src)
    user, user_warnings = read_user_metadata(src)
    warnings = warnings + user_warnings
    user = deep_merge(user, annotations or {})
    provenance = deep_merge(provenance or {}, user.pop("provenance", None) or {})
    extracted = facts.pop("extracted", {})
    implied = deep_merge(implied_lineage(provenance), read_lineage or {})
    merged = deep_merge(deep_merge(facts, {"lineage": implied}), user)
    lineage = merged.get("lineage") or {}
    if (user.get("lineage") or {}).get("parent"):
        lineage["parent"] = dict(lineage["parent"], source="explicit")
    tags = set(merged.get("tags") or [])
    for name in sorted(tags & {"latest", "best"}):
        tags.discard(name)
        warnings.append(f"ckptfs.json: tag {name!r} is an alias ckptfs maintains: ignored")
    scan = scan_directory(src, store.project_settings(project).get("pickle_allow", ()))
    warnings += scan_warnings(scan)
    uid = provenance.get("uid", os.getuid())
    meta = {
        **(system or {}),
        "sealed_by": {"uid": uid, "user": user_name(uid)},
        "tags": sorted(tags),
        "notes": merged.get("notes"),
        "step": merged.get("step"),
        "epoch": merged.get("epoch"),
        "metrics": dict(sorted((merged.get("metrics") or {}).items())),
        "best_by": best_by(lineage, extracted),
        "lineage": lineage,
        "provenance": provenance,
        "extracted": extracted,
        "scan": scan,
        "warnings": warnings,
    }
    if recorded:
        meta.update({k: copy.deepcopy(v) for k, v in recorded.items() if k != "warnings"})
        meta["warnings"] = warnings + list(recorded.get("warnings") or [])
    warn_if_parent_missing(store, meta["lineage"], meta["warnings"])
    return unicode_only(meta)


def unicode_only(value):
    """`value` with every string (and key) UTF-8 encodable: a file name that is not
    UTF-8 (a surrogate escape) may be named in the metadata (extracted facts, scan
    findings), which the index stores as UTF-8 JSON; there it keeps U+FFFD for the odd
    bytes. The manifest keeps the real name (docs/format.md)."""
    if isinstance(value, str):
        return json_safe(value)
    if isinstance(value, dict):
        return {unicode_only(k): unicode_only(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unicode_only(v) for v in value]
    return value


def warn_if_parent_missing(store, lineage: dict | None, warnings: list[str]):
    """A parent named explicitly (or kept from another store) may not be here: the
    lineage keeps it as given, and a warning says so."""
    parent = (lineage or {}).get("parent")
    if not parent:
        return
    if store.version_record(parent["project"], parent["run"], parent["version"]) is None:
        ref = f"{parent['project']}/{parent['run']}/{parent['version']}"
        deleted = store.tombstone(parent["project"], parent["run"], parent["version"])
        warnings.append(f"lineage.parent {ref} was deleted on {deleted['deleted_at'][:10]} "
                        "(kept as given)" if deleted else
                        f"lineage.parent {ref} is not in this store (kept as given)")


def preview_sidecar(store, src: str, project: str, run: str, version: str, meta: dict) -> dict:
    """The sidecar as it will be, for schema validation before anything is stored: what
    only the ingest knows (the digest, SHA-256 and stored bytes, storage figures) is
    absent; the parent is the one the seal will record."""
    as_sealed = with_default_parent(meta, project, run, store.newest_checkpoint)
    doc = {**meta, "lineage": as_sealed.get("lineage") or {}, "project": project, "run": run, "version": version,
           "sealed_at": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
           "aliases": [], "tags": meta.get("tags") or []}
    sidecar = version_sidecar(doc, _source_entries(src))
    for f in sidecar["files"]:
        del f["sha256"], f["stored_bytes"]
    return sidecar


def _source_entries(src: str) -> list[dict]:
    """The files and symlinks of `src` as the sidecar will list them (no SHA-256 yet)."""
    entries = []
    for found in walk_source(src)[1]:
        if found.kind == "symlink":
            entries.append({"path": found.path, "type": "symlink",
                            "target": os.readlink(found.abs_path)})
        elif found.kind == "file":
            entries.append({"path": found.path, "type": "file", "size": found.st.st_size,
                            "mode": found.st.st_mode & 0o7777})
    return entries


def archive_directory(store, src: str, project: str, run: str, version: str, *,
                      provenance: dict | None = None, progress=None, ingest=None,
                      token_of=None, recorded: dict | None = None, **mount_metadata):
    """Seal `src` as PROJECT/RUN/VERSION with its metadata (the import and the mount).

    `provenance` describes the process that wrote the files (the mount captures it at
    create time); without it, this process is the one recorded (and named in the journal
    and `sealed_by`). `recorded`: metadata that outranks what is read here (see
    `build_metadata`; an export's sidecar on import), as do the mount's `read_lineage`,
    `annotations` and `system`. Raises SealRefused (UnsafePickleError, SchemaViolation)
    before storing anything if a project policy refuses the version; an `ingest` begun
    earlier is then left as it is, for the next try."""
    if provenance is None:
        provenance = dict(describe_this_process(env_allow_list(store, project)), via="import")
    meta = build_metadata(store, src, project, run, provenance, recorded, **mount_metadata)
    policy = store.project_settings(project).get("unsafe_pickles", DEFAULT_POLICY)
    refuse_if_unsafe(meta["scan"], policy, project, f"{project}/{run}/{version}")
    schema = store.project_schema(project)
    if schema is not None:
        validate_version(schema, preview_sidecar(store, src, project, run, version, meta),
                         project, f"{project}/{run}/{version}")
    # The journal names the user who wrote the version (the mount's writer), not the daemon.
    actor = {"uid": provenance["uid"], "pid": provenance.get("pid")} \
        if isinstance(provenance.get("uid"), int) else None
    return store.import_directory(src, project, run, version, progress=progress,
                                  ingest=ingest, token_of=token_of, metadata=meta, actor=actor)


__all__ = ["archive_directory", "build_metadata", "deep_merge", "file_list"]
