"""The mount's file-system calls made in-process, the way the kernel makes them, with no
kernel: paths are walked with `lookup` from the root inode, files are opened, read,
written and released through their handles, directories listed with opendir/readdir.

`Caller` has the shape of pyfuse3.RequestContext (uid, gid, pid, umask), whose fields
only the kernel's request can set; `Kernel` stands in for the kernel's side of the two
calls the daemon makes outside a request; a `FUSEError` comes out as the errno a process
would see (`errno_of`). Nothing else is stood in for: the store, the spool, the index
and the daemon's code are the real ones."""
import hashlib
import json
import os
from dataclasses import dataclass

import pyfuse3
import trio

from ckptfs.fs.daemon import DaemonParts

SEAL_TIMEOUT = 60.0  # only catches a hang: every wait is on an event


@dataclass
class Caller:
    """Who a request comes from (pyfuse3.RequestContext's fields)."""
    uid: int
    gid: int
    pid: int
    umask: int = 0o022


def this_process() -> Caller:
    return Caller(os.getuid(), os.getgid(), os.getpid())


class Kernel:
    """Stands in for the two calls the daemon makes to the kernel outside a request:
    readdir_reply (the reply buffer of a readdir: the token is a list the entries are
    appended to, and it never fills) and invalidate_entry_async (a cache hint: noted)."""

    def __init__(self):
        self.invalidated: list[tuple[int, str]] = []

    def invalidate_entry_async(self, parent: int, name: bytes, ignore_enoent: bool = False):
        self.invalidated.append((parent, os.fsdecode(name)))

    @staticmethod
    def readdir_reply(token: list, name: bytes, attributes, next_id: int) -> bool:
        token.append((os.fsdecode(name), attributes))
        return True


async def errno_of(call) -> int | None:
    """The errno a call fails with (None: it succeeded)."""
    try:
        await call
    except pyfuse3.FUSEError as e:
        return e.errno
    return None


class Driver:
    """Path-level calls over a CkptfsOperations, as a process sees them."""

    def __init__(self, ops, inbox, caller: Caller | None = None):
        self.ops, self.inbox = ops, inbox
        self.ctx = caller or this_process()

    async def ino(self, path: str) -> int:
        """The inode number of `path` (relative to the mount point), walked with lookup."""
        ino = pyfuse3.ROOT_INODE
        for name in filter(None, path.split("/")):
            ino = (await self.ops.lookup(ino, os.fsencode(name), self.ctx)).st_ino
        return ino

    async def parent_and_name(self, path: str) -> tuple[int, bytes]:
        parent, _, name = path.rstrip("/").rpartition("/")
        return await self.ino(parent), os.fsencode(name)

    async def stat(self, path: str) -> pyfuse3.EntryAttributes:
        return await self.ops.getattr(await self.ino(path), self.ctx)

    async def listdir(self, path: str) -> list[str]:
        fh = await self.ops.opendir(await self.ino(path), self.ctx)
        try:
            entries: list = []
            await self.ops.readdir(fh, 0, entries)
            return [name for name, _ in entries]
        finally:
            await self.ops.releasedir(fh)

    async def read(self, path: str, block: int = 128 * 1024) -> bytes:
        info = await self.ops.open(await self.ino(path), os.O_RDONLY, self.ctx)
        try:
            parts, offset = [], 0
            while chunk := await self.ops.read(info.fh, offset, block):
                parts.append(chunk)
                offset += len(chunk)
            return b"".join(parts)
        finally:
            await self.ops.release(info.fh)

    async def makedirs(self, path: str, mode: int = 0o755):
        done = ""
        for name in filter(None, path.split("/")):
            parent = await self.ino(done)
            done = f"{done}/{name}" if done else name
            if await errno_of(self.ops.lookup(parent, os.fsencode(name), self.ctx)) is not None:
                await self.ops.mkdir(parent, os.fsencode(name), mode, self.ctx)

    async def write(self, path: str, data: bytes, mode: int = 0o644, block: int = 64 * 1024):
        """create, write in blocks, release: what `open(path, "wb").write(data)` asks."""
        parent, name = await self.parent_and_name(path)
        info, _ = await self.ops.create(parent, name, mode, os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                                        self.ctx)
        try:
            for offset in range(0, len(data), block):
                assert await self.ops.write(info.fh, offset, data[offset:offset + block]) == \
                    len(data[offset:offset + block])
        finally:
            await self.ops.release(info.fh)

    async def symlink(self, path: str, target: str):
        parent, name = await self.parent_and_name(path)
        await self.ops.symlink(parent, name, os.fsencode(target), self.ctx)

    async def copy_in(self, src: str, dest: str):
        """Copy the tree `src` to `dest` as `cp -r` does: directories, files, symlinks."""
        await self.makedirs(dest)
        for dirpath, dirnames, filenames in os.walk(src):
            rel = os.path.relpath(dirpath, src)
            here = dest if rel == "." else f"{dest}/{rel}"
            for name in sorted(dirnames):
                await self.makedirs(f"{here}/{name}")
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                if os.path.islink(path):
                    await self.symlink(f"{here}/{name}", os.readlink(path))
                    continue
                await self.write(f"{here}/{name}", local_bytes(path))

    async def rm_r(self, path: str):
        """`rm -r`: what is below first, then the directory."""
        if (await self.stat(path)).st_mode & 0o170000 != 0o040000:
            return await self.unlink(path)
        for name in await self.listdir(path):
            await self.rm_r(f"{path}/{name}")
        await self.ops.rmdir(*await self.parent_and_name(path), self.ctx)

    async def rename(self, old: str, new: str, flags: int = 0):
        old_parent, old_name = await self.parent_and_name(old)
        new_parent, new_name = await self.parent_and_name(new)
        await self.ops.rename(old_parent, old_name, new_parent, new_name, flags, self.ctx)

    async def unlink(self, path: str):
        await self.ops.unlink(*await self.parent_and_name(path), self.ctx)

    async def setxattr(self, path: str, name: bytes, value: bytes = b""):
        await self.ops.setxattr(await self.ino(path), name, value, self.ctx)

    async def getxattr(self, path: str, name: bytes) -> bytes:
        return await self.ops.getxattr(await self.ino(path), name, self.ctx)

    async def inbox_state(self, ref: str) -> dict:
        """What the mount says of inbox/<ref> (user.ckptfs.state)."""
        return json.loads(await self.getxattr(f"inbox/{ref}", b"user.ckptfs.state"))

    async def wait_state(self, ref: str, done, what: str) -> dict:
        """Poll the state of inbox/<ref> until `done(state)`; that state."""
        async def state_if_done():
            state = await self.inbox_state(ref)
            return state if done(state) else None
        return await poll(state_if_done, what)

    async def wait_sealed(self, ref: str) -> dict:
        """Poll until the sealer reports inbox/<ref> sealed; its state (a seal that
        failed fails the test at once, with its reason)."""
        def sealed(state):
            assert not state.get("error"), f"the seal of {ref} failed: {state['error']}"
            return state["state"] == "sealed"
        return await self.wait_state(ref, sealed, f"{ref} to be sealed")

    async def wait_listed(self, directory: str, name: str):
        """Poll until `name` is listed in `directory`."""
        async def listed():
            return name in await self.listdir(directory)
        await poll(listed, f"{directory}/{name}")

    async def wait_versions_sealed(self, count: int):
        """Poll until this daemon has sealed `count` versions, its bookkeeping of each
        done (which follows the moment a state says "sealed")."""
        async def done():
            return self.inbox.counters["versions_sealed"] >= count
        await poll(done, f"{count} versions sealed")

    async def wait_sealer_rounds(self, rounds: int):
        """Poll until the sealer has been round `rounds` more times (each round looks at
        every unit): proof that it saw what was there before this call."""
        until = self.inbox.counters["sealer_rounds"] + rounds

        async def done():
            self.inbox.sealer.wake()
            return self.inbox.counters["sealer_rounds"] >= until
        await poll(done, f"{rounds} rounds of the sealer")


