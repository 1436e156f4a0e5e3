"""The difference between two sealed versions: what `ckptfs diff` prints and the web
dashboard's diff page shows.

`diff_versions(store, a, b)` is given two references `PROJECT/RUN/VERSION`, where the
version may also be an alias of the run (`latest`, `best`, or one set with `ckptfs
tag`), and returns a JSON-serialisable dict (docs/cli.md, "ckptfs diff"):

    {"a": {"key", "sealed_at", ...}, "b": {...},
     "files": {"added": [{"path", "size", "sha256"}], "removed": [...],
               "changed": [{"path", "a": {"size", "sha256"}, "b": {...}}], "unchanged": n},
     "metrics": [{"name", "a", "b", "delta"}],
     "hyperparameters": [{"key", "a", "b"}], "environment": [{"key", "a", "b"}],
     "lineage": {"a_parent", "b_parent", "b_descends_from_a", "a_descends_from_b"}}

Files are compared by path and SHA-256; every metric of either version is listed (a
side it lacks is null, `delta` is b - a when both are numbers); hyperparameters and the
environment (`lineage.hyperparameters`, `lineage.environment` of the sidecar, nested
keys joined with dots) list only the keys whose values differ. The caller needs the
reader role on both versions' projects.
"""
import math
from ckptfs.meta.lineage import parent_of, ref_of
from ckptfs.store import InvalidNameError, NotFoundError
from ckptfs.store.names import shown, validate_name


def diff_versions(store, a: str, b: str, *, actor: dict | None = None) -> dict:
    """Compare version `a` with version `b` (each PROJECT/RUN/VERSION or
    PROJECT/RUN/ALIAS) as seen by `actor` (None: this process)."""
    a_doc, a_entries = load_version(store, a, actor)
    b_doc, b_entries = load_version(store, b, actor)
    return {
        "a": identity(a_doc),
        "b": identity(b_doc),
        "files": file_changes(a_entries, b_entries),
        "metrics": metric_changes(a_doc.get("metrics"), b_doc.get("metrics")),
        "hyperparameters": setting_changes(lineage_field(a_doc, "hyperparameters"),
                                           lineage_field(b_doc, "hyperparameters")),
        "environment": setting_changes(lineage_field(a_doc, "environment"),
                                       lineage_field(b_doc, "environment")),
        "lineage": lineage_relation(store, a_doc, b_doc),
    }


def load_version(store, ref: str, actor: dict | None) -> tuple[dict, list[dict]]:
    """(catalog document, file entries) of the version `ref` names, once the actor's
    role is checked: first, so that a project the caller may not read does not even
    say what it holds."""
    store.authorize(actor, split_ref(ref)[0], "reader", "read", ref)
    project, run, version = resolve_version(store, ref)
    return store.catalog_document(project, run, version), store.walk(project, run, version)


def resolve_version(store, ref: str) -> tuple[str, str, str]:
    """(project, run, version) of `ref`, PROJECT/RUN/VERSION or PROJECT/RUN/ALIAS; a
    version of that name wins over an alias. NotFoundError (a deleted version: its own
    message) when neither names a sealed version."""
    project, run, name = split_ref(ref)
    version = store.named_version(project, run, name)
    if version is not None:
        return project, run, version
    if not store.runs(project) and not store.tombstones(project):
        raise NotFoundError(f"no project {project!r} in the store")
    store.require_version(project, run, name)  # the store's own words (deleted, lost, none)
    raise NotFoundError(f"no version {project}/{run}/{name} in the store")


def split_ref(ref: str) -> tuple[str, str, str]:
    """(project, run, version or alias) of PROJECT/RUN/VERSION, each a valid name (an
    alias such as `latest` is not a valid version name, so not parse_version_ref)."""
    pieces = ref.strip("/").split("/") if ref.strip("/") else []
    if len(pieces) != 3:
        raise InvalidNameError(f"expected PROJECT/RUN/VERSION, got {shown(ref)}")
    for piece, what in zip(pieces, ("project", "run", "version")):
        validate_name(piece, what)
    return pieces[0], pieces[1], pieces[2]


def identity(doc: dict) -> dict:
    """Which version a side of the diff is, and where it stands in its run."""
    return {"key": ref_of(doc), "project": doc["project"], "run": doc["run"],
            "version": doc["version"], "sealed_at": doc.get("sealed_at"),
            "step": doc.get("step"), "epoch": doc.get("epoch"), "digest": doc.get("digest")}


