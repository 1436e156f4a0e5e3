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

- Versions: their records and entries (the file tree), tombstones of deleted ones, and
  the damage recorded against them; `commit` adds a version prepared by an ingest.

The metadata itself is opaque here: the meta layer decides what goes into it.

`Catalog` is given the index (reads), the committer (every change is a journal event),
access control (who may change what), signing (a seal's signature) and the store's
chunk id function (a manifest's id).
"""
import gc
import math
from contextlib import contextmanager

from .damage import refresh_version_damage
from .errors import (
    AliasError,
    ChunksReclaimedError,
    IntegrityError,
    NotFoundError,
    ReservedAliasError,
    SettingError,
    VersionDeletedError,
    VersionExistsError,
)
from .events import (
    alias_removed,
    alias_set,
    project_schema,
    project_settings,
    version_sealed,
)
from .index import SPLIT_FIELDS, Index, fs_bytes, version_key
from .ingest import IngestReport, PreparedVersion
from .manifest import SCHEMA as MANIFEST_SCHEMA
from .manifest import compress_manifest, encode_manifest, version_digest
from .names import ALL_PROJECTS, check_project, validate_name, validate_version_name
from .parentage import (
    CHECKPOINT_KIND,
    FILES_KIND,
    is_checkpoint_kind,
    with_default_parent,
)

DERIVED_ALIASES = ("latest", "best")
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


class MetricsColumn:
    """The `metrics` of every version, read from the index at the first need only: a
    listing that did not ask for metrics needs them for `best` of a run whose rule came
    from its checkpoints (best_rule)."""

    def __init__(self, index: Index, txn):
        self.index, self.txn, self.values = index, txn, None

    def of(self, doc: dict) -> dict:
        if self.values is None:
            self.values = self.index.column_values(self.txn, "metrics")
        return self.values.get(version_name(doc["project"], doc["run"], doc["version"])) or {}


def best_rule(settings: dict, project: str, newest: dict) -> dict | None:
    """{"metric", "mode", "source"} that `best` goes by in a run: its project's primary
    metric, or that of `*` (source None); without one, what the training job chose, as
    its newest checkpoint records it (`best_by`, meta/best.py, with its source); None:
    the run has no `best`. `settings`: project -> its own settings."""
    merged = {**settings.get(ALL_PROJECTS, {}), **settings.get(project, {})}
    if merged.get("primary_metric"):
        return {"metric": merged["primary_metric"], "mode": merged.get("mode", "min"),
                "source": None}
    chosen = newest.get("best_by")
    if isinstance(chosen, dict) and isinstance(chosen.get("metric"), str) and \
            chosen.get("mode") in ("min", "max"):
        return {"metric": chosen["metric"], "mode": chosen["mode"], "source": chosen.get("source")}
    return None


def aliases_of(docs: list[dict]) -> dict[str, str]:
    """{alias: version} from catalog documents with their `aliases` attached."""
    return {alias: doc["version"] for doc in docs for alias in doc["aliases"]}


def run_prefix(project: str, run: str) -> bytes:
    return fs_bytes(f"{project}/{run}") + b"\0"


def version_name(project, run, version) -> str:
    return f"{project}/{run}/{version}"


def deleted_on(tombstone: dict) -> str:
    return tombstone["deleted_at"][:10]


class Catalog:
    """What the store knows about its versions (module docstring)."""

    def __init__(self, index: Index, committer, access, signing, chunk_id):
        self.index = index
        self.committer = committer
        self.access = access
        self.signing = signing
        self.chunk_id = chunk_id

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
                self._attach_tags(txn, docs, aliases, settings)
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
            paths = paths + [("tags",), ("kind",), ("best_by",)]
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

    def _attach_tags(self, txn, docs: list[dict], explicit: list[tuple], settings: dict):
        names: dict[tuple, list[str]] = {}
        for p, r, alias, version in explicit:
            names.setdefault((p, r, version), []).append(alias)
        metrics = MetricsColumn(self.index, txn)
        for (p, r), run_docs in self._group_by_run(docs).items():
            for alias, version in self._derived_aliases(p, run_docs, settings, metrics).items():
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
    def _derived_aliases(project: str, run_docs: list[dict], settings: dict,
                         metrics: "MetricsColumn") -> dict[str, str]:
        checkpoints = [d for d in run_docs if is_checkpoint_kind(d)]
        if not checkpoints:
            return {}
        newest = max(checkpoints, key=lambda d: d["seq"])
        found = {"latest": newest["version"]}
        rule = best_rule(settings, project, newest)
        if rule is not None:
            for doc in checkpoints:
                if "metrics" not in doc:  # this listing did not read them
                    doc["metrics"] = metrics.of(doc)
            best = best_of(checkpoints, rule["metric"], rule["mode"])
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
        self.access.authorize(actor, project, "maintainer", "set or move aliases",
                       f"{project}/{run}/{alias}")

        def event():
            self._check_alias_name(project, run, alias)
            version = self._resolve_target(project, run, target)
            previous = self._explicit_alias(project, run, alias)
            if previous == version:
                return None
            return alias_set(project, run, alias, version, previous)
        return self.committer.commit_event(event, actor)

    def remove_alias(self, project: str, run: str, alias: str, actor: dict | None = None) -> dict:
        self.access.authorize(actor, project, "maintainer", "remove aliases", f"{project}/{run}/{alias}")

        def event():
            if alias in DERIVED_ALIASES:
                raise ReservedAliasError(f"{alias!r} is maintained by ckptfs and cannot be "
                                         "removed" + self._derived_hint(alias))
            version = self._explicit_alias(project, run, alias)
            if version is None:
                raise NotFoundError(f"{project}/{run} has no alias {alias!r}")
            return alias_removed(project, run, alias, version)
        return self.committer.commit_event(event, actor)

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

    def named_version(self, project: str, run: str, name: str) -> str | None:
        """The version NAME names in a run: the version of that name, else the one the
        alias NAME (latest, best, production, …) points at; None if neither."""
        if self.version_record(project, run, name) is not None:
            return name
        return self.aliases(project, run).get(name)

    def _resolve_target(self, project: str, run: str, target: str) -> str:
        version = self.named_version(project, run, target.rstrip("/"))
        if version is not None:
            return version
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
        check_project(project)
        self.access.authorize(actor, project, "maintainer", "change project settings")
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
            return project_settings(project, settings)
        self.committer.commit_event(event, actor)
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
        check_project(project)
        self.access.authorize(actor, project, "maintainer", "change the project schema")
        self.committer.commit_event(lambda: project_schema(project, schema), actor)

    def _setting(self, project: str, kind: str):
        with self.index.read() as txn:
            return self.index.get_setting(txn, project, kind)

    # -- versions -------------------------------------------------------------------------
    def projects(self) -> list[str]:
        with self.index.read() as txn:
            return self.index.distinct_components(txn, b"")

    def runs(self, project: str) -> list[str]:
        with self.index.read() as txn:
            return self.index.distinct_components(txn, version_key(project, "", "")[:-1])

    def versions(self, project: str, run: str) -> list[dict]:
        prefix = version_key(project, run, "")
        with self.index.read() as txn:
            return list(self.index.iter_versions(txn, prefix))

    def all_versions(self) -> list[dict]:
        with self.index.read() as txn:
            return list(self.index.iter_versions(txn))

    def version_record(self, project: str, run: str, version: str) -> dict | None:
        with self.index.read() as txn:
            return self.index.get_version(txn, project, run, version)

    def require_version(self, project: str, run: str, version: str) -> dict:
        record = self.version_record(project, run, version)
        if record is None:
            self.raise_if_lost(project, run, version)
            raise self.deleted_error(project, run, version) or NotFoundError(
                f"no version {version_name(project, run, version)} in the store")
        return record

    def list_dir(self, project: str, run: str, version: str, dir_path: str = "") -> list[dict]:
        self.require_version(project, run, version)
        vkey = version_key(project, run, version)
        if dir_path:
            entry = self.entry(project, run, version, dir_path)
            if entry["type"] != "dir":
                return [entry]
        with self.index.read() as txn:
            return list(self.index.list_entries(txn, vkey, dir_path))

    def entry(self, project: str, run: str, version: str, path: str) -> dict:
        path = path.strip("/")
        with self.index.read() as txn:
            entry = self.index.get_entry(txn, version_key(project, run, version), path)
        if entry is None:
            raise NotFoundError(f"{version_name(project, run, version)} has no {path!r}")
        return entry

    def walk(self, project: str, run: str, version: str) -> list[dict]:
        """Every entry of a version, parents before children, each directory's children in
        name order."""
        vkey = version_key(project, run, version)
        out = []
        with self.index.read() as txn:
            def visit(dir_path):
                for entry in self.index.list_entries(txn, vkey, dir_path):
                    out.append(entry)
                    if entry["type"] == "dir":
                        visit(entry["path"])
            visit("")
        return out

    def newest_checkpoint(self, project: str, run: str | None) -> dict | None:
        """The catalog document of the run's newest version of kind `checkpoint`: the
        parent and delta base of its next version (run None: the project's newest, the
        delta base of a new run's first). `files` versions (logs, metrics) are never
        either (docs/mount.md)."""
        docs = self.catalog_documents(project, run, fields=[("kind",)])
        checkpoints = [d for d in docs if is_checkpoint_kind(d)]
        return max(checkpoints, key=lambda d: d["seq"]) if checkpoints else None

    def check_new_version(self, project: str, run: str, version: str):
        """Raise unless PROJECT/RUN/VERSION is a valid name that is free (the commit checks
        again; this is for failing early, before unpacking or reading anything)."""
        validate_name(project, "project")
        validate_name(run, "run")
        validate_version_name(version)
        if self.version_record(project, run, version) is not None:
            raise VersionExistsError(
                f"version {version_name(project, run, version)} already exists; versions are "
                "immutable: import under a new version name")
        self.check_name_not_deleted(project, run, version)
        if self.name_in_run(project, run, version) == "alias":
            raise VersionExistsError(
                f"{project}/{run} has an alias named {version!r}: choose another version "
                "name (or remove the alias with `ckptfs untag`)")

    # -- tombstones -------------------------------------------------------------------------
    def tombstone(self, project: str, run: str, version: str) -> dict | None:
        with self.index.read() as txn:
            return self.index.get_tombstone(txn, version_key(project, run, version))

    def tombstones(self, project: str | None = None, run: str | None = None) -> list[dict]:
        """Tombstones (all, a project's or a run's), in key order."""
        if project is None:
            prefix = b""
        elif run is None:
            prefix = fs_bytes(project + "/")
        else:
            prefix = version_key(project, run, "")
        with self.index.read() as txn:
            return list(self.index.iter_tombstones(txn, prefix))

    def deleted_count(self) -> int:
        with self.index.read() as txn:
            return self.index.deleted_count(txn)

    def deleted_projects(self) -> list[str]:
        with self.index.read() as txn:
            return self.index.distinct_components(txn, b"", self.index.deleted)

    def deleted_runs(self, project: str) -> list[str]:
        with self.index.read() as txn:
            return self.index.distinct_components(txn, fs_bytes(project + "/"), self.index.deleted)

    @staticmethod
    def tombstone_document(tombstone: dict) -> dict:
        """The catalog document of a deleted version as it was, with `deleted_at` and
        `deletion` (reason, policy, manual, uid, user); it has no aliases any more."""
        doc = dict(tombstone["document"] or {})
        doc.update(deleted_at=tombstone["deleted_at"], deletion=tombstone["deletion"],
                   aliases=[], tags=sorted(doc.get("tags") or []))
        return doc

    def deleted_error(self, project: str, run: str, version: str) -> NotFoundError | None:
        """The error for a version that was deleted (None if it was not)."""
        tomb = self.tombstone(project, run, version)
        if tomb is None:
            return None
        reason = tomb["deletion"].get("reason") or "no reason given"
        return NotFoundError(
            f"version {project}/{run}/{version} was deleted on {deleted_on(tomb)} ({reason}); "
            f"its sidecar stays: `ckptfs show STORE {project}/{run}/{version}` or "
            f"MOUNT/.ckptfs/deleted/{project}/{run}/{version}.json")

    def check_name_not_deleted(self, project: str, run: str, version: str) -> None:
        tomb = self.tombstone(project, run, version)
        if tomb is not None:
            raise VersionDeletedError(
                f"version {project}/{run}/{version} was deleted on {deleted_on(tomb)}: version "
                "names are never reused; import under a new version name")

    # -- recorded damage --------------------------------------------------------------------
    def version_damage(self, project: str | None = None, run: str | None = None) -> list[dict]:
        """The recorded damage of the versions of a run (or a project, or all)."""
        prefix = b"" if project is None else version_key(project, run, "") if run is not None \
            else version_key(project, "", "")[:-1]
        with self.index.read() as txn:
            return list(self.index.iter_version_damage(txn, prefix))

    def raise_if_lost(self, project: str, run: str, version: str) -> None:
        """A version whose file list was lost cannot be read: say so, not "no version"."""
        with self.index.read() as txn:
            damage = self.index.version_damage(txn, version_key(project, run, version))
        if damage is not None and damage.get("manifest"):
            raise IntegrityError(f"version {project}/{run}/{version} is damaged: "
                                 f"{damage['manifest']}; it cannot be read")

    # -- sealing a version ------------------------------------------------------------------
    def commit(self, prepared: PreparedVersion, metadata: dict | None,
               actor: dict | None) -> IngestReport:
        """Journal and index a version an ingest prepared, under the journal lock: its name
        must still be free and the chunks it shares still stored; its signature and its
        parent (parentage.py) are decided here, once, and its manifest written as the
        last record of its packs. `actor`: who the journal names (default: us)."""
        p, r, v = prepared.project, prepared.run, prepared.version
        entries = prepared.entries
        digest = version_digest(entries)
        stats = prepared.stats

        def seal():
            # Made again whenever another writer took the journal seq first (attempt).
            if self.version_record(p, r, v) is not None:
                raise VersionExistsError(
                    f"version {version_name(p, r, v)} was created by another import meanwhile; "
                    "versions are immutable: import under a new version name")
            self.check_name_not_deleted(p, r, v)
            self._check_chunks_still_stored(prepared)
            # Under the lock: the key is the one configured at the moment of the seal.
            signature = self.signing.seal_signature(p, r, v, digest) or \
                self.signing.carried_signature(metadata, p, r, v, digest)
            # Written under the lock: the parent it names must be the newest version
            # of the run at the moment of the commit.
            manifest = {"schema": MANIFEST_SCHEMA, "project": p, "run": r, "version": v,
                        "root": prepared.root, "digest": digest, "entries": entries,
                        "meta": with_default_parent(metadata, p, r, self.newest_checkpoint)}
            raw = encode_manifest(manifest)
            manifest_id = self.chunk_id(raw)
            manifest_loc = prepared.write_manifest(manifest_id, len(raw), compress_manifest(raw))
            with self.index.read() as txn:
                fresh = {cid: loc for cid, loc in prepared.new_chunks.items()
                         if not self.index.sound_chunk(txn, cid)}
            parent = prepared.delta_parent
            event = version_sealed(
                p, r, v, manifest=manifest_id.hex(), digest=digest, packs=prepared.pack_ids,
                files=sum(1 for e in entries if e["type"] == "file"),
                logical_bytes=stats.logical_bytes,
                new_raw_bytes=sum(loc.raw_len for loc in fresh.values()),
                new_stored_bytes=sum(loc.length for loc in fresh.values()) + manifest_loc.length,
                delta_parent=version_name(parent["project"], parent["run"], parent["version"])
                if parent else None, signature=signature)
            return self.committer.journal_and_index(
                event, actor, NewVersionRecords(manifest, manifest_id, manifest_loc, fresh))
        entry = self.committer.attempt(seal)
        return IngestReport(p, r, v, entry["files"], len(entries), digest, 0.0, stats,
                            entry["delta_parent"])

    def _check_chunks_still_stored(self, prepared: PreparedVersion):
        """Every chunk the version uses, and the base of every delta its ingest wrote,
        must be in the index or among the ingest's own new chunks (checked under the
        journal lock, which a garbage collection's index switch also takes). A gc in
        another process may have reclaimed a chunk since the ingest deduplicated
        against it, or chose it as a delta base."""
        needed = {bytes.fromhex(chunk) for e in prepared.entries if e["type"] == "file"
                  for chunk, _length in e["chunks"]}
        needed.update(prepared.delta_base_of.values())
        needed.difference_update(prepared.new_chunks)
        with self.index.read() as txn:
            missing = sum(1 for chunk_id in needed if self.index.get_chunk(txn, chunk_id) is None)
        if missing:
            name = version_name(prepared.project, prepared.run, prepared.version)
            raise ChunksReclaimedError(
                f"{missing} chunk(s) that {name} shares with other versions were reclaimed "
                "by a garbage collection while it was being imported; nothing was committed: "
                "import it again")


class NewVersionRecords:
    """The records a commit has just written (events.Records): the chunks the index does
    not hold soundly yet (a fresh copy of a damaged one heals it) and the manifest."""

    def __init__(self, manifest: dict, manifest_id: bytes, manifest_loc, fresh: dict):
        self._manifest = manifest
        self.manifest_id, self.manifest_loc = manifest_id, manifest_loc
        self.fresh = fresh

    def index_records(self, index: Index, txn, entry: dict) -> None:
        healed = False
        for cid, loc in self.fresh.items():
            if not index.add_chunk(txn, cid, loc) or index.chunk_damage(txn, cid) is not None:
                index.replace_chunk(txn, cid, loc)  # a fresh copy of a damaged chunk
                healed = True
        index.add_manifest(txn, self.manifest_id, self.manifest_loc)
        if healed:
            refresh_version_damage(index, txn)

    def manifest(self, index: Index, txn, entry: dict) -> dict:
        return self._manifest


__all__ = ["ALL_PROJECTS", "CHECKPOINT_KIND", "DERIVED_ALIASES", "FILES_KIND", "Catalog",
           "aliases_of", "is_checkpoint_kind"]
