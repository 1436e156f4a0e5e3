"""`Spool`: the spooled files of a store, STORE/spool/ (the map is in
ckptfs/spool/__init__.py). What the inbox holds that is not sealed yet and the units it
makes, the whole units a job removed before their seal, the staging of a unit being
sealed and the release of what it sealed, the working views' hidden entries, and the
error files shown in the inbox. No FUSE here: the daemon and `ckptfs seal` / `status`
(with no daemon running) both use it.
"""
import itertools
import os
import shutil
import stat
import time

from ckptfs.meta.layout import DIR, FILE, GROUP, Unit, classify
from ckptfs.store.private import make_private_dirs, private_opener

from .layout import (
    ERROR_SUFFIX,
    ERRORS,
    INBOX,
    REMOVED,
    STAGING,
    VIEWS,
    read_json,
    spool_path,
    unlink_if_present,
    write_json_atomically,
)

# One sequence per process, from the time it started (ms): ids grow across restarts.
_ids = itertools.count(int(time.time() * 1000))


class Spool:
    """STORE/spool of the store at `store_path` (its inbox/ made if missing)."""

    def __init__(self, store_path: str):
        self.path = spool_path(store_path)
        self.inbox = os.path.join(self.path, INBOX)
        make_private_dirs(self.inbox)

    def area(self, name: str, *parts: str) -> str:
        return os.path.join(self.path, name, *parts)

    def new_id(self) -> str:
        """A name no other in this process gets (staging, batches, records)."""
        return f"{next(_ids):x}"

    # -- what is spooled ----------------------------------------------------------------
    def runs(self) -> list[tuple[str, str]]:
        """(project, run) of every run directory in the spool's inbox or removed area."""
        found = set()
        for area in (INBOX, REMOVED):
            base = self.area(area)
            for p in _subdirs(base):
                found.update((p, r) for r in _subdirs(os.path.join(base, p)))
        return sorted(found)

    def run_dir(self, p: str, r: str, area: str = INBOX) -> str:
        return self.area(area, p, r)

    def listing(self, p: str, r: str, area: str = INBOX, below: str = "") -> dict[str, str]:
        """What a run's directory holds in `area` (see listing_of), `below` one of its
        directories; in removed/, the batches of whole units are not members."""
        return listing_of(self.run_dir(p, r, area), below, skip_batches=area == REMOVED)

    def units(self, p: str, r: str) -> list[Unit]:
        return classify(self.listing(p, r))

    # -- whole units removed before their seal -----------------------------------------
    def detach_removed(self, p: str, r: str, unit: Unit, area: str = REMOVED,
                       hide: bool = True) -> str:
        """Move what a job removed of `unit` (already moved to removed/, or still in
        `area`) into a batch of its own: `removed/<p>/<r>/#<n>/<unit path>`, to be
        sealed, then hidden from the working view (`hide`; not for a checkpoint file
        another process is overwriting: its new content shows there). Returns the batch
        id."""
        batch = self.new_id()
        source = os.path.join(self.run_dir(p, r, area), unit.path)
        target = os.path.join(self.run_dir(p, r, REMOVED), f"#{batch}", unit.path)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.rename(source, target)
        write_json_atomically(os.path.join(self.run_dir(p, r, REMOVED), f"#{batch}.json"),
                              {"path": unit.path, "shape": unit.shape, "kind": unit.kind,
                               "hide": hide})
        return batch

    def batch_hides(self, p: str, r: str, batch: str) -> bool:
        doc = read_json(os.path.join(self.run_dir(p, r, REMOVED), f"#{batch}.json"), {}) or {}
        return doc.get("hide", True)

    def removed_batches(self, p: str, r: str) -> list[tuple[str, Unit]]:
        """(batch id, unit) of the whole units a job removed before their seal."""
        base = self.run_dir(p, r, REMOVED)
        out = []
        for name in sorted(os.listdir(base)) if os.path.isdir(base) else []:
            if name.startswith("#") and name.endswith(".json"):
                doc = read_json(os.path.join(base, name))
                batch = name[1:-5]
                if not doc or not os.path.lexists(os.path.join(base, f"#{batch}", doc["path"])):
                    continue
                out.append((batch, Unit(doc["path"], doc["shape"], doc["kind"], ())))
        return out

    def batch_root(self, p: str, r: str, batch: str) -> str:
        return os.path.join(self.run_dir(p, r, REMOVED), f"#{batch}")

    def drop_batch(self, p: str, r: str, batch: str) -> None:
        shutil.rmtree(self.batch_root(p, r, batch), ignore_errors=True)
        unlink_if_present(os.path.join(self.run_dir(p, r, REMOVED), f"#{batch}.json"))

    # -- the working view's removals of sealed content ---------------------------------
    def hidden(self, p: str, r: str) -> dict[str, set[str]]:
        """{version: paths in it the job removed from its working view ("" = all of it)}."""
        doc = read_json(self.area(VIEWS, p, r + ".json"), {}) or {}
        return {v: set(paths) for v, paths in (doc.get("hidden") or {}).items()}

    def save_hidden(self, p: str, r: str, hidden: dict[str, set[str]]) -> None:
        write_json_atomically(self.area(VIEWS, p, r + ".json"),
                              {"hidden": {v: sorted(paths) for v, paths in sorted(hidden.items())
                                          if paths}})

    # -- error files --------------------------------------------------------------------
    def error_path(self, inbox_rel: str) -> str:
        """Where the error file shown as `inbox/<inbox_rel>.error` is kept."""
        return self.area(ERRORS, inbox_rel + ERROR_SUFFIX)

    def write_error(self, inbox_rel: str, text: str) -> None:
        path = self.error_path(inbox_rel)
        make_private_dirs(os.path.dirname(path))
        with open(path, "w", opener=private_opener) as f:
            f.write(text if text.endswith("\n") else text + "\n")

    def clear_error(self, inbox_rel: str) -> bool:
        return unlink_if_present(self.error_path(inbox_rel))

    def error_names(self, inbox_rel_dir: str) -> list[str]:
        """Names of the error files shown in the inbox directory `inbox_rel_dir`."""
        base = self.area(ERRORS, inbox_rel_dir) if inbox_rel_dir else self.area(ERRORS)
        try:
            return sorted(e.name for e in os.scandir(base)
                          if e.is_file() and e.name.endswith(ERROR_SUFFIX))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def error_line(self, inbox_rel: str) -> str | None:
        """The first line of the error file shown as `inbox/<inbox_rel>.error`."""
        return _first_line(self.error_path(inbox_rel))

    def refusals(self) -> list[str]:
        """The paths (relative to inbox/) refused at the inbox and project levels, whose
        error files say why."""
        found = [name for name in self.error_names("")]
        base = self.area(ERRORS)
        for entry in _scandir(base):
            if entry.is_dir():
                found += [f"{entry.name}/{n}" for n in self.error_names(entry.name)]
        return [name[:-len(ERROR_SUFFIX)] for name in found]

    def newest_error(self, run_rel: str, since: float) -> str | None:
        """The first line of an error file below run `run_rel` ("p/r") written since
        `since` (a time.time()), if there is one."""
        for dirpath, _dirs, files in os.walk(self.area(ERRORS, run_rel)):
            for name in files:
                full = os.path.join(dirpath, name)
                if os.stat(full).st_mtime >= since:
                    return _first_line(full)
        return None

    # -- sealing a unit -------------------------------------------------------------------
    def stage(self, source_root: str, unit: Unit, members: list[str]) -> tuple[str, dict]:
        """A staging directory for `unit` holding hard links to its files under
        `source_root` (the run directory in the inbox, or a removed batch): the version
        is read from there, so the job may go on changing the inbox meanwhile (a file it
        rewrites gets a new inode first, see Inbox). Returns (staging dir, {member path:
        inode staged}). Directory modes and mtimes are copied: a version's directories
        keep them (Trainer sorts its checkpoints by their mtime)."""
        staging = self.area(STAGING, self.new_id())
        unit_root = os.path.join(source_root, unit.path) if unit.shape != FILE else \
            os.path.dirname(os.path.join(source_root, unit.path))
        make_private_dirs(os.path.dirname(staging))
        os.mkdir(staging)
        staged: dict[str, dict] = {"files": {}, "links": {}}
        dirs = []
        for path in sorted(members, key=lambda m: (m.count("/"), m)):
            inner = inner_path(unit, path)
            if inner == "":
                continue
            src, dst = os.path.join(source_root, path), os.path.join(staging, inner)
            st = os.lstat(src)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            if stat.S_ISDIR(st.st_mode):
                os.makedirs(dst, exist_ok=True)
                dirs.append((dst, st))
            elif stat.S_ISLNK(st.st_mode):
                target = os.readlink(src)
                os.symlink(target, dst)
                staged["links"][path] = target
            else:
                os.link(src, dst, follow_symlinks=False)
                staged["files"][path] = st.st_ino
        for dst, st in [(staging, _lstat(unit_root))] + dirs:
            if st is not None:
                os.chmod(dst, stat.S_IMODE(st.st_mode))
        for dst, st in reversed([(staging, _lstat(unit_root))] + dirs):
            if st is not None:
                os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
        return staging, staged

    def unstage(self, staging: str) -> None:
        shutil.rmtree(staging, ignore_errors=True)

    def clear_staging(self) -> None:
        """Staging left by a daemon that died: only hard links, the spool keeps the rest."""
        shutil.rmtree(self.area(STAGING), ignore_errors=True)

    def release_sealed(self, source_root: str, unit: Unit, staged: dict) -> None:
        """After the seal: remove from the spool the files and symlinks that were sealed
        and were not changed since (a file rewritten meanwhile has a new inode: it stays,
        to be sealed next), then the emptied directories of a checkpoint directory."""
        for path, ino in staged["files"].items():
            full = os.path.join(source_root, path)
            st = _lstat(full)
            if st is not None and st.st_ino == int(ino) and stat.S_ISREG(st.st_mode):
                os.unlink(full)
        for path, target in staged["links"].items():
            full = os.path.join(source_root, path)
            if os.path.islink(full) and os.readlink(full) == target:
                os.unlink(full)
        if unit.shape == DIR or (unit.shape == GROUP and unit.path):
            _remove_empty_dirs(os.path.join(source_root, unit.path))

    def drop_removed_members(self, p: str, r: str, unit: Unit) -> None:
        """Files the job removed from a unit that has now been sealed without them."""
        base = self.run_dir(p, r, REMOVED)
        if unit.shape == GROUP and unit.path == "":
            for entry in _scandir(base):
                if not entry.name.startswith("#") and not entry.is_dir(follow_symlinks=False):
                    os.unlink(entry.path)
            return
        target = os.path.join(base, unit.path)
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target, ignore_errors=True)
        elif os.path.lexists(target):
            os.unlink(target)


