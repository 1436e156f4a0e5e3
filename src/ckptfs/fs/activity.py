"""What the daemon remembers of the files being written into the inbox (in memory).

Per spool file (by inode): the handles open on it, a write generation (a counter bumped
by every write, truncate and create through the mount: a prepared result is only reused
while it is the same), where it is now (renames follow it), whether a write to it failed.
Per run: when each path last changed and who created it (for the quiet period and for
lineage). The inbox updates it on every file-system call; the sealer reads it, and the
streams (streaming.py) hear of every change through `on_bump`.
"""
import os
import time

from ckptfs.meta.layout import Unit

from .reads import process_chain, process_start


class SpoolActivity:
    def __init__(self):
        self.changed: dict[tuple, dict[str, float]] = {}   # run -> path -> monotonic time
        self.created: dict[tuple, dict[str, tuple]] = {}   # run -> path -> (time, chain)
        self.generation = 0
        self.generations: dict[int, int] = {}     # spool inode -> generation of its content
        self.paths: dict[int, tuple] = {}         # spool inode -> (p, r, path in the run)
        self.open_handles: dict[int, int] = {}    # spool inode -> handles open on it
        self.open_writers: dict[int, int] = {}    # spool inode -> handles open for writing
        self.staged_inodes: dict[int, int] = {}   # spool inode -> seals reading it now
        self.unprepared: set[int] = set()         # changed since last queued to prepare
        self.incomplete: set[int] = set()         # a write to it failed (a full disk)
        self.retried: dict[int, int] = {}         # inode -> generation prepared twice
        self.on_bump = None   # told each inode bumped (streaming.py: a change not a write's)

    # -- changes --------------------------------------------------------------------------
    def touched(self, run: tuple, rel: str):
        self.changed.setdefault(run, {})[rel] = time.monotonic()

    def created_by(self, run: tuple, rel: str, ctx):
        """`rel` was created by the caller of `ctx`: remember who (its process and
        ancestors, for lineage) and when."""
        chain = process_chain(ctx.pid) if ctx is not None else []
        self.created.setdefault(run, {})[rel] = (time.monotonic(), chain)

    def bump(self, ino: int):
        """The content of spool inode `ino` changed: any prepared result of it is stale."""
        self.generation += 1
        self.generations[ino] = self.generation
        self.unprepared.add(ino)
        if self.on_bump is not None:
            self.on_bump(ino)

    # -- handles ----------------------------------------------------------------------------
    def opened(self, ino: int, where: tuple | None, writable: bool):
        self.open_handles[ino] = self.open_handles.get(ino, 0) + 1
        if writable:
            self.open_writers[ino] = self.open_writers.get(ino, 0) + 1
        if where is not None:
            self.paths[ino] = where

    def released(self, ino: int, writable: bool) -> bool:
        """A handle closed; True if nothing has the file open any more."""
        for table in (self.open_handles, self.open_writers) if writable else (self.open_handles,):
            left = table.get(ino, 1) - 1
            if left > 0:
                table[ino] = left
            else:
                table.pop(ino, None)
        return ino not in self.open_handles

    def stage(self, inodes):
        for ino in inodes:
            self.staged_inodes[ino] = self.staged_inodes.get(ino, 0) + 1

    def unstage(self, inodes):
        for ino in inodes:
            left = self.staged_inodes.get(ino, 1) - 1
            if left > 0:
                self.staged_inodes[ino] = left
            else:
                self.staged_inodes.pop(ino, None)

    # -- of a unit ----------------------------------------------------------------------------
    def last_change(self, run: tuple, unit: Unit) -> float:
        changes = self.changed.get(run, {})
        return max((t for path, t in changes.items() if unit.covers(path)), default=0.0)

    def unit_started(self, run: tuple, unit: Unit) -> tuple[float, list] | None:
        """(when, writer's process chain) of the first write of the unit's members."""
        created = self.created.get(run, {})
        found = [created[m] for m in created if unit.covers(m)]
        return min(found, key=lambda c: c[0]) if found else None

    def writers_alive(self, run: tuple, unit: Unit) -> bool:
        """Is a process that created a file of the unit still running (unknown: yes)?"""
        created = self.created.get(run, {})
        members = set(unit.members)  # (the folder itself may be the job's output dir's)
        writers = {chain[0] for path, (_t, chain) in created.items()
                   if chain and path in members}
        return not writers or any(process_start(pid) == start for pid, start in writers)

    def _inodes(self, root: str, members: list[str]):
        for path in members:
            try:
                yield os.lstat(os.path.join(root, path)).st_ino
            except FileNotFoundError:
                continue

    def open_for_writing(self, path: str) -> bool:
        try:
            return os.lstat(path).st_ino in self.open_writers
        except FileNotFoundError:
            return False

    def open_members(self, root: str, members: list[str]) -> bool:
        return any(ino in self.open_handles for ino in self._inodes(root, members))

    def incomplete_members(self, root: str, members: list[str]) -> bool:
        """Does a file of the unit miss bytes because a write to it failed?"""
        return bool(self.incomplete) and any(
            ino in self.incomplete for ino in self._inodes(root, members))

    def forget_sealed(self, run: tuple, unit: Unit, still_there):
        """After a seal: drop what is known of its paths that left the spool."""
        for path in [m for m in self.created.get(run, {}) if unit.covers(m)]:
            if not still_there(path):
                self.created[run].pop(path, None)
                self.changed.get(run, {}).pop(path, None)

    def token_of(self, entry):
        """The prepared-result token of a spool file about to be sealed."""
        generation = self.generations.get(entry.st.st_ino)
        return (entry.st.st_ino, generation) if generation is not None else None
