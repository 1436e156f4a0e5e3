"""What the daemon keeps about the runs of the inbox, over the spool on disk.

The units of each run directory (cached until its structure changes), its working view
(the sealed versions it shows, less what the job removed from it), who wrote each part
of it (provenance, kept in the spool), what happens to its spooled files (activity.py)
and what processes read (reads.py). No file-system calls and no trio here: the inbox
(inbox.py) answers the FUSE calls over it, and the sealer (sealer.py) works from it,
in the daemon or in `ckptfs seal` with no daemon running (offline.py).
"""
import os
from collections import OrderedDict

from ckptfs.meta.layout import Unit
from ckptfs.spool import records
from ckptfs.spool.directory import Spool

from .activity import SpoolActivity
from .reads import ReadTracker
from .workview import RunView


class InboxState:
    def __init__(self, store):
        self.store = store
        self.spool = Spool(store.path)
        self.root = self.spool.inbox
        self.reads = ReadTracker()
        self.activity = SpoolActivity()
        self.writers: dict[tuple, dict] = {}         # (p, r, top) -> provenance record
        self._listings: dict[tuple, tuple[int, list[Unit]]] = {}
        self._structure: dict[tuple, int] = {}      # (p, r) -> bumped by every structure change
        self._hidden: dict[tuple, dict[str, set[str]]] = {}
        self._views: dict[tuple, tuple[int, RunView]] = {}
        self._view_entries = OrderedDict()

    def run_path(self, run: tuple, rel: str) -> str:
        return os.path.join(self.root, run[0], run[1], rel) if rel else \
            os.path.join(self.root, run[0], run[1])

    # -- units --------------------------------------------------------------------------------
    def bump_structure(self, run: tuple):
        self._structure[run] = self._structure.get(run, 0) + 1

    def units_of(self, p: str, r: str) -> list[Unit]:
        generation = self._structure.get((p, r), 0)
        cached = self._listings.get((p, r))
        if cached is None or cached[0] != generation:
            cached = self._listings[(p, r)] = (generation, self.spool.units(p, r))
        return cached[1]

    # -- the working view of sealed versions -------------------------------------------------
    def hidden(self, run: tuple) -> dict[str, set[str]]:
        if run not in self._hidden:
            self._hidden[run] = self.spool.hidden(*run)
        return self._hidden[run]

    def hide(self, run: tuple, version: str, inner: str):
        hidden = self.hidden(run)
        paths = hidden.setdefault(version, set())
        if "" in paths:
            return
        if inner == "":
            paths.clear()
        paths.add(inner)
        self.spool.save_hidden(*run, hidden)
        self._views.pop(run, None)

    def unhide(self, run: tuple, version: str):
        """Forget what was hidden of `version` (a seal that hid its version ahead of its
        commit, and then failed: the name is free again)."""
        hidden = self.hidden(run)
        if hidden.pop(version, None) is not None:
            self.spool.save_hidden(*run, hidden)
            self._views.pop(run, None)

    def view(self, run: tuple) -> RunView:
        """The sealed part of the run's working view, as of the catalog now."""
        seq = self.store.applied_seq()
        cached = self._views.get(run)
        if cached is None or cached[0] != seq:
            # A version's entries never change (names are never reused), so they are
            # cached across catalog changes.
            cached = self._views[run] = (seq, RunView(self.store, *run, self.hidden(run),
                                                      self._view_entries))
        return cached[1]

    def forget_view(self, run: tuple):
        self._views.pop(run, None)

    def restore_file(self, entry: dict, target: str):
        with open(target, "wb") as f:
            f.writelines(self.store.iter_file_checked(entry))

    # -- provenance: who writes each part of a run -------------------------------------------
    def provenance_record(self, run: tuple, top: str) -> dict:
        record = self.writers.get((*run, top))
        if record is None:
            record = self.writers[(*run, top)] = records.load_provenance(self.spool, *run, top)
        return record

    def save_provenance(self, run: tuple, top: str):
        records.save_provenance(self.spool, *run, top, self.provenance_record(run, top))

    def forget_provenance(self, run: tuple, top: str):
        """When nothing of the run under `top` is left to seal."""
        self.writers.pop((*run, top), None)
        records.drop_provenance(self.spool, *run, top)
