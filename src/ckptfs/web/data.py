"""What the dashboard's pages show, gathered from the store: plain dicts and lists the
templates render. Nothing here knows Flask.

Every function is given a `Visibility`: the projects the server's user may read
(docs/access.md). A project it may not read is left out of every list, and naming it
(in a URL) is answered as if it did not exist (`NotFoundError`), so a page never says
which projects are there.
"""
from ckptfs.meta.diff import resolve_version, split_ref
from ckptfs.meta.lineage import parent_of, ref_of
from ckptfs.meta.query import compile_query, split_field
from ckptfs.meta.sidecar import sidecar_of, version_sidecar
from ckptfs.store import NotFoundError

TABLE_ROW_LIMIT = 1000  # a run page lists at most this many versions (the chart has all)

# What each page reads of the catalog documents (see Visibility.documents).
SUMMARY_FIELDS = [("kind",), ("sealed_at",), ("aliases",), ("storage",)]
ROW_FIELDS = [("kind",), ("sealed_at",), ("step",), ("epoch",), ("metrics",), ("tags",),
              ("aliases",), ("storage",), ("scan", "status"), ("signature",), ("best_by",)]
LINK_FIELDS = [("lineage", "parent"), ("lineage", "inputs"), ("kind",)]


class Visibility:
    """Which projects the server's user (this process: `actor` None) may read. Asked
    once per request: a grant or revoke counts from the next page."""

    def __init__(self, store):
        self.store = store
        self.enforced = store.enforcing()
        self._readable: dict[str, bool] = {}

    def can_read(self, project: str) -> bool:
        if not self.enforced:
            return True
        if project not in self._readable:
            self._readable[project] = self.store.allowed(None, project, "reader")
        return self._readable[project]

    def projects(self) -> list[str]:
        return [p for p in self.store.projects() if self.can_read(p)]

    def documents(self, project: str | None = None, run: str | None = None,
                  fields=None) -> list[dict]:
        """Catalog documents of readable projects, in sealing order; with `fields`
        (catalog paths, as tuples) only those (and identity): over a run of 10,000
        versions, reading whole documents is most of a page's time and memory."""
        docs = self.store.catalog_documents(project, run, fields=fields)
        return sorted((d for d in docs if self.can_read(d["project"])), key=lambda d: d["seq"])

    def require_project(self, project: str) -> None:
        """NotFoundError, in the same words, for a project that is not there and for one
        the user may not read."""
        if not self.can_read(project) or project not in self.store.projects():
            raise NotFoundError(f"no project {project!r} in the store")

    def require_run(self, project: str, run: str) -> None:
        self.require_project(project)
        if run not in self.store.runs(project):
            raise NotFoundError(f"no run {project}/{run} in the store")


# -- the projects page ---------------------------------------------------------------------
def is_checkpoint(doc: dict) -> bool:
    return doc.get("kind", "checkpoint") == "checkpoint"


def bytes_of(doc: dict, key: str) -> int:
    return (doc.get("storage") or {}).get(key) or 0


def run_summary(project: str, run: str, docs: list[dict]) -> dict:
    """A run's line on the projects page: its versions, latest and best, sizes."""
    aliases = {alias: d["version"] for d in docs for alias in d.get("aliases") or ()}
    logical = sum(bytes_of(d, "logical_bytes") for d in docs)
    stored = sum(bytes_of(d, "new_stored_bytes") for d in docs)
    return {"project": project, "run": run, "versions": len(docs),
            "checkpoints": sum(1 for d in docs if is_checkpoint(d)),
            "latest": aliases.get("latest"), "best": aliases.get("best"),
            "last_sealed": docs[-1]["sealed_at"] if docs else None,
            "logical_bytes": logical, "stored_bytes": stored,
            "ratio": logical / stored if stored else None}


def projects_overview(visible: Visibility) -> list[dict]:
    """Every readable project with its runs (run_summary) and totals."""
    overview = []
    for project in visible.projects():
        by_run: dict[str, list[dict]] = {}
        for doc in visible.documents(project, fields=SUMMARY_FIELDS):
            by_run.setdefault(doc["run"], []).append(doc)
        runs = [run_summary(project, run, docs) for run, docs in sorted(by_run.items())]
        logical = sum(r["logical_bytes"] for r in runs)
        stored = sum(r["stored_bytes"] for r in runs)
        overview.append({"name": project, "runs": runs,
                         "versions": sum(r["versions"] for r in runs),
                         "logical_bytes": logical, "stored_bytes": stored,
                         "ratio": logical / stored if stored else None})
    return overview


# -- a run ---------------------------------------------------------------------------------
def metric_names(docs: list[dict]) -> list[str]:
    names = set()
    for doc in docs:
        names.update(k for k, v in (doc.get("metrics") or {}).items() if is_plotted(v))
    return sorted(names)


