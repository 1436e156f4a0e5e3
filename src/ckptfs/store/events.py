"""Journal events: every type the store writes, its constructor, and `apply`, the one
function that reflects an entry in the index (a commit, a catch-up after a crash, a
replay by `rebuild-index`: all the same code, so they give the same index).

An entry is the event's own fields (`EVENT_FIELDS`) plus what the journal adds (`seq`,
`prev`, `time`, `uid`, `pid`, `user`). docs/format.md lists the same table; a test
(tests/test_format_events.py) checks that the two agree.

Three types name packs (`version.sealed`, `store.repaired`, `packs.rewritten`): applying
them needs the records those packs hold, which `apply` gets from a `Records` (replay.py
reads them from the packs or their index objects; a commit gives the ones it has just
written).
"""
from typing import Protocol

from .damage import record_lost_version
from .errors import IntegrityError
from .index import Index, version_key
from .journal import encode_entry, entry_hash
from .names import ALL_PROJECTS

SIGNING_SETTING = "signing"   # the store-wide setting (project `*`) of the key history

# type -> its own fields (`signature` of version.sealed only when the store signs).
EVENT_FIELDS = {
    "version.sealed": ("project", "run", "version", "manifest", "digest", "packs", "files",
                       "logical_bytes", "new_raw_bytes", "new_stored_bytes", "delta_parent",
                       "signature"),
    "alias.set": ("project", "run", "alias", "version", "previous"),
    "alias.removed": ("project", "run", "alias", "version"),
    "project.settings": ("project", "settings"),
    "project.schema": ("project", "schema"),
    "access.granted": ("project", "principal", "role", "previous"),
    "access.revoked": ("project", "principal", "previous"),
    "access.enforcement": ("enabled",),
    "access.refused": ("operation", "project", "path", "role"),
    "retention.set": ("project", "run", "policy"),
    "version.deleted": ("project", "run", "version", "digest", "reason", "policy", "manual"),
    "key.set": ("algorithm", "key_id", "public_key"),
    "key.unset": ("key_id",),
    "store.repaired": ("packs", "restored", "lost"),
    "packs.rewritten": ("packs", "retired"),
}
OPTIONAL_FIELDS = {"version.sealed": ("signature",)}


def _event(kind: str, **fields) -> dict:
    expected = set(EVENT_FIELDS[kind]) - set(OPTIONAL_FIELDS.get(kind, ()))
    if not expected <= fields.keys() <= set(EVENT_FIELDS[kind]):
        raise ValueError(f"event {kind} takes {EVENT_FIELDS[kind]}, not {tuple(fields)}")
    return {"type": kind, **fields}


# -- constructors ------------------------------------------------------------------------------
def version_sealed(project, run, version, *, manifest: str, digest: str, packs: list,
                   files: int, logical_bytes: int, new_raw_bytes: int, new_stored_bytes: int,
                   delta_parent: str | None, signature: dict | None = None) -> dict:
    return _event("version.sealed", project=project, run=run, version=version,
                  manifest=manifest, digest=digest, packs=packs, files=files,
                  logical_bytes=logical_bytes, new_raw_bytes=new_raw_bytes,
                  new_stored_bytes=new_stored_bytes, delta_parent=delta_parent,
                  **({"signature": signature} if signature else {}))


def alias_set(project, run, alias, version, previous) -> dict:
    return _event("alias.set", project=project, run=run, alias=alias, version=version,
                  previous=previous)


def alias_removed(project, run, alias, version) -> dict:
    return _event("alias.removed", project=project, run=run, alias=alias, version=version)


def project_settings(project, settings: dict) -> dict:
    return _event("project.settings", project=project, settings=settings)


def project_schema(project, schema: dict | None) -> dict:
    return _event("project.schema", project=project, schema=schema)


def access_granted(project, principal, role, previous) -> dict:
    return _event("access.granted", project=project, principal=principal, role=role,
                  previous=previous)


def access_revoked(project, principal, previous) -> dict:
    return _event("access.revoked", project=project, principal=principal, previous=previous)


def access_enforcement(enabled: bool) -> dict:
    return _event("access.enforcement", enabled=enabled)


def access_refused(operation, project, path, role) -> dict:
    return _event("access.refused", operation=operation, project=project, path=path, role=role)


def retention_set(project, run, policy: dict | None) -> dict:
    return _event("retention.set", project=project, run=run, policy=policy)


