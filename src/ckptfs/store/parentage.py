"""A version's kind and its default parent: rules the commit and the seal's preview share.

A version's `kind` (in its metadata) is "checkpoint" (weights: the default) or "files"
(logs, metrics, anything without a model). A files version is never `latest`, `best`,
a default parent or a delta base.

A version's parent (`lineage.parent`) is the one its metadata names; else, for a
checkpoint, the newest checkpoint of its run (a run's versions descend from each other).
The commit decides it once, under the journal lock (catalog.py); the seal's schema check
previews it with the same function (meta/seal.py).
"""
CHECKPOINT_KIND, FILES_KIND = "checkpoint", "files"


def is_checkpoint_kind(doc: dict) -> bool:
    return doc.get("kind") != FILES_KIND


def with_default_parent(metadata: dict | None, project: str, run: str,
                        newest_checkpoint) -> dict:
    """The metadata with `lineage.parent`: the one it names, else (for a checkpoint) the
    run's newest checkpoint, `newest_checkpoint(project, run)` (a catalog document, or
    None: then the metadata is returned as it is)."""
    meta = dict(metadata or {})
    lineage = dict(meta.get("lineage") or {})
    if not lineage.get("parent") and is_checkpoint_kind(meta):
        newest = newest_checkpoint(project, run)
        if newest is None:
            return meta
        lineage["parent"] = {"project": project, "run": run, "version": newest["version"],
                             "source": "previous"}
    meta["lineage"] = lineage
    return meta
