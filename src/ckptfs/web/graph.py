"""The lineage graph across runs and projects, laid out in layers for SVG.

`lineage_graph(visible, focus=None)` gathers the nodes (every readable version, deleted
ones from their tombstones) and edges (each version's parent: explicit, read or the
run's previous; and its read-before-write `inputs`) from the catalog, as
ckptfs.meta.lineage reads them; with `focus` (P/R/V) only that version's ancestors and
descendants (meta.lineage.lineage_of). `layout` places them: longest-path layering (a
version one column right of its rightmost parent), then rows as tracks, as a git
history graph draws them: a version stays on its parent's row, its own run's first, so
a run's chain is one straight line and a fork opens a row of its own (reused once a
chain ends). Columns left to right keep a long run readable: 500 versions scroll
sideways, each node a link to its version page.
"""
from ckptfs.meta.lineage import lineage_of, parent_of, ref_of

COLUMN_WIDTH, ROW_HEIGHT, MARGIN = 56, 34, 28
# A node's label is its version name in a 9 px font, about 5.4 px a character: columns
# widen to the longest label (checkpoint-12000 needs 100 px), and a name longer than
# LABEL_CHARACTERS is cut with "…" (the node's tooltip names it whole).
CHARACTER_WIDTH, LABEL_CHARACTERS = 5.4, 24
RUN_COLOURS = 8  # the CSS classes run-0 … run-7
GRAPH_FIELDS = [("lineage", "parent"), ("lineage", "inputs"), ("tags",), ("aliases",)]


def all_documents(visible) -> dict[str, dict]:
    """Every readable version, tombstones included: ref -> document."""
    docs = {ref_of(d): d for d in visible.documents(fields=GRAPH_FIELDS)}
    for tomb in visible.store.tombstones():
        doc = visible.store.tombstone_document(tomb)
        if visible.can_read(doc["project"]):
            docs.setdefault(ref_of(doc), doc)
    return docs


def edges_of(docs: dict[str, dict]) -> list[tuple[str, str, str]]:
    """(parent, child, kind) between versions both in `docs`: kind is the parent's
    source (explicit, read, previous) or "input" for a read-before-write input."""
    edges = []
    for ref, doc in docs.items():
        link = parent_of(doc)
        if link and link[0] in docs:
            edges.append((link[0], ref, link[1]))
        for item in (doc.get("lineage") or {}).get("inputs") or ():
            if isinstance(item, dict) and all(isinstance(item.get(k), str)
                                              for k in ("project", "run", "version")):
                source = ref_of(item)
                if source in docs and source != ref and (not link or link[0] != source):
                    edges.append((source, ref, "input"))
    return edges


def layers_of(nodes: list[str], edges) -> dict[str, int]:
    """Longest-path layering: a node's column is one more than its parents' highest.
    `nodes` come in sealing order, so a parent (sealed first) is placed first; a cycle
    (explicit parents can make one) is cut where it closes."""
    parents: dict[str, list[str]] = {}
    for parent, child, _ in edges:
        parents.setdefault(child, []).append(parent)
    layer: dict[str, int] = {}
    for node in nodes:
        if node not in layer:
            place_iteratively(node, parents, layer)
    return layer


def place_iteratively(start: str, parents: dict, layer: dict) -> None:
    """`layer` of `start` and its ancestors without recursion (a run of thousands of
    versions is a chain that deep)."""
    stack, on_path = [start], {start}
    while stack:
        node = stack[-1]
        waiting = [p for p in parents.get(node, ()) if p not in layer and p not in on_path]
        if waiting:
            stack.append(waiting[0])
            on_path.add(waiting[0])
            continue
        stack.pop()
        on_path.discard(node)
        layer[node] = max((layer[p] for p in parents.get(node, ()) if p in layer),
                          default=-1) + 1