def version_deleted(project, run, version, *, digest, reason, policy, manual: bool) -> dict:
    return _event("version.deleted", project=project, run=run, version=version, digest=digest,
                  reason=reason, policy=policy, manual=manual)


def key_set(algorithm: str, key_id, public_key: str) -> dict:
    return _event("key.set", algorithm=algorithm, key_id=key_id, public_key=public_key)


def key_unset(key_id) -> dict:
    return _event("key.unset", key_id=key_id)


def store_repaired(packs: list, restored: int, lost: int) -> dict:
    return _event("store.repaired", packs=packs, restored=restored, lost=lost)


def packs_rewritten(packs: list, retired: list) -> dict:
    """A garbage collection's switch: the live records of the `retired` packs were
    copied into `packs` (new); every other record of the retired packs is dead."""
    return _event("packs.rewritten", packs=packs, retired=retired)


# -- applying ----------------------------------------------------------------------------------
class Records(Protocol):
    """The records of the packs an entry names, for applying it."""

    def index_records(self, index: Index, txn, entry: dict) -> None:
        """Put the records of the entry's packs into the index."""

    def manifest(self, index: Index, txn, entry: dict) -> dict:
        """The manifest of a sealed version (IntegrityError if it is lost)."""

    def index_packs(self, index: Index, txn, pack_ids: list) -> None:
        """Put every record of these packs into the index where it lacks the record,
        whether or not the entry's packs are scanned (a gc's new packs)."""


def apply(index: Index, txn, entry: dict, records: Records | None = None) -> None:
    """Reflect a journal entry in the index, and record it as applied. Types this
    ckptfs does not know are skipped. `records`: for the types that name packs."""
    kind = entry["type"]
    if kind in _NAME_PACKS:
        _NAME_PACKS[kind](index, txn, entry, records)
    elif kind in _APPLIERS:
        _APPLIERS[kind](index, txn, entry)
    index.set_applied(txn, entry["seq"], entry_hash(encode_entry(entry)))


def _apply_sealed(index: Index, txn, entry: dict, records: Records) -> None:
    records.index_records(index, txn, entry)
    try:
        manifest = records.manifest(index, txn, entry)
    except IntegrityError as e:
        # Salvage: the rest of the store stays readable; this version is known lost.
        record_lost_version(index, txn, entry, str(e))
    else:
        put_version(index, txn, entry, manifest)


def _apply_repaired(index: Index, txn, entry: dict, records: Records) -> None:
    records.index_records(index, txn, entry)


def _apply_rewritten(index: Index, txn, entry: dict, records: Records) -> None:
    """A gc's switch, the same in every index (the gc's own, another machine's catching
    up, a rebuilt one): whatever it finds in a retired pack is forgotten, then the new
    packs' records are indexed where it lacks them, so a copied record points at its
    copy and a dead one is gone. The retired packs are remembered with the entry's time:
    a gc deletes them once the grace period has passed (gc.py)."""
    retired = set(entry["retired"])
    index.forget_packs(txn, retired)
    records.index_packs(index, txn, entry["packs"])
    known = index.retired_packs(txn)
    known.update({pack_id: (entry["time"], entry["seq"]) for pack_id in retired})
    index.put_retired_packs(txn, known)
    index.put_int(txn, b"rewritten_seq", entry["seq"])


def put_version(index: Index, txn, entry: dict, manifest: dict) -> None:
    record = version_record(entry, manifest)
    index.put_version(txn, record, manifest["entries"])
    index.put_search_doc(txn, version_key(record["project"], record["run"], record["version"]),
                         search_document(record, manifest.get("meta") or {}))


def version_record(entry: dict, manifest: dict) -> dict:
    """The index's record of a sealed version (`versions`)."""
    record = {k: entry[k] for k in ("project", "run", "version", "manifest", "digest",
                                     "files", "logical_bytes", "new_raw_bytes",
                                     "new_stored_bytes", "delta_parent")}
    record.update(sealed_at=entry["time"], seq=entry["seq"], root=manifest["root"],
                  entries=len(manifest["entries"]))
    if entry.get("signature"):
        record["signature"] = entry["signature"]
    return record


