"""What a run's working directory `inbox/<p>/<r>/` shows of its sealed versions.

Each sealed version of a run sits in the working view where its job wrote it (the
`inbox.path` of its metadata: `checkpoint-5/`, `ckpts/model_5.pt`, the run directory
itself for `final`); a version sealed another way (`ckptfs import`, a copy into the
inbox before this layout existed) sits at its own name. Of several versions written at
the same place (`last.ckpt` sealed again and again), the newest is shown. What the job
removed from its working view (`spool/views/<p>/<r>.json`) is left out; the archive
keeps it all the same. Unsealed files in the spool are laid over this by the inbox.
"""
from collections import OrderedDict
from dataclasses import dataclass

from ckptfs.meta.layout import DIR, FILE, GROUP
from ckptfs.store import NotFoundError

from .tree import iso_to_ns

WRITE_BITS = 0o222
OWNER_WRITE = 0o200


@dataclass
class SealedUnit:
    path: str        # where in the run directory the version sits
    shape: str       # DIR, FILE or GROUP (meta/layout.py)
    version: str
    doc: dict        # its catalog document (kind, sealed_at, sealed_by, seq, inbox)

    @property
    def uid(self) -> int | None:
        uid = (self.doc.get("sealed_by") or {}).get("uid")
        return uid if isinstance(uid, int) else None

    @property
    def read_only(self) -> bool:
        """A sealed checkpoint directory is read-only; a checkpoint file or the files of
        a folder may be written again (a new version then)."""
        return self.shape == DIR


@dataclass
class SealedEntry:
    """A file, directory or symlink the working view shows from a sealed version (or a
    directory implied by the paths of versions below it: `unit` is then None)."""
    kind: str                     # "file", "dir" or "symlink"
    mode: int
    mtime_ns: int
    unit: SealedUnit | None = None
    inner: str = ""               # its path inside the version
    entry: dict | None = None     # the index entry of a file (chunks, size, sha256)
    target: str | None = None
    subdirs: int = 0

    @property
    def size(self) -> int:
        if self.kind == "file" and self.entry:
            return self.entry["size"]
        if self.kind == "symlink":
            return len(self.target.encode("utf-8", "surrogateescape"))
        return 0


