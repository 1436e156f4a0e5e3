"""The catalog: what the store knows about versions beyond their bytes.

- Catalog documents: one per version, in the index's `search` sub-database. It is the
  version's sidecar without its file list: identity, storage figures and the metadata
  the seal recorded (lineage, metrics, provenance, extracted facts, warnings). `find`,
  `log`, `lineage` and `run.json` read these, never the packs.
- Aliases: names for one version of a run at a time (`production`, `staging`…). Every
  change is a journal event, so moves are never lost and the index can be rebuilt.
  `latest` (the newest checkpoint) and `best` (by the project's primary metric) are
  derived, never stored; versions of kind `files` (logs, metrics) are never either.
- Project settings (primary metric and direction, the environment allow-list, the
  unsafe-pickles policy and the globals a project trusts in pickles) and the
  project's JSON Schema, also journaled. Project `*` holds defaults for every project.

The metadata itself is opaque here: the meta layer decides what goes into it.
"""
import gc
import math
from contextlib import contextmanager

from .access import apply_access_event
from .errors import AliasError, NotFoundError, ReservedAliasError, SettingError
from .index import SPLIT_FIELDS, Index, fs_bytes, version_key
from .names import validate_name
from .signing import apply_key_event

DERIVED_ALIASES = ("latest", "best")
ALL_PROJECTS = "*"
# Settings a project may have: name -> (check, what a valid value is).
PROJECT_SETTINGS = {
    "primary_metric": (lambda v: isinstance(v, str) and v != "", "a metric name"),
    "mode": (lambda v: v in ("min", "max"), "'min' or 'max'"),
    "env_allow": (lambda v: isinstance(v, list) and all(isinstance(x, str) and x for x in v),
                  "a list of environment variable names or globs"),
    # What the seal does with a version whose pickles import globals off the safe list
    # (meta/scan.py): seal it with a warning, or refuse it.
    "unsafe_pickles": (lambda v: v in ("warn", "refuse"), "'warn' or 'refuse'"),
    # Globals trusted on top of the safe list: `module.name` or `module.*`.
    "pickle_allow": (lambda v: isinstance(v, list) and all(
        isinstance(x, str) and "." in x and x.strip() == x and x for x in v),
        "a list of MODULE.NAME or MODULE.* globals"),
}


# A version's `kind` (in its metadata): "checkpoint" (weights: the default), or "files"
# (logs, metrics, anything without a model). A files version is never `latest`, `best`,
# a default parent or a delta base.
CHECKPOINT_KIND, FILES_KIND = "checkpoint", "files"


def is_checkpoint_kind(doc: dict) -> bool:
    return doc.get("kind") != FILES_KIND


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


def apply_catalog_event(index: Index, txn, entry: dict) -> None:
    """Reflect a journal entry other than `version.sealed` in the index."""
    kind = entry["type"]
    if kind == "alias.set":
        index.set_alias(txn, entry["project"], entry["run"], entry["alias"], entry["version"])
    elif kind == "alias.removed":
        index.delete_alias(txn, entry["project"], entry["run"], entry["alias"])
    elif kind == "project.settings":
        index.put_setting(txn, entry["project"], "settings", entry["settings"] or None)
    elif kind == "project.schema":
        index.put_setting(txn, entry["project"], "schema", entry["schema"])
    elif kind == "retention.set":
        scope = entry["project"] if entry.get("run") is None else f"{entry['project']}/{entry['run']}"
        index.put_setting(txn, scope, "retention", entry["policy"])
    elif kind == "version.deleted":
        apply_deletion(index, txn, entry)
    elif kind in ("key.set", "key.unset"):
        apply_key_event(index, txn, entry)
    else:
        apply_access_event(index, txn, entry)  # access.*; other types are skipped


def apply_deletion(index: Index, txn, entry: dict) -> None:
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


def metric_value(doc: dict, metric: str) -> float | None:
    value = (doc.get("metrics") or {}).get(metric)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return value


def best_of(docs: list[dict], metric: str, mode: str) -> str | None:
    """The version with the best value of `metric` (the earliest one on a tie)."""
    sign = 1 if mode != "max" else -1
    scored = [(sign * value, doc["seq"], doc["version"]) for doc in docs
              if (value := metric_value(doc, metric)) is not None]
    return min(scored)[2] if scored else None