def search_document(record: dict, meta: dict) -> dict:
    """The catalog document of a version from its index record and sealed metadata."""
    logical, unique = record["logical_bytes"], record["new_raw_bytes"]
    stored = record["new_stored_bytes"]
    doc = dict(meta)
    doc.update(
        project=record["project"], run=record["run"], version=record["version"],
        sealed_at=record["sealed_at"], seq=record["seq"], digest=record["digest"],
        file_count=record["files"],
        storage={
            "logical_bytes": logical,
            "new_stored_bytes": stored,
            "new_unique_bytes": unique,
            # How many logical bytes each newly stored byte stands for (dedup and
            # compression together), and the two factors apart.
            "dedup_ratio": round(logical / unique, 3) if unique else None,
            "compression_ratio": round(unique / stored, 3) if stored and unique else None,
            "delta_parent": record.get("delta_parent"),
        })
    if record.get("signature"):
        doc["signature"] = record["signature"]
    return doc


def _apply_alias_set(index: Index, txn, entry: dict) -> None:
    index.set_alias(txn, entry["project"], entry["run"], entry["alias"], entry["version"])


def _apply_alias_removed(index: Index, txn, entry: dict) -> None:
    index.delete_alias(txn, entry["project"], entry["run"], entry["alias"])


def _apply_settings(index: Index, txn, entry: dict) -> None:
    index.put_setting(txn, entry["project"], "settings", entry["settings"] or None)


def _apply_schema(index: Index, txn, entry: dict) -> None:
    index.put_setting(txn, entry["project"], "schema", entry["schema"])


def _apply_retention(index: Index, txn, entry: dict) -> None:
    scope = entry["project"] if entry.get("run") is None else f"{entry['project']}/{entry['run']}"
    index.put_setting(txn, scope, "retention", entry["policy"])


def _apply_deletion(index: Index, txn, entry: dict) -> None:
    """A `version.deleted` event: the version leaves `versions`, `entries`, `search` and
    `columns` (so find, log, ls, latest and best no longer see it) and its record and
    catalog document become its tombstone in `deleted`. Its manifest stays in its pack
    (garbage collection keeps it), so the tombstone's file list can always be shown."""
    vkey = version_key(entry["project"], entry["run"], entry["version"])
    removed = index.delete_version(txn, vkey)
    if removed is None:
        return  # not in the index (a journal naming an unknown version): nothing to move
    record, doc = removed
    index.put_tombstone(txn, vkey, {
        "record": record, "document": doc, "deleted_at": entry["time"], "seq": entry["seq"],
        "deletion": {"reason": entry.get("reason"), "policy": entry.get("policy"),
                     "manual": bool(entry.get("manual")), "uid": entry.get("uid"),
                     "user": entry.get("user")}})


def _apply_grant(index: Index, txn, entry: dict) -> None:
    grants = dict(index.get_setting(txn, entry["project"], "access") or {})
    if entry["type"] == "access.granted":
        grants[entry["principal"]] = entry["role"]
    else:
        grants.pop(entry["principal"], None)
    index.put_setting(txn, entry["project"], "access", grants or None)


def _apply_enforcement(index: Index, txn, entry: dict) -> None:
    index.put_setting(txn, ALL_PROJECTS, "enforcement", bool(entry["enabled"]))


def _apply_refusal(index: Index, txn, entry: dict) -> None:
    """A refusal changes nothing: it is in the journal for `ckptfs audit`."""


def _apply_key(index: Index, txn, entry: dict) -> None:
    """`key.set` / `key.unset` into the store-wide `signing` setting: {"current": key id
    or null, "keys": {key id: {algorithm, public_key, set_at, seq}}}."""
    state = index.get_setting(txn, ALL_PROJECTS, SIGNING_SETTING) or {"current": None, "keys": {}}
    if entry["type"] == "key.set":
        state["keys"].setdefault(entry["key_id"], {
            "algorithm": entry["algorithm"], "public_key": entry["public_key"],
            "set_at": entry["time"], "seq": entry["seq"]})
        state["current"] = entry["key_id"]
    else:
        state["current"] = None
    index.put_setting(txn, ALL_PROJECTS, SIGNING_SETTING, state)


_NAME_PACKS = {"version.sealed": _apply_sealed, "store.repaired": _apply_repaired,
               "packs.rewritten": _apply_rewritten}
_APPLIERS = {
    "alias.set": _apply_alias_set,
    "alias.removed": _apply_alias_removed,
    "project.settings": _apply_settings,
    "project.schema": _apply_schema,
    "retention.set": _apply_retention,
    "version.deleted": _apply_deletion,
    "access.granted": _apply_grant,
    "access.revoked": _apply_grant,
    "access.enforcement": _apply_enforcement,
    "access.refused": _apply_refusal,
    "key.set": _apply_key,
    "key.unset": _apply_key,
}
assert set(_NAME_PACKS) | set(_APPLIERS) == set(EVENT_FIELDS)