def file_changes(a_entries: list[dict], b_entries: list[dict]) -> dict:
    """Regular files added, removed and changed (by SHA-256, then size) from a to b."""
    a_files, b_files = regular_files(a_entries), regular_files(b_entries)
    added = [file_fields(b_files[p]) for p in sorted(b_files.keys() - a_files.keys())]
    removed = [file_fields(a_files[p]) for p in sorted(a_files.keys() - b_files.keys())]
    changed, unchanged = [], 0
    for path in sorted(a_files.keys() & b_files.keys()):
        old, new = file_fields(a_files[path]), file_fields(b_files[path])
        if (old["sha256"], old["size"]) == (new["sha256"], new["size"]):
            unchanged += 1
        else:
            changed.append({"path": path, "a": {"size": old["size"], "sha256": old["sha256"]},
                            "b": {"size": new["size"], "sha256": new["sha256"]}})
    return {"added": added, "removed": removed, "changed": changed, "unchanged": unchanged}


def regular_files(entries: list[dict]) -> dict[str, dict]:
    return {e["path"]: e for e in entries if e["type"] == "file"}


def file_fields(entry: dict) -> dict:
    return {"path": entry["path"], "size": entry.get("size", 0), "sha256": entry.get("sha256")}


def metric_changes(a_metrics: dict | None, b_metrics: dict | None) -> list[dict]:
    """Every metric of either version, by name; `delta` only between two numbers."""
    a_metrics, b_metrics = a_metrics or {}, b_metrics or {}
    changes = []
    for name in sorted(a_metrics.keys() | b_metrics.keys()):
        old, new = a_metrics.get(name), b_metrics.get(name)
        delta = new - old if is_number(old) and is_number(new) else None
        changes.append({"name": name, "a": old, "b": new, "delta": delta})
    return changes


def change_text(delta: float, a: float, b: float) -> str:
    """`delta` (b - a) signed, in fixed point to the sixth significant digit of the
    larger value, as the values themselves are shown: "+0.000032" for 0.688285 ->
    0.688317, not "+3.21269e-05"; "+0" for no change."""
    largest = max(abs(a), abs(b))
    if not math.isfinite(delta) or not math.isfinite(largest):
        return f"{delta:+g}"
    decimals = 0 if largest == 0 else max(0, 5 - math.floor(math.log10(largest)))
    if decimals > 8:  # values of 1e-4 and less read better in exponent form
        return f"{delta:+.3g}"
    text = f"{delta:+.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "+0" if float(text) == 0 else text


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def lineage_field(doc: dict, name: str) -> dict:
    value = (doc.get("lineage") or {}).get(name)
    return value if isinstance(value, dict) else {}


def setting_changes(a_settings: dict, b_settings: dict) -> list[dict]:
    """The keys (nested ones joined with dots) whose values differ; a missing side is
    null."""
    a_flat, b_flat = flatten(a_settings), flatten(b_settings)
    missing = object()
    changes = []
    for key in sorted(a_flat.keys() | b_flat.keys()):
        old, new = a_flat.get(key, missing), b_flat.get(key, missing)
        if old != new or type(old) is not type(new):  # 1 and 1.0 and True differ here
            changes.append({"key": key, "a": None if old is missing else old,
                            "b": None if new is missing else new})
    return changes


def flatten(settings: dict, prefix: str = "") -> dict:
    """{"packages": {"torch": "2.3"}} -> {"packages.torch": "2.3"}; an empty dict stays a
    value (so that {} against a missing key is a difference)."""
    flat = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def lineage_relation(store, a_doc: dict, b_doc: dict) -> dict:
    """Each version's parent, and whether one descends from the other (through parents
    in any run or project, deleted versions included)."""
    parents = parent_links(store)
    a_key, b_key = ref_of(a_doc), ref_of(b_doc)
    a_parent, b_parent = parent_of(a_doc), parent_of(b_doc)
    return {"a_parent": a_parent[0] if a_parent else None,
            "b_parent": b_parent[0] if b_parent else None,
            "b_descends_from_a": a_key in ancestors(parents, b_key),
            "a_descends_from_b": b_key in ancestors(parents, a_key)}


def parent_links(store) -> dict[str, str]:
    """{version: its parent} over the whole catalog and the tombstones (a deleted
    version keeps its place in a chain)."""
    docs = store.catalog_documents(fields=[("lineage", "parent")])
    docs += [store.tombstone_document(t) for t in store.tombstones()]
    links = {}
    for doc in docs:
        link = parent_of(doc)
        if link:
            links.setdefault(ref_of(doc), link[0])
    return links


def ancestors(parents: dict[str, str], key: str) -> set[str]:
    found = set()
    while (key := parents.get(key)) is not None and key not in found:  # stops on a cycle
        found.add(key)
    return found
