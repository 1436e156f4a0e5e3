"""The read-only tree the mount shows, as plain Python over the Store (no FUSE here).

Every node has a key, a tuple that names it for as long as the daemon runs:

    ("root",)                      the mount point
    ("projects",)                  projects/
    ("project", p)                 projects/<p>/
    ("run", p, r)                  projects/<p>/<r>/
    ("version", p, r, v)           projects/<p>/<r>/<v>/
    ("entry", p, r, v, path)       a file, directory or symlink inside a version
    ("sidecar", p, r, v)           projects/<p>/<r>/<v>.json
    ("runjson", p, r)              projects/<p>/<r>/run.json
    ("alias", p, r, name)          projects/<p>/<r>/<name> -> a version (latest, best, tags)
    ("control",)                   .ckptfs/
    ("stats",)                     .ckptfs/stats.json
    ("audit",)                     .ckptfs/audit.jsonl (the journal, read-only)
    ("deleted",)                   .ckptfs/deleted/: tombstones of deleted versions
    ("deleted-project", p)         .ckptfs/deleted/<p>/
    ("deleted-run", p, r)          .ckptfs/deleted/<p>/<r>/
    ("tombstone", p, r, v)         .ckptfs/deleted/<p>/<r>/<v>.json: the sidecar as it was,
                                   with deleted_at and deletion (reason, policy, who)

A deleted version leaves projects/: the nodes of its files, cached for as long as the
daemon runs otherwise, are dropped when a deletion is seen (`take_deleted` tells the
daemon which, so it can tell the kernel too).
"""
import json
import os
import stat
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

from ckptfs.meta import render, run_sidecar, tombstone_sidecar, version_sidecar
from ckptfs.store import NotFoundError, Store
from ckptfs.store.catalog import aliases_of


READ_ONLY_DIR = 0o555
WRITE_BITS = 0o222
ROOT = ("root",)


@dataclass
class Node:
    key: tuple
    kind: str                  # "dir", "file" or "symlink"
    mode: int                  # permission bits
    size: int = 0
    mtime_ns: int = 0
    target: str | None = None  # symlinks
    entry: dict | None = None  # files inside a version: the index entry (chunks, sha256…)
    content: bytes | None = None  # generated files (sidecars, stats)
    source_path: str | None = None  # files shown as they are on disk (the audit log)
    immutable: bool = False    # the kernel may cache it for as long as it likes
    subdirs: int = 0           # for st_nlink of directories
    uid: int | None = None     # owner (inbox files); None: the daemon's user
    gid: int | None = None
    origin: tuple | None = None  # (p, r, v, path) of a sealed file: reads feed lineage
    atime_ns: int | None = None  # None: mtime_ns (inbox files report their own)
    ctime_ns: int | None = None
    nlink: int | None = None     # None: 2 + subdirs for a directory, else 1
    rdev: int = 0                # device files in the inbox


def iso_to_ns(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1e9)