@contextmanager
def gc_paused():
    """Loading many small documents allocates millions of objects, and each allocation
    burst sets off a full collection that walks all of them again: pause it meanwhile."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def aliases_of(docs: list[dict]) -> dict[str, str]:
    """{alias: version} from catalog documents with their `aliases` attached."""
    return {alias: doc["version"] for doc in docs for alias in doc["aliases"]}


def run_prefix(project: str, run: str) -> bytes:
    return fs_bytes(f"{project}/{run}") + b"\0"


class CatalogMixin:
    """Catalog operations of `Store` (it provides `index`, `journal`, `_catch_up`,
    `_journal_and_index` and, from AccessMixin, `authorize`)."""

    # -- documents ------------------------------------------------------------------
    def catalog_document(self, project: str, run: str, version: str) -> dict | None:
        with self.index.read() as txn:
            return self.index.get_search_doc(txn, version_key(project, run, version))

    def catalog_documents(self, project: str | None = None, run: str | None = None,
                          fields=None) -> list[dict]:
        """Catalog documents (all, a project's or a run's), each with its current `tags`
        (its own and every alias naming it) and `aliases`.

        `fields` (paths, as tuples of names: ("metrics", "eval_loss")) limits what is
        read to what those paths need: over many versions that is what keeps `find`
        fast. `project`, `run`, `version` and `seq` are always there. Whole documents
        come in key order; limited ones in sealing order."""
        prefix = self._catalog_prefix(project, run)
        with self.index.read() as txn, gc_paused():
            settings = dict(self.index.iter_settings(txn, "settings"))
            if fields is None:
                docs = list(self.index.iter_search_docs(txn, prefix))
            else:
                paths = self._paths_needed(list(fields), settings)
                docs = self._load_columns(txn, prefix, self._columns_for(txn, paths))
            if fields is None or any(path[0] in ("tags", "aliases") for path in fields):
                aliases = list(self.index.iter_aliases(
                    txn, run_prefix(project, run) if run is not None else prefix))
                self._attach_tags(docs, aliases, settings)
        return docs

    def add_catalog_fields(self, docs: list[dict], fields) -> None:
        """Fill in the other fields of documents from `catalog_documents` (e.g. what
        `find` shows of the versions it found)."""
        with self.index.read() as txn:
            for doc in docs:
                whole = self.index.get_search_doc(
                    txn, version_key(doc["project"], doc["run"], doc["version"])) or {}
                for path in fields:
                    if path[0] in whole and path[0] not in ("tags", "aliases"):
                        doc.setdefault(path[0], whole[path[0]])

    @staticmethod
    def _catalog_prefix(project: str | None, run: str | None) -> bytes:
        if project is None:
            return b""
        if run is None:
            return fs_bytes(project + "/")
        return version_key(project, run, "")

    @staticmethod
    def _paths_needed(paths: list[tuple], settings: dict) -> list[tuple]:
        if any(path[0] in ("tags", "aliases") for path in paths):
            paths = paths + [("tags",), ("kind",)]
            if any(s.get("primary_metric") for s in settings.values()):
                paths.append(("metrics",))  # for `best`
        return paths

    def _columns_for(self, txn, paths: list[tuple]) -> set[str]:
        """The index columns that hold the values of these paths."""
        existing = self.index.column_names(txn)
        columns = set()
        for path in paths:
            head = path[0]
            if head in existing:
                columns.add(head)
            if head in SPLIT_FIELDS:
                if len(path) > 1:
                    columns.add(f"{head}.{path[1]}")
                else:
                    columns.update(n for n in existing if n.startswith(head + "."))
        return (columns & existing) - {"project", "run", "version", "seq"}

    def _load_columns(self, txn, prefix: bytes, columns: set) -> list[dict]:
        """Documents holding only `columns` (plus identity), one pass per column."""
        by_name: dict[str, dict] = {}
        for name, seq in self.index.column_values(txn, "seq", prefix).items():
            project, run, version = name.split("/", 2)
            by_name[name] = {"project": project, "run": run, "version": version, "seq": seq}
        for column in columns:  # tight loops: they run once per version and column
            values = self.index.column_values(txn, column, prefix)
            head, dot, member = column.partition(".")
            if dot and head in SPLIT_FIELDS:
                for name, value in values.items():
                    doc = by_name.get(name)
                    if doc is not None:
                        parent = doc.get(head)
                        if parent is None:
                            doc[head] = {member: value}
                        else:
                            parent[member] = value
            else:
                for name, value in values.items():
                    doc = by_name.get(name)
                    if doc is not None:
                        doc[column] = value
        return list(by_name.values())  # in sealing order, not key order: callers sort what they keep

    def _attach_tags(self, docs: list[dict], explicit: list[tuple], settings: dict):
        names: dict[tuple, list[str]] = {}
        for p, r, alias, version in explicit:
            names.setdefault((p, r, version), []).append(alias)
        for (p, r), run_docs in self._group_by_run(docs).items():
            for alias, version in self._derived_aliases(p, run_docs, settings).items():
                names.setdefault((p, r, version), []).append(alias)
        for doc in docs:
            aliases = sorted(names.get((doc["project"], doc["run"], doc["version"]), ()))
            doc["aliases"] = aliases
            doc["tags"] = sorted(set(doc.get("tags") or ()) | set(aliases))

    @staticmethod
    def _group_by_run(docs: list[dict]) -> dict[tuple, list[dict]]:
        runs: dict[tuple, list[dict]] = {}
        for doc in docs:
            runs.setdefault((doc["project"], doc["run"]), []).append(doc)
        return runs

    @staticmethod
    def _derived_aliases(project: str, run_docs: list[dict], settings: dict) -> dict[str, str]:
        checkpoints = [d for d in run_docs if is_checkpoint_kind(d)]
        if not checkpoints:
            return {}
        found = {"latest": max(checkpoints, key=lambda d: d["seq"])["version"]}
        merged = {**settings.get(ALL_PROJECTS, {}), **settings.get(project, {})}
        if merged.get("primary_metric"):
            best = best_of(checkpoints, merged["primary_metric"], merged.get("mode", "min"))
            if best is not None:
                found["best"] = best
        return found

    # -- aliases --------------------------------------------------------------------
    def aliases(self, project: str, run: str) -> dict[str, str]:
        """Every alias of a run, derived ones (`latest`, `best`) included: name -> version."""
        return aliases_of(self.catalog_documents(project, run, fields=[("aliases",)]))

    def set_alias(self, project: str, run: str, alias: str, target: str,
                  actor: dict | None = None) -> dict:
        """Point `alias` at version `target` of the run (or at what alias `target` names).
        Journaled with the version it pointed at before. Needs maintainer (enforced)."""
        self.authorize(actor, project, "maintainer", "set or move aliases",
                       f"{project}/{run}/{alias}")

        def event():
            self._check_alias_name(project, run, alias)
            version = self._resolve_target(project, run, target)
            previous = self._explicit_alias(project, run, alias)
            if previous == version:
                return None
            return {"type": "alias.set", "project": project, "run": run, "alias": alias,
                    "version": version, "previous": previous}
        return self._commit_catalog_event(event, actor)

    def remove_alias(self, project: str, run: str, alias: str, actor: dict | None = None) -> dict:
        self.authorize(actor, project, "maintainer", "remove aliases", f"{project}/{run}/{alias}")

        def event():
            if alias in DERIVED_ALIASES:
                raise ReservedAliasError(f"{alias!r} is maintained by ckptfs and cannot be "
                                         "removed" + self._derived_hint(alias))
            version = self._explicit_alias(project, run, alias)
            if version is None:
                raise NotFoundError(f"{project}/{run} has no alias {alias!r}")
            return {"type": "alias.removed", "project": project, "run": run, "alias": alias,
                    "version": version}
        return self._commit_catalog_event(event, actor)

    def rename_alias(self, project: str, run: str, old: str, new: str,
                     actor: dict | None = None) -> None:
        """`mv old new` on aliases (how `ln -sfn` replaces a symlink): `new` takes the
        version `old` names, then `old` goes. Two journal events."""
        version = self._explicit_alias(project, run, old)
        if version is None:
            raise NotFoundError(f"{project}/{run} has no alias {old!r}")
        self.set_alias(project, run, new, version, actor)
        self.remove_alias(project, run, old, actor)

    def name_in_run(self, project: str, run: str, name: str) -> str | None:
        """What `name` already is in a run directory: 'version', 'alias', 'deleted' (the
        name of a deleted version, never reused) or None."""
        if self.version_record(project, run, name) is not None:
            return "version"
        if self.tombstone(project, run, name) is not None:
            return "deleted"
        if name in DERIVED_ALIASES or self._explicit_alias(project, run, name) is not None:
            return "alias"
        return None

    def _explicit_alias(self, project: str, run: str, alias: str) -> str | None:
        with self.index.read() as txn:
            return self.index.get_alias(txn, project, run, alias)

    def _check_alias_name(self, project: str, run: str, alias: str):
        validate_name(alias, "alias")
        if alias in DERIVED_ALIASES:
            raise ReservedAliasError(f"{alias!r} is maintained by ckptfs and cannot be set by "
                                     "hand" + self._derived_hint(alias))
        if alias == "run.json" or alias.endswith((".json", ".error")):
            raise AliasError(f"alias {alias!r} would clash with the run directory's .json files")
        if self.version_record(project, run, alias) is not None:
            raise AliasError(f"{project}/{run} has a version named {alias!r}: an alias needs "
                             "a name of its own")
        if self.tombstone(project, run, alias) is not None:
            raise AliasError(f"{project}/{run} had a version named {alias!r} (deleted; names "
                             "are never reused): an alias needs a name of its own")

    @staticmethod
    def _derived_hint(alias: str) -> str:
        if alias == "best":
            return (": it follows the project's primary metric (ckptfs config set STORE "
                    "PROJECT primary_metric=NAME mode=min|max)")
        return ": it always names the newest version"

    def _resolve_target(self, project: str, run: str, target: str) -> str:
        target = target.rstrip("/")
        if self.version_record(project, run, target) is not None:
            return target
        via_alias = self.aliases(project, run).get(target)
        if via_alias is not None:
            return via_alias
        raise AliasError(f"{project}/{run} has no version {target!r}: an alias names a "
                         "sealed version of its own run")

    # -- project settings and schema --------------------------------------------------
    def project_settings(self, project: str, inherited: bool = True) -> dict:
        """A project's settings; with `inherited`, over the defaults of project `*`."""
        own = self._setting(project, "settings") or {}
        if not inherited or project == ALL_PROJECTS:
            return own
        return {**(self._setting(ALL_PROJECTS, "settings") or {}), **own}

    def update_project_settings(self, project: str, changes: dict, unset=(),
                                actor: dict | None = None) -> dict:
        """Set (and unset) settings of a project (`*`: every project); returns them.
        Needs maintainer on it (enforced)."""
        self._check_project(project)
        self.authorize(actor, project, "maintainer", "change project settings")
        for name, value in changes.items():
            if name not in PROJECT_SETTINGS:
                raise SettingError(f"unknown setting {name!r}; known: "
                                   + ", ".join(sorted(PROJECT_SETTINGS)))
            check, what = PROJECT_SETTINGS[name]
            if not check(value):
                raise SettingError(f"setting {name!r} must be {what}, not {value!r}")
        for name in unset:
            if name not in PROJECT_SETTINGS:
                raise SettingError(f"unknown setting {name!r}")

        def event():
            settings = {**self.project_settings(project, inherited=False), **changes}
            for name in unset:
                settings.pop(name, None)
            return {"type": "project.settings", "project": project, "settings": settings}
        self._commit_catalog_event(event, actor)
        return self.project_settings(project, inherited=False)

    def project_schema(self, project: str, inherited: bool = True) -> dict | None:
        """The JSON Schema new versions of `project` must satisfy (its own, else `*`'s)."""
        own = self._setting(project, "schema")
        if own is None and inherited and project != ALL_PROJECTS:
            return self._setting(ALL_PROJECTS, "schema")
        return own

    def set_project_schema(self, project: str, schema: dict | None,
                           actor: dict | None = None) -> None:
        """Attach (or with None, remove) a project's schema. The caller checks that it is
        a valid JSON Schema: the engine stores it as it is. Needs maintainer (enforced)."""
        self._check_project(project)
        self.authorize(actor, project, "maintainer", "change the project schema")
        self._commit_catalog_event(lambda: {"type": "project.schema", "project": project,
                                            "schema": schema}, actor)

    def _setting(self, project: str, kind: str):
        with self.index.read() as txn:
            return self.index.get_setting(txn, project, kind)

    @staticmethod
    def _check_project(project: str):
        if project != ALL_PROJECTS:
            validate_name(project, "project")

    # -- journaled changes ------------------------------------------------------------
    def _commit_catalog_event(self, make_event, actor: dict | None = None) -> dict | None:
        """Journal the event `make_event()` returns (None: nothing to change) and apply it,
        both under the journal lock, so checks and change see the same state."""
        with self.journal.locked():
            self._catch_up()
            event = make_event()
            if event is None:
                return None
            return self._journal_and_index(
                event, actor, lambda txn, entry: apply_catalog_event(self.index, txn, entry))
