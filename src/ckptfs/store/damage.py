"""Damage the index records (docs/recovery.md): functions over the index, used by the
reader (a read that fails), the journal replay (a lost manifest), verify and repair.

* `damaged_chunks`: a chunk whose record is bad. An ingest never deduplicates against
  it: it stores a fresh copy, which the index then points at (the chunk is healed, and
  so is every version that uses it).
* `damaged_versions`: which files of a version are damaged, or that its whole file list
  (manifest) was lost. `ls`, `get` and `verify` say so.
"""
import logging


from .index import Index, version_key

LOST_FILE_LIST = "its file list (manifest) was lost"
log = logging.getLogger("ckptfs.store")


def note_damaged_chunk(index: Index, chunk_id: bytes, problem: str) -> None:
    """A read found a chunk's record bad: remember it (best effort: the reader's own
    error is what matters, so a failure to record is not raised)."""
    def mark(txn):
        if index.get_chunk(txn, chunk_id) is not None and \
                index.chunk_damage(txn, chunk_id) is None:
            index.mark_chunk_damaged(txn, chunk_id, problem)
    try:
        with index.read() as txn:  # most errors repeat a known one: no write
            if index.get_chunk(txn, chunk_id) is None or \
                    index.chunk_damage(txn, chunk_id) is not None:
                return
        index.commit(mark)
    except Exception as e:  # noqa: BLE001 - a full disk must not hide the integrity error
        log.warning("could not record chunk %s as damaged: %s", chunk_id.hex()[:16], e)


def record_lost_version(index: Index, txn, entry: dict, problem: str) -> None:
    vkey = version_key(entry["project"], entry["run"], entry["version"])
    index.put_version_damage(txn, vkey, {
        "project": entry["project"], "run": entry["run"], "version": entry["version"],
        "seq": entry["seq"], "files": {}, "manifest": f"{LOST_FILE_LIST}: {problem}"})


def file_problem(index: Index, txn, entry: dict) -> str | None:
    bad = [c for c, _ in entry["chunks"] if not index.sound_chunk(txn, bytes.fromhex(c))]
    if not bad:
        return None
    return f"{len(bad)} of its {len(entry['chunks'])} chunk(s) are damaged or lost"


def record_missing_chunks(index: Index, txn) -> None:
    """Every file with a chunk the index lacks (or knows damaged) is recorded damaged
    (after a replay that had to skip damaged records)."""
    found: dict[bytes, dict] = {}
    for vkey, entry in index.iter_file_entries(txn):
        problem = file_problem(index, txn, entry)
        if problem is not None:
            found.setdefault(vkey, {})[entry["path"]] = problem
    for vkey, files in found.items():
        record = index.get_version(txn, *vkey.decode("utf-8", "surrogateescape").split("/"))
        damage = index.version_damage(txn, vkey) or {
            "project": record["project"], "run": record["run"], "version": record["version"],
            "seq": record["seq"], "files": {}, "manifest": None}
        damage["files"].update(files)
        index.put_version_damage(txn, vkey, damage)


def refresh_version_damage(index: Index, txn) -> None:
    """Forget the damage of files whose chunks are all sound again (healed)."""
    for damage in list(index.iter_version_damage(txn)):
        if damage.get("manifest"):
            continue
        vkey = version_key(damage["project"], damage["run"], damage["version"])
        still = {}
        for path, problem in damage["files"].items():
            entry = index.get_entry(txn, vkey, path)
            if entry is not None and entry.get("chunks") is not None and \
                    file_problem(index, txn, entry) is not None:
                still[path] = problem
        damage["files"] = still
        index.put_version_damage(txn, vkey, damage if still else None)


def record_verify_findings(index: Index, report, checked_chunk_ids: list[bytes]) -> None:
    """Make the index agree with a complete verify: damaged chunks marked, healed ones
    unmarked, the damaged files of each version recorded."""
    damaged = {bytes.fromhex(h): message for h, message in report.damaged_chunks.items()}
    checked = set(checked_chunk_ids)

    def apply(txn):
        for chunk_id, message in damaged.items():
            if index.get_chunk(txn, chunk_id) is not None:
                index.mark_chunk_damaged(txn, chunk_id, message)
        for chunk_id, mark in list(index.iter_chunk_damage(txn)):
            if chunk_id in checked and chunk_id not in damaged and not mark.get("lost"):
                index.clear_chunk_damage(txn, chunk_id)
        _record_damaged_files(index, txn, report)
    index.commit(apply)


def _record_damaged_files(index: Index, txn, report) -> None:
    lost_lists = {}
    for damage in list(index.iter_version_damage(txn)):
        vkey = version_key(damage["project"], damage["run"], damage["version"])
        if damage.get("manifest"):
            lost_lists[vkey] = damage
        else:
            index.put_version_damage(txn, vkey, None)
    found: dict[bytes, dict] = {}
    for name, path, problem in report.damaged_files:
        parts = name.split("/")
        if len(parts) != 3 or path.startswith("("):
            continue  # a deleted version's or a lost file list: not a live version's file
        vkey = version_key(*parts)
        if vkey in lost_lists:
            continue
        record = index.get_version(txn, *parts)
        damage = found.setdefault(vkey, {
            "project": parts[0], "run": parts[1], "version": parts[2],
            "seq": record["seq"] if record else None, "files": {}, "manifest": None})
        damage["files"][path] = problem
    for vkey, damage in found.items():
        index.put_version_damage(txn, vkey, damage)
