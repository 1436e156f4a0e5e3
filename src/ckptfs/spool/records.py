"""The small records the daemon keeps in the spool beside the spooled files, so that
nothing it needs for a seal lives only in its memory:

* provenance: who wrote each part of a run (its first writer, a few others), until the
  part is sealed; keyed by the part's top-level entry in the run directory;
* annotations: metadata given with `ckptfs.annotate` for a unit, read by its seal;
* sealing intents: a seal under way, so that the next start finishes the clean-up of a
  seal whose daemon died between the commit and the clean-up;
* staged packs: packs opened for files prepared ahead of their seal, deleted after a
  crash if unfinished.

Each function takes the `Spool` (directory.py) it works in.
"""
import os

from ckptfs.meta.layout import DIR, GROUP, Unit
from ckptfs.store.private import private_opener

from .layout import (
    ANNOTATIONS,
    PROVENANCE,
    SEALING,
    STAGED_PACKS,
    read_json,
    unit_key,
    unlink_if_present,
    write_json_atomically,
)


# -- provenance: who wrote what ------------------------------------------------------------
def provenance_path(spool, project: str, run: str, top: str) -> str:
    """Who wrote the part of run p/r under its top-level entry `top` ("": loose files)."""
    return spool.area(PROVENANCE, project, run, unit_key(top) + ".json")


def load_provenance(spool, project: str, run: str, top: str) -> dict:
    """{"writer": its first writer or None, "others": [a few more], "seen": [pids]}."""
    record = read_json(provenance_path(spool, project, run, top))
    if not isinstance(record, dict):
        return {"writer": None, "others": [], "seen": []}
    return record


def save_provenance(spool, project: str, run: str, top: str, record: dict) -> None:
    write_json_atomically(provenance_path(spool, project, run, top), record)


def drop_provenance(spool, project: str, run: str, top: str) -> None:
    unlink_if_present(provenance_path(spool, project, run, top))


def provenance_of_record(record: dict) -> dict:
    """The `provenance` a version's sidecar gets from its spooled record."""
    provenance = dict(record.get("writer") or {"via": "mount", "unknown": True})
    if record.get("others"):
        provenance["other_writers"] = record["others"]
    return provenance


def top_of(rel: str) -> str:
    """The provenance key of a path in a run directory: its top-level directory, or ""
    for the files directly in the run directory."""
    return rel.split("/", 1)[0] if "/" in rel else ""


def provenance_key(unit: Unit) -> str:
    """The provenance key of a unit's files (see top_of)."""
    if unit.shape == DIR or (unit.shape == GROUP and unit.path):
        return unit.path.split("/", 1)[0]
    return top_of(unit.path)


# -- annotations ---------------------------------------------------------------------------
def annotations_path(spool, project: str, run: str, unit_path: str) -> str:
    return spool.area(ANNOTATIONS, project, run, unit_key(unit_path) + ".json")


def load_annotations(spool, project: str, run: str, unit_path: str) -> dict | None:
    return read_json(annotations_path(spool, project, run, unit_path), None)


def save_annotations(spool, project: str, run: str, unit_path: str, doc: dict) -> None:
    write_json_atomically(annotations_path(spool, project, run, unit_path), doc)


def drop_annotations(spool, project: str, run: str, unit_path: str) -> None:
    unlink_if_present(annotations_path(spool, project, run, unit_path))


# -- sealing intents -----------------------------------------------------------------------
INTENT_FIELDS = {"project": str, "run": str, "version": str, "unit": str, "shape": str,
                 "kind": str, "source": str, "staged": dict}


def write_intent(spool, intent: dict) -> str:
    """Record a seal about to commit (INTENT_FIELDS, and `batch`); returns its path,
    for `drop_intent` once its clean-up is done."""
    path = spool.area(SEALING, spool.new_id() + ".json")
    write_json_atomically(path, intent)
    return path


def drop_intent(path: str) -> None:
    unlink_if_present(path)


def interrupted_intents(spool) -> list[tuple[str, dict | None]]:
    """(path, intent) of the seals left under way by a daemon that stopped; the intent
    is None if its record is damaged or was cut short (see is_whole_intent)."""
    base = spool.area(SEALING)
    found = []
    for name in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        intent = read_json(os.path.join(base, name))
        found.append((os.path.join(base, name), intent if is_whole_intent(intent) else None))
    return found


def is_whole_intent(intent) -> bool:
    """Does a spool/sealing record hold every field the clean-up needs?"""
    return isinstance(intent, dict) and all(
        isinstance(intent.get(key), kind) for key, kind in INTENT_FIELDS.items()) and all(
        isinstance(intent["staged"].get(key), dict) for key in ("files", "links"))


# -- packs opened ahead of a seal ----------------------------------------------------------
def note_staged_pack(spool, pack_id: int) -> None:
    with open(os.path.join(spool.path, STAGED_PACKS), "a", opener=private_opener) as f:
        f.write(f"{pack_id:08x}\n")


def staged_packs(spool) -> list[int] | None:
    """The packs opened ahead of a seal by the last daemon, or None if it left no list."""
    try:
        with open(os.path.join(spool.path, STAGED_PACKS)) as f:
            return [int(line, 16) for line in f if line.strip()]
    except FileNotFoundError:
        return None


def forget_staged_packs(spool) -> None:
    unlink_if_present(os.path.join(spool.path, STAGED_PACKS))