class ProjectTree:
    """Answers lookups and listings of `projects/` and `.ckptfs/` from the store's index."""

    def __init__(self, store: Store, extra_root_children=()):
        self.store = store
        self.mounted_ns = time.time_ns()
        self._extra_root = list(extra_root_children)
        self._entries: OrderedDict[tuple, list] = OrderedDict()  # version -> its entries
        self.stats_provider = None  # set by the daemon: () -> dict for .ckptfs/stats.json
        # Nodes of sealed content never change: cached until evicted. Nodes whose answer
        # depends on the catalog (projects, runs, aliases, sidecars with their tags) are
        # cached until the next journal event, which the index's sequence number tells.
        self._sealed_nodes: OrderedDict[tuple, Node | None] = OrderedDict()
        self._catalog_nodes: dict[tuple, Node | None] = {}
        self._run_views: dict[tuple, tuple[dict, dict]] = {}
        self._catalog_seq = -1
        self._deleted_count = store.deleted_count()
        self._newly_deleted: list[tuple] = []  # (p, r, v) the daemon has not told the kernel

    SEALED_KINDS = ("version", "entry")
    CATALOG_KINDS = ("project", "run", "alias", "sidecar", "runjson", "deleted-project",
                     "deleted-run", "tombstone")
    MAX_CACHED_NODES = 200_000

    def node(self, key: tuple) -> Node | None:
        """The node for `key`, or None if nothing has that key now."""
        if key[0] in self.SEALED_KINDS:
            if key in self._sealed_nodes:
                self._sealed_nodes.move_to_end(key)
                return self._sealed_nodes[key]
            node = self._make_node(key)
            if node is not None:  # a version not sealed yet may appear later
                self._sealed_nodes[key] = node
                if len(self._sealed_nodes) > self.MAX_CACHED_NODES:
                    self._sealed_nodes.popitem(last=False)
            return node
        if key[0] in self.CATALOG_KINDS:
            self._check_catalog_seq()
            if key not in self._catalog_nodes:
                self._catalog_nodes[key] = self._make_node(key)
            return self._catalog_nodes[key]
        return self._make_node(key)

    def _check_catalog_seq(self):
        seq = self.store.applied_seq()
        if seq != self._catalog_seq:
            self._catalog_nodes.clear()
            self._run_views.clear()
            self._forget_deleted(self._catalog_seq)
            self._catalog_seq = seq

    def _forget_deleted(self, since_seq: int):
        """Versions deleted since journal entry `since_seq` (by a gc or `ckptfs delete`,
        usually in another process): drop their cached nodes, which otherwise live as
        long as the daemon (sealed content never changes, but it can go)."""
        count = self.store.deleted_count()
        if count == self._deleted_count:
            return
        self._deleted_count = count
        gone = {(t["record"]["project"], t["record"]["run"], t["record"]["version"])
                for t in self.store.tombstones() if t["seq"] > since_seq}
        for key in [k for k in self._sealed_nodes if tuple(k[1:4]) in gone]:
            del self._sealed_nodes[key]
        for version in gone:
            self._entries.pop(version, None)
        self._newly_deleted.extend(sorted(gone))

    def take_deleted(self) -> list[tuple]:
        """(p, r, v) of the versions deleted since the last call (checking now)."""
        self._check_catalog_seq()
        gone, self._newly_deleted = self._newly_deleted, []
        return gone

    def run_view(self, p: str, r: str) -> tuple[dict, dict]:
        """({version: catalog document with current tags}, {alias: version}) of a run."""
        self._check_catalog_seq()
        view = self._run_views.get((p, r))
        if view is None:
            docs = {d["version"]: d for d in self.store.catalog_documents(p, r)}
            view = self._run_views[(p, r)] = (docs, aliases_of(docs.values()))
        return view

    # -- names -> keys --------------------------------------------------------------
    def child_key(self, parent: tuple, name: str) -> tuple | None:
        kind = parent[0]
        if kind == "root":
            return {"projects": ("projects",), ".ckptfs": ("control",)}.get(name)
        if kind == "control":
            return {"stats.json": ("stats",), "audit.jsonl": ("audit",),
                    "deleted": ("deleted",)}.get(name)
        if kind in ("projects", "project", "run", "deleted", "deleted-project") \
                and not self._valid(name):
            return None
        if kind == "deleted":
            return self._existing(("deleted-project", name))
        if kind == "deleted-project":
            return self._existing(("deleted-run", parent[1], name))
        if kind == "deleted-run":
            stem = name[:-5] if name.endswith(".json") else None
            return self._existing(("tombstone", *parent[1:], stem)) \
                if stem and self._valid(stem) else None
        if kind == "projects":
            return self._existing(("project", name))
        if kind == "project":
            return self._existing(("run", parent[1], name))
        if kind == "run":
            p, r = parent[1:]
            self._check_catalog_seq()  # a version deleted meanwhile must not be found
            found = self._existing(("version", p, r, name))
            if found is None and name == "run.json":
                found = self._existing(("runjson", p, r))
            if found is None and name.endswith(".json"):
                found = self._existing(("sidecar", p, r, name[:-5]))
            if found is None:
                found = self._existing(("alias", p, r, name))
            return found
        if kind in ("version", "entry"):
            p, r, v = parent[1:4]
            path = f"{parent[4]}/{name}" if kind == "entry" else name
            return self._existing(("entry", p, r, v, path))
        return None

    def _existing(self, key: tuple) -> tuple | None:
        return key if self.node(key) is not None else None

    @staticmethod
    def _valid(name: str) -> bool:
        """Could a stored project, run or version have this name? Names are checked
        when they are made; the mount shows whatever the store holds, also a name an
        older, laxer rule let in (a trailing space, an NFD spelling), so only what no
        name can be is turned away here."""
        return name not in ("", ".", "..") and "/" not in name and "\0" not in name

    def _newest(self, p: str, r: str) -> dict | None:
        docs = self.run_view(p, r)[0]
        return max(docs.values(), key=lambda v: v["seq"]) if docs else None

    # -- listings ---------------------------------------------------------------------
    def children(self, key: tuple) -> list[tuple[str, tuple]]:
        kind = key[0]
        if kind == "root":
            return [("projects", ("projects",)), (".ckptfs", ("control",))] + self._extra_root
        if kind == "control":
            return [("audit.jsonl", ("audit",)), ("deleted", ("deleted",)),
                    ("stats.json", ("stats",))]
        if kind == "deleted":
            return [(p, ("deleted-project", p)) for p in self.store.deleted_projects()]
        if kind == "deleted-project":
            return [(r, ("deleted-run", key[1], r)) for r in self.store.deleted_runs(key[1])]
        if kind == "deleted-run":
            return [(t["record"]["version"] + ".json", ("tombstone", *key[1:], t["record"]["version"]))
                    for t in self.store.tombstones(*key[1:])]
        if kind == "projects":
            return [(p, ("project", p)) for p in self.store.projects()]
        if kind == "project":
            return [(r, ("run", key[1], r)) for r in self.store.runs(key[1])]
        if kind == "run":
            p, r = key[1:]
            docs, aliases = self.run_view(p, r)
            out = []
            for v in docs:
                out.append((v, ("version", p, r, v)))
                out.append((v + ".json", ("sidecar", p, r, v)))
            if out:
                out.append(("run.json", ("runjson", p, r)))
                out.extend((name, ("alias", p, r, name)) for name in sorted(aliases)
                           if name not in docs)  # a version hides an alias of its name
            return out
        if kind in ("version", "entry"):
            p, r, v = key[1:4]
            dir_path = key[4] if kind == "entry" else ""
            return [(e["path"].rsplit("/", 1)[-1], ("entry", p, r, v, e["path"]))
                    for e in self.store.list_dir(p, r, v, dir_path)]
        return []

    # -- nodes --------------------------------------------------------------------------
    def _make_node(self, key: tuple) -> Node | None:
        kind = key[0]
        if kind in ("root", "projects", "control", "deleted"):
            return Node(key, "dir", READ_ONLY_DIR if kind != "root" else 0o755,
                        mtime_ns=self.mounted_ns, subdirs=2)
        if kind in ("deleted-project", "deleted-run", "tombstone"):
            return self._deleted_node(key)
        if kind == "audit":  # read from the journal file itself, as it is now
            path = self.store.journal.path
            try:
                st = os.stat(path)
            except FileNotFoundError:
                return Node(key, "file", 0o444, 0, self.mounted_ns, content=b"")
            return Node(key, "file", 0o444, st.st_size, st.st_mtime_ns, source_path=path)
        if kind == "stats":
            content = (json.dumps(self.stats_provider() if self.stats_provider else {},
                                  indent=2, sort_keys=True) + "\n").encode()
            return Node(key, "file", 0o444, len(content), time.time_ns(), content=content)
        if kind == "project":
            runs = self.store.runs(key[1])
            return Node(key, "dir", READ_ONLY_DIR, mtime_ns=self.mounted_ns,
                        subdirs=len(runs)) if runs else None
        if kind == "run":
            newest = self._newest(*key[1:])
            if newest is None:
                return None
            return Node(key, "dir", READ_ONLY_DIR, mtime_ns=iso_to_ns(newest["sealed_at"]),
                        subdirs=len(self.run_view(*key[1:])[0]))
        if kind == "alias":
            docs, aliases = self.run_view(*key[1:3])
            target = aliases.get(key[3])
            if target is None or key[3] in docs:
                return None
            return Node(key, "symlink", 0o777, len(os.fsencode(target)),
                        iso_to_ns(docs[target]["sealed_at"]), target=target)
        if kind == "runjson":
            docs, aliases = self.run_view(*key[1:3])
            if not docs:
                return None
            deleted = [self.store.tombstone_document(t) for t in self.store.tombstones(*key[1:3])]
            content = render(run_sidecar(key[1], key[2], list(docs.values()), aliases, deleted))
            return Node(key, "file", 0o444, len(content),
                        iso_to_ns(self._newest(*key[1:3])["sealed_at"]), content=content)
        if kind == "sidecar":
            doc = self.run_view(*key[1:3])[0].get(key[3])
            if doc is None:
                return None
            content = render(version_sidecar(doc, self._version_entries(key[1:4])))
            return Node(key, "file", 0o444, len(content), iso_to_ns(doc["sealed_at"]),
                        content=content)
        record = self.store.version_record(*key[1:4])
        if record is None:
            return None
        if kind == "version":
            root = record["root"]
            return Node(key, "dir", root["mode"] & ~WRITE_BITS, mtime_ns=root["mtime_ns"],
                        immutable=True, subdirs=self._count_subdirs(key[1:4], ""))
        if kind == "entry":
            try:
                e = self.store.entry(*key[1:4], key[4])
            except NotFoundError:
                return None
            node = Node(key, e["type"], e["mode"] & ~WRITE_BITS if e["type"] != "symlink" else 0o777,
                        mtime_ns=e["mtime_ns"], immutable=True)
            if e["type"] == "file":
                node.size, node.entry = e["size"], e
                node.origin = (*key[1:4], key[4])
            elif e["type"] == "symlink":
                node.target = e["target"]
                node.size = len(os.fsencode(e["target"]))
            else:
                node.subdirs = self._count_subdirs(key[1:4], key[4])
            return node
        return None

    def _deleted_node(self, key: tuple) -> Node | None:
        kind = key[0]
        if kind == "deleted-project":
            runs = self.store.deleted_runs(key[1])
            return Node(key, "dir", READ_ONLY_DIR, mtime_ns=self.mounted_ns,
                        subdirs=len(runs)) if runs else None
        if kind == "deleted-run":
            found = self.store.tombstones(*key[1:3])
            return Node(key, "dir", READ_ONLY_DIR, mtime_ns=iso_to_ns(max(
                t["deleted_at"] for t in found))) if found else None
        tomb = self.store.tombstone(*key[1:4])
        if tomb is None:
            return None
        content = render(tombstone_sidecar(self.store.tombstone_document(tomb),
                                           self.store.tombstone_entries(tomb)))
        return Node(key, "file", 0o444, len(content), iso_to_ns(tomb["deleted_at"]),
                    content=content)

    def _count_subdirs(self, version: tuple, dir_path: str) -> int:
        return sum(1 for e in self.store.list_dir(*version, dir_path) if e["type"] == "dir")

    def _version_entries(self, version: tuple) -> list[dict]:
        entries = self._entries.get(version)
        if entries is None:
            entries = self._entries[version] = self.store.walk(*version)
            while len(self._entries) > 256:
                self._entries.popitem(last=False)
        return entries