def listing_of(root: str, below: str = "", skip_batches: bool = False) -> dict[str, str]:
    """{path: "file" | "dir" | "symlink"} of what directory `root` holds (paths relative
    to it, '/'-separated), from its sub-directory `below` down; `skip_batches` leaves
    out its top-level `#…` entries."""
    found: dict[str, str] = {}
    pending = [below]
    while pending:
        rel = pending.pop()
        try:
            scan = list(os.scandir(os.path.join(root, rel) if rel else root))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in scan:
            path = f"{rel}/{entry.name}" if rel else entry.name
            if skip_batches and not rel and entry.name.startswith("#"):
                continue
            if entry.is_symlink():
                found[path] = "symlink"
            elif entry.is_dir(follow_symlinks=False):
                found[path] = "dir"
                pending.append(path)
            elif entry.is_file(follow_symlinks=False):
                found[path] = "file"
            # FIFOs and sockets a job made (inbox.mknod) are no part of any unit
    return found


def inner_path(unit: Unit, path: str) -> str:
    """`path` (in the run directory) relative to the unit's own root."""
    if unit.shape == FILE:
        return path.rsplit("/", 1)[-1]
    if unit.path == "":
        return path
    return path[len(unit.path) + 1:] if path != unit.path else ""


def _subdirs(base: str) -> list[str]:
    return [e.name for e in _scandir(base) if e.is_dir(follow_symlinks=False)]


def _scandir(base: str):
    try:
        return list(os.scandir(base))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _first_line(path: str) -> str | None:
    try:
        with open(path, errors="replace") as f:
            return f.readline().strip()
    except OSError:
        return None


def _lstat(path: str):
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _remove_empty_dirs(root: str) -> None:
    """Remove `root` and the directories below it that hold nothing (bottom up)."""
    for dirpath, _dirnames, _files in os.walk(root, topdown=False):
        try:
            os.rmdir(dirpath)
        except OSError:
            pass