def assign_rows(columns: list[list[str]], edges) -> dict[str, int]:
    """A row per node, column by column (left to right): a node takes its first
    parent's row, the parent's own run first (so a run's chain stays on one line);
    a node with no parent there, or whose parent's row is taken in this column, takes
    a row left free by a chain that ended (its last node has no children), else a new
    one. Rows are tracks, as in a git history graph: few, and each one straight."""
    parents: dict[str, list[str]] = {}
    has_children = set()
    for parent, child, _ in edges:  # edges_of gives a child's parent before its inputs
        parents.setdefault(child, []).append(parent)
        has_children.add(parent)
    row: dict[str, int] = {}
    ended: dict[int, int] = {}  # row -> the column its chain ended in
    rows_used = 0

    def same_run(node: str, parent: str | None) -> bool:
        return parent is not None and parent.rsplit("/", 1)[0] == node.rsplit("/", 1)[0]

    for number, column in enumerate(columns):
        first_parent = {n: next((p for p in parents.get(n, ()) if p in row), None) for n in column}
        taken = set()
        for node in sorted(column, key=lambda n: not same_run(n, first_parent[n])):
            wanted = row.get(first_parent[node]) if first_parent[node] else None
            if wanted is None or wanted in taken:
                free = [r for r, at in ended.items() if at < number and r not in taken]
                if free:
                    wanted = min(free)
                    del ended[wanted]
                else:
                    wanted, rows_used = rows_used, rows_used + 1
            row[node] = wanted
            taken.add(wanted)
            ended.pop(wanted, None)
            if node not in has_children:
                ended[wanted] = number
    return row


def label_of(version: str) -> str:
    return version if len(version) <= LABEL_CHARACTERS else version[:LABEL_CHARACTERS - 1] + "…"


def column_width_for(labels) -> int:
    """Wide enough that neighbouring labels do not run into each other."""
    longest = max((len(label) for label in labels), default=0)
    return max(COLUMN_WIDTH, round(longest * CHARACTER_WIDTH + 12))


def layout(nodes: list[str], edges, column_width: int = COLUMN_WIDTH) -> dict[str, tuple[float, float]]:
    """(x, y) of every node: its column by longest path, its row by assign_rows."""
    layer = layers_of(nodes, edges)
    columns: list[list[str]] = [[] for _ in range(max(layer.values(), default=-1) + 1)]
    for node in nodes:  # in sealing order: an older chain claims its row first
        columns[layer[node]].append(node)
    row = assign_rows(columns, edges)
    left = max(MARGIN, column_width // 2)  # room for the first column's labels
    return {node: (left + layer[node] * column_width, MARGIN + row[node] * ROW_HEIGHT)
            for node in nodes}


def focused_documents(visible, focus: str, docs: dict[str, dict]) -> dict[str, dict]:
    """Only `focus`, its ancestors and its descendants."""
    graph = lineage_of(visible.store, focus, can_read=visible.can_read)
    keep = {focus} | {a["ref"] for a in graph["ancestors"]} | \
        {d["ref"] for d in graph["descendants"]}
    return {ref: doc for ref, doc in docs.items() if ref in keep}


def lineage_graph(visible, focus: str | None = None, project: str | None = None) -> dict:
    """Nodes with their place, kind and link; edges with their ends' places."""
    docs = all_documents(visible)
    if focus:
        docs = focused_documents(visible, focus, docs)
    if project:
        docs = with_neighbours(docs, project)
    ordered = sorted(docs, key=lambda r: docs[r].get("seq", 0))
    edges = edges_of(docs)
    labels = {ref: label_of(docs[ref]["version"]) for ref in ordered}
    column_width = column_width_for(labels.values())
    places = layout(ordered, edges, column_width)
    runs = {}
    for ref in ordered:
        runs.setdefault(ref.rsplit("/", 1)[0], f"run-{len(runs) % RUN_COLOURS}")
    nodes = [{"ref": ref, "x": places[ref][0], "y": places[ref][1],
              "version": docs[ref]["version"], "label": labels[ref], "run": ref.rsplit("/", 1)[0],
              "colour": runs[ref.rsplit("/", 1)[0]], "deleted": "deleted_at" in docs[ref],
              "tags": docs[ref].get("tags") or [], "focus": ref == focus} for ref in ordered]
    width = max((n["x"] for n in nodes), default=0) + max(MARGIN, column_width // 2) + MARGIN
    height = max((n["y"] for n in nodes), default=0) + MARGIN * 2
    return {"nodes": nodes, "runs": runs, "focus": focus, "project": project,
            "edges": [{"from": a, "to": b, "kind": kind, "x1": places[a][0], "y1": places[a][1],
                       "x2": places[b][0], "y2": places[b][1]} for a, b, kind in edges],
            "width": width, "height": height}


def with_neighbours(docs: dict[str, dict], project: str) -> dict[str, dict]:
    """The versions of `project` and those of other projects linked to them by an edge."""
    own = {ref for ref, doc in docs.items() if doc["project"] == project}
    keep = set(own)
    for parent, child, _ in edges_of(docs):
        if parent in own or child in own:
            keep.update((parent, child))
    return {ref: doc for ref, doc in docs.items() if ref in keep}