class JournalView:
    """`.ckptfs/audit.jsonl` as one caller may see it when roles are enforced: the lines
    of the projects it can read (store-wide ones with a role on `*`), each byte for byte
    as in the journal. The journal only grows: its lines are indexed once, as it grows,
    by (start, end, project)."""

    def __init__(self, read_journal):
        self.read_journal = read_journal  # () -> the journal's bytes (Journal.raw)
        self._lines: list[tuple[int, int, str]] = []
        self._indexed = 0   # bytes of the journal indexed so far (whole lines only)

    def content(self, visible) -> bytes:
        """The lines whose project `visible(project)` accepts ("*" for store-wide ones)."""
        data = self.read_journal()
        if len(data) < self._indexed:  # replaced (a restored backup): index it again
            self._lines, self._indexed = [], 0
        self._index(data)
        answers: dict[str, bool] = {}
        parts = []
        for start, end, project in self._lines:
            shown = answers.get(project)
            if shown is None:
                shown = answers[project] = visible(project)
            if shown:
                parts.append(data[start:end])
        return b"".join(parts)

    def _index(self, data: bytes):
        pos = self._indexed
        while (end := data.find(b"\n", pos)) >= 0:  # a torn last line waits for its newline
            try:
                project = json.loads(data[pos:end]).get("project")
            except ValueError:
                project = None
            self._lines.append((pos, end + 1, project if isinstance(project, str) and project
                                else "*"))
            pos = end + 1
        self._indexed = pos


def file_type_bits(kind: str) -> int:
    return {"dir": stat.S_IFDIR, "file": stat.S_IFREG, "symlink": stat.S_IFLNK,
            "fifo": stat.S_IFIFO, "socket": stat.S_IFSOCK, "blockdev": stat.S_IFBLK,
            "chardev": stat.S_IFCHR}[kind]
