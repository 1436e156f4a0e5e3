"""Lineage: which version each version came from, across runs and projects.

Every sealed version may name a parent (`lineage.parent` in its sidecar): the one its
ckptfs.json names (a fine-tune's base, in any run or project), else the run's previous
version. `lineage_of` follows those links up (ancestors) and down (descendants) over the
catalog, deleted versions included (their tombstones keep their lineage, so retention
never breaks a chain); `render_*` print the result as text, JSON, Graphviz dot or Mermaid.
"""
import json

from ckptfs.store import NotFoundError


def ref_of(doc: dict) -> str:
    return f"{doc['project']}/{doc['run']}/{doc['version']}"


def parent_of(doc: dict) -> tuple[str, str] | None:
    """(parent ref, how it was given: 'explicit' or 'previous') or None."""
    parent = (doc.get("lineage") or {}).get("parent")
    if not isinstance(parent, dict) or not all(isinstance(parent.get(k), str)
                                               for k in ("project", "run", "version")):
        return None
    return f"{parent['project']}/{parent['run']}/{parent['version']}", parent.get("source", "explicit")


def lineage_of(store, ref: str, can_read=None) -> dict:
    """{"version", "ancestors": [nearest first], "descendants": [breadth first],
    "edges": [[parent, child, source]], "docs": {ref: doc}} for `ref` = P/R/V. Deleted
    versions are in it too, marked (their tombstones keep the lineage whole).

    `can_read(project)` (access control) leaves out the versions of projects it says
    no to: an ancestor there shows as hidden (its child names it anyway), and the chain
    stops at it; descendants there are not shown at all."""
    docs = {ref_of(d): d for d in store.catalog_documents()}
    for tomb in store.tombstones():
        doc = store.tombstone_document(tomb)
        docs.setdefault(ref_of(doc), doc)
    if can_read is not None:
        docs = {r: d for r, d in docs.items() if can_read(d["project"])}
    if ref not in docs:
        raise NotFoundError(f"no version {ref} in the store")
    children: dict[str, list[tuple[str, str]]] = {}
    for child, doc in docs.items():
        link = parent_of(doc)
        if link:
            children.setdefault(link[0], []).append((child, link[1]))
    ancestors, seen, current = [], {ref}, ref
    while (link := parent_of(docs[current]) if current in docs else None) is not None:
        parent, source = link
        if parent in seen:
            break  # a cycle through explicit parents: stop rather than loop
        hidden = can_read is not None and not can_read(parent.split("/", 1)[0])
        ancestors.append({"ref": parent, "source": source,
                          "missing": parent not in docs and not hidden,
                          **({"hidden": True} if hidden else {}),
                          **_deleted_mark(docs.get(parent))})
        seen.add(parent)
        current = parent
    edges = []
    for i, ancestor in enumerate(ancestors):
        child = ancestors[i - 1]["ref"] if i else ref
        edges.append([ancestor["ref"], child, ancestor["source"]])
    descendants, queue = [], [ref]
    while queue:
        node = queue.pop(0)
        for child, source in sorted(children.get(node, []), key=lambda c: docs[c[0]]["seq"]):
            if child in seen:
                continue
            seen.add(child)
            descendants.append({"ref": child, "parent": node, "source": source,
                                **_deleted_mark(docs[child])})
            edges.append([node, child, source])
            queue.append(child)
    return {"version": ref, **_deleted_mark(docs[ref]), "ancestors": ancestors,
            "descendants": descendants, "edges": edges, "docs": docs}


def _deleted_mark(doc: dict | None) -> dict:
    """{"deleted": true, "deleted_at": …} for a deleted version, else nothing."""
    if doc is None or "deleted_at" not in doc:
        return {}
    return {"deleted": True, "deleted_at": doc["deleted_at"]}


def _label(graph: dict, ref: str) -> str:
    doc = graph["docs"].get(ref)
    if doc is None:
        hidden = any(a["ref"] == ref and a.get("hidden") for a in graph["ancestors"])
        return f"{ref} ({'in a project you cannot read' if hidden else 'not in this store'})"
    if "deleted_at" in doc:
        return f"{ref} (deleted {doc['deleted_at'][:10]})"
    tags = f" [{', '.join(doc['tags'])}]" if doc.get("tags") else ""
    return ref + tags


def render_text(graph: dict) -> str:
    """The ancestors as a chain down to the version, then its descendants as a tree.
    A run's straight line of versions stays at one indent; branches indent."""
    lines = []
    for ancestor in reversed(graph["ancestors"]):
        how = "" if ancestor["source"] == "previous" else "  (explicit parent)"
        lines.append(f"  {_label(graph, ancestor['ref'])}{how}")
    lines.append(f"* {_label(graph, graph['version'])}")
    kids: dict[str, list[dict]] = {}
    for d in graph["descendants"]:
        kids.setdefault(d["parent"], []).append(d)

    def walk(node: str, indent: str):
        while True:
            below = kids.get(node, [])
            if len(below) == 1:  # a straight line: same indent
                node = below[0]["ref"]
                how = "" if below[0]["source"] == "previous" else "  (explicit parent: the line above)"
                lines.append(f"{indent}  {_label(graph, node)}{how}")
                continue
            for i, child in enumerate(below):
                last = i == len(below) - 1
                how = "" if child["source"] == "previous" else "  (explicit parent)"
                lines.append(f"{indent}  {'└─' if last else '├─'} {_label(graph, child['ref'])}{how}")
                walk(child["ref"], indent + ("     " if last else "  │  "))
            return
    walk(graph["version"], "")
    return "\n".join(lines)


def render_json(graph: dict) -> str:
    out = {k: graph[k] for k in ("version", "deleted", "deleted_at", "ancestors", "descendants",
                                 "edges") if k in graph}
    return json.dumps(out, indent=2)


def _nodes(graph: dict) -> list[str]:
    refs = [a["ref"] for a in reversed(graph["ancestors"])] + [graph["version"]]
    return refs + [d["ref"] for d in graph["descendants"]]


def render_dot(graph: dict) -> str:
    lines = ["digraph lineage {", "  rankdir=TB;", "  node [shape=box];"]
    for ref in _nodes(graph):
        style = ", style=bold" if ref == graph["version"] else ""
        lines.append(f"  {json.dumps(ref)} [label={json.dumps(_label(graph, ref))}{style}];")
    for parent, child, source in graph["edges"]:
        style = "" if source == "previous" else ' [style=dashed, label="explicit"]'
        lines.append(f"  {json.dumps(parent)} -> {json.dumps(child)}{style};")
    lines.append("}")
    return "\n".join(lines)


def render_mermaid(graph: dict) -> str:
    ids = {ref: f"n{i}" for i, ref in enumerate(_nodes(graph))}
    lines = ["graph TD"]
    for ref, node_id in ids.items():
        text = _label(graph, ref).replace('"', "#quot;")
        lines.append(f'  {node_id}["{text}"]')
    for parent, child, source in graph["edges"]:
        arrow = "-->" if source == "previous" else "-.->|explicit|"
        lines.append(f"  {ids[parent]} {arrow} {ids[child]}")
    lines.append(f"  style {ids[graph['version']]} stroke-width:3px")
    return "\n".join(lines)


RENDERERS = {"text": render_text, "json": render_json, "dot": render_dot,
             "mermaid": render_mermaid}