class RunView:
    """The sealed part of one run's working view, as of one state of the catalog."""

    def __init__(self, store, project: str, run: str, hidden: dict[str, set[str]],
                 entries_cache: "OrderedDict | None" = None):
        self.store, self.project, self.run = store, project, run
        self.hidden = hidden
        self._entries = entries_cache if entries_cache is not None else OrderedDict()
        self.units = self._newest_units()

    def _newest_units(self) -> list[SealedUnit]:
        docs = self.store.catalog_documents(self.project, self.run, fields=[
            ("inbox",), ("kind",), ("sealed_by",), ("sealed_at",)])
        newest: dict[str, SealedUnit] = {}
        for doc in sorted(docs, key=lambda d: d["seq"]):
            where = doc.get("inbox") if isinstance(doc.get("inbox"), dict) else {}
            path = where.get("path", doc["version"])
            shape = where.get("shape", DIR)
            if not isinstance(path, str) or shape not in (DIR, FILE, GROUP):
                path, shape = doc["version"], DIR
            newest[path] = SealedUnit(path, shape, doc["version"], doc)
        visible = [u for u in newest.values() if "" not in self.hidden.get(u.version, ())]
        return sorted(visible, key=lambda u: -len(u.path))  # the deepest place first

    # -- a version's own entries ----------------------------------------------------------
    def version_entries(self, version: str) -> tuple[dict, dict]:
        """({inner path: entry}, {inner dir: [child names]}) of a version, cached."""
        cached = self._entries.get((self.project, self.run, version))
        if cached is None:
            by_path, children = {}, {}
            try:
                entries = self.store.walk(self.project, self.run, version)
            except NotFoundError:
                entries = []
            for e in entries:
                by_path[e["path"]] = e
                parent, _, name = e["path"].rpartition("/")
                children.setdefault(parent, []).append(name)
            record = self.store.version_record(self.project, self.run, version)
            by_path[""] = {"path": "", "type": "dir", **(record or {}).get("root", {})}
            cached = self._entries[(self.project, self.run, version)] = (by_path, children)
            while len(self._entries) > 512:
                self._entries.popitem(last=False)
        self._entries.move_to_end((self.project, self.run, version))
        return cached

    def is_hidden(self, unit: SealedUnit, inner: str) -> bool:
        hidden = self.hidden.get(unit.version)
        if not hidden:
            return False
        parts = inner.split("/") if inner else []
        return any("/".join(parts[:i]) in hidden for i in range(len(parts) + 1))

    def _entry_of(self, unit: SealedUnit, inner: str) -> SealedEntry | None:
        if self.is_hidden(unit, inner):
            return None
        by_path, children = self.version_entries(unit.version)
        e = by_path.get(inner)
        if e is None:
            return None
        kind = e["type"]
        mode = e.get("mode", 0o755)
        if unit.read_only:  # files read-only; directories removable by their owner
            mode = (mode & ~WRITE_BITS) | OWNER_WRITE if kind == "dir" else mode & ~WRITE_BITS
        subdirs = sum(1 for name in children.get(inner, ())
                      if by_path.get(f"{inner}/{name}" if inner else name, {}).get("type") == "dir")
        return SealedEntry(kind, mode if kind != "symlink" else 0o777, e.get("mtime_ns", 0), unit,
                           inner, e if kind == "file" else None, e.get("target"), subdirs)

    # -- the view -----------------------------------------------------------------------
    @staticmethod
    def _covers(unit: SealedUnit, rel: str) -> bool:
        """Is `rel` the unit's own directory or inside it?"""
        return unit.shape != FILE and (unit.path == "" or rel == unit.path
                                       or rel.startswith(unit.path + "/"))

    @staticmethod
    def _below(unit: SealedUnit, rel: str) -> str | None:
        """The unit's path relative to directory `rel`, if the unit lies inside it."""
        if rel == "":
            return unit.path or None
        return unit.path[len(rel) + 1:] if unit.path.startswith(rel + "/") else None

    @staticmethod
    def _inner(unit: SealedUnit, rel: str) -> str:
        return rel if unit.path == "" else rel[len(unit.path) + 1:]

    def lookup(self, rel: str) -> SealedEntry | None:
        """What the working view shows at `rel` (relative to the run directory) of sealed
        versions, or None."""
        implied = None
        for unit in self.units:
            if self._covers(unit, rel):
                found = self._entry_of(unit, self._inner(unit, rel))
                if found is not None:
                    return found
            elif unit.shape == FILE and rel == unit.path:
                found = self._entry_of(unit, unit.path.rsplit("/", 1)[-1])
                if found is not None:
                    return found
            elif implied is None and self._below(unit, rel) and self._shows_anything(unit):
                implied = SealedEntry("dir", 0o755, self._sealed_ns(unit))
        return implied

    def children(self, rel: str) -> dict[str, SealedEntry]:
        """{name: entry} the working view shows in directory `rel` of sealed versions."""
        out: dict[str, SealedEntry] = {}
        implied: dict[str, SealedEntry] = {}
        for unit in self.units:
            if self._covers(unit, rel):
                inner_dir = self._inner(unit, rel)
                if self.is_hidden(unit, inner_dir):
                    continue
                for name in self.version_entries(unit.version)[1].get(inner_dir, ()):
                    if name not in out:
                        found = self._entry_of(unit, f"{inner_dir}/{name}" if inner_dir else name)
                        if found is not None:
                            out[name] = found
                continue
            below = self._below(unit, rel)
            if below is None or not self._shows_anything(unit):
                continue
            name = below.split("/", 1)[0]
            if "/" in below:
                implied.setdefault(name, SealedEntry("dir", 0o755, self._sealed_ns(unit)))
            elif name not in out:  # the unit sits right here: its file, or its directory
                found = self._entry_of(unit, name if unit.shape == FILE else "")
                if found is not None:
                    out[name] = found
        return {**implied, **out}

    def _shows_anything(self, unit: SealedUnit) -> bool:
        """Does any part of the unit remain in the working view?"""
        hidden = self.hidden.get(unit.version)
        if not hidden:
            return True
        if "" in hidden:
            return False
        by_path = self.version_entries(unit.version)[0]
        return any(path and not self.is_hidden(unit, path) and e["type"] != "dir"
                   for path, e in by_path.items())

    @staticmethod
    def _sealed_ns(unit: SealedUnit) -> int:
        try:
            return iso_to_ns(unit.doc["sealed_at"])
        except (KeyError, ValueError, TypeError):
            return 0