async def poll(check, what: str):
    """Await `check()` until it returns something true, and return that. The deadline
    only catches a hang."""
    with trio.move_on_after(SEAL_TIMEOUT):
        while not (result := await check()):
            await trio.sleep(0.01)
        return result
    raise AssertionError(f"gave up after {SEAL_TIMEOUT:.0f} s waiting for {what}")


# -- the daemon's parts -----------------------------------------------------------------
QUIET = 3600.0  # seconds: nothing is sealed for being quiet unless a test asks for it


class Daemon:
    """What serve() holds while it serves (ckptfs.fs.daemon.DaemonParts, built the same
    way): open with `start`, closed with `stop`."""

    def __init__(self, store_path: str, mountpoint: str):
        self.store_path, self.mountpoint = store_path, mountpoint
        self.parts = None
        self.store = self.inbox = self.ops = None

    def start(self, seal_after: float = QUIET) -> "Daemon":
        self.parts = DaemonParts(self.store_path, self.mountpoint, seal_after)
        self.store, self.inbox, self.ops = self.parts.store, self.parts.inbox, self.parts.ops
        return self

    def stop(self, clean: bool = True):
        """A clean stop, as serve() ends; `clean=False`: what a killed daemon leaves (the
        inbox not closed: its spool, staged packs and running marker stay as they are;
        the kernel frees the lock)."""
        if self.parts is None:
            return
        self.parts.close(clean)
        self.parts = None
        self.store = self.inbox = self.ops = None


def serving(daemon: Daemon, nursery, seal_after: float) -> Driver:
    """A Driver over the started daemon, whose background work (the sealer, the
    preparer) runs until the test ends."""
    daemon.start(seal_after)
    nursery.start_soon(daemon.inbox.run)
    return Driver(daemon.ops, daemon.inbox)


def local_bytes(path: str) -> bytes:
    """The bytes of a file outside the mount (a source, the spool)."""
    with open(path, "rb") as f:
        return f.read()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