def is_plotted(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def query_of(expr: str):
    """The compiled `ckptfs find` expression (None if empty; QueryError if bad)."""
    return compile_query(expr) if expr.strip() else None


def fields_for(query) -> list[tuple]:
    """The catalog paths a page of rows needs, and those the query reads (a bare name
    may be a metric: docs/query.md)."""
    paths = list(ROW_FIELDS)
    for name in query.fields if query else ():
        path = split_field(name)
        paths.append(path)
        if len(path) == 1:
            paths.append(("metrics", path[0]))
    return paths


def filtered(docs: list[dict], query) -> list[dict]:
    return docs if query is None else [d for d in docs if query.matches(d)]


def version_row(doc: dict) -> dict:
    scan = doc.get("scan") or {}
    return {"version": doc["version"], "kind": doc.get("kind", "checkpoint"),
            "sealed_at": doc.get("sealed_at"), "step": doc.get("step"),
            "epoch": doc.get("epoch"), "metrics": doc.get("metrics") or {},
            "tags": doc.get("tags") or [], "logical_bytes": bytes_of(doc, "logical_bytes"),
            "stored_bytes": bytes_of(doc, "new_stored_bytes"),
            "scan": scan_status(scan), "signed": bool(doc.get("signature"))}


def scan_status(scan: dict) -> str:
    """The pickle scan's status (docs/sidecar.md, "Pickle scan"), or "none"."""
    return str(scan.get("status") or "none")


def run_page(visible: Visibility, project: str, run: str, expr: str,
             compare: list[str]) -> dict:
    """The run's versions (filtered by `expr`), the metrics they have, and the
    documents of the sibling runs to overlay (`compare`: runs of the same project)."""
    visible.require_run(project, run)
    query = query_of(expr)
    fields = fields_for(query)
    docs = visible.documents(project, run, fields)
    shown = filtered(docs, query)
    siblings = [r for r in visible.store.runs(project) if r != run]
    overlaid = {r: filtered([d for d in visible.documents(project, r, fields) if is_checkpoint(d)],
                            query)
                for r in compare if r in siblings}
    rows = [version_row(d) for d in shown]
    aliases = {alias: d["version"] for d in docs for alias in d.get("aliases") or ()}
    checkpoints = [d for d in docs if is_checkpoint(d)]
    return {"project": project, "run": run, "expr": expr, "total": len(docs),
            "aliases": dict(sorted(aliases.items())),
            "best_metric": best_rule_text(visible.store, project, checkpoints),
            "matching": len(shown), "rows": rows[:TABLE_ROW_LIMIT],
            "truncated": len(rows) > TABLE_ROW_LIMIT,
            "metrics": metric_names(shown + [d for ds in overlaid.values() for d in ds]),
            "series": {run: [d for d in shown if is_checkpoint(d)], **overlaid},
            "siblings": siblings, "compare": [r for r in compare if r in overlaid]}


def best_rule_text(store, project: str, checkpoints: list[dict]) -> str | None:
    """What `best` goes by in this run, in words (the catalog's best_rule: the project's
    primary metric, else what the training job chose)."""
    from ckptfs.store.catalog import best_rule
    newest = max(checkpoints, key=lambda d: d["seq"], default={})
    rule = best_rule({project: store.project_settings(project)}, project, newest)
    if rule is None:
        return None
    text = f"{rule['metric']} ({rule['mode']})"
    return text if rule["source"] is None else f"{text}, the job's {rule['source']}"


# -- a version -----------------------------------------------------------------------------
def resolve(visible: Visibility, ref: str) -> tuple[str, str, str]:
    """(project, run, version) of P/R/V or P/R/ALIAS in a readable project."""
    visible.require_project(split_ref(ref)[0])
    return resolve_version(visible.store, ref)


def version_page(visible: Visibility, project: str, run: str, version: str) -> dict:
    """The sidecar of a version (a deleted one's tombstone too), and where its files
    are: the mounts of the store (if any) and the `ckptfs get` commands."""
    visible.require_project(project)
    sidecar = version_sidecar_of(visible.store, project, run, version)
    lineage = sidecar.get("lineage") or {}
    parent = parent_of(sidecar)
    inputs = [ref_of(i) for i in lineage.get("inputs") or () if isinstance(i, dict)]
    return {"sidecar": sidecar, "ref": f"{project}/{run}/{version}",
            "parent": parent[0] if parent else None,
            "parent_source": parent[1] if parent else None,
            "parent_readable": bool(parent) and visible.can_read(parent[0].split("/", 1)[0]),
            "inputs": [i for i in inputs if visible.can_read(i.split("/", 1)[0])],
            "lineage_rest": {k: v for k, v in lineage.items() if k not in ("parent", "inputs")},
            "children": children_of(visible, f"{project}/{run}/{version}"),
            "mounts": mounts_of(visible.store)}


def version_sidecar_of(store, project: str, run: str, version: str) -> dict:
    """The sidecar as meta.sidecar.sidecar_of gives it, read from this version's own
    catalog document and its run's aliases (not every document of its run: a run may
    hold 10,000); a deleted version's tombstone through sidecar_of."""
    doc = store.catalog_document(project, run, version)
    if doc is None:
        return sidecar_of(store, project, run, version, deleted=True)
    aliases = sorted(a for a, target in store.aliases(project, run).items() if target == version)
    doc.update(aliases=aliases, tags=sorted(set(doc.get("tags") or ()) | set(aliases)))
    return version_sidecar(doc, store.walk(project, run, version))


def children_of(visible: Visibility, ref: str) -> list[str]:
    return [ref_of(d) for d in visible.documents(fields=LINK_FIELDS)
            if (link := parent_of(d)) is not None and link[0] == ref]


def mounts_of(store) -> list[str]:
    """Where this machine mounts the store (for the files' paths in the mount)."""
    from ckptfs.fs.mounts import mount_table
    from ckptfs.store.location import store_label
    label = store_label(store.path)
    try:
        return [e.mountpoint for e in mount_table() if e.store == label]
    except OSError:
        return []


def previous_checkpoint(visible: Visibility, project: str, run: str, version: str) -> str | None:
    """The checkpoint sealed before `version` in its run (the diff page's default)."""
    earlier = None
    for doc in visible.documents(project, run, fields=[("kind",)]):
        if doc["version"] == version:
            return earlier
        if is_checkpoint(doc):
            earlier = ref_of(doc)
    return None
