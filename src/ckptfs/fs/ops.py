"""pyfuse3 operations: the file-system calls of the mount mapped onto the tree and inbox.

Thin on purpose: names become keys (tree.py), keys become attributes, reads become
`Store.read_view` calls on a worker thread. No storage logic lives here.
"""
import errno
import functools
import json
import logging
import os
import re
from dataclasses import dataclass

import pyfuse3
import trio

from ckptfs.spool import daemon as spool_daemon
from ckptfs.store import AccessDeniedError, IntegrityError, StoreError
from ckptfs.store.backend import BackendUnavailableError
from ckptfs.store.access import ALL, request_actor
from ckptfs.store.catalog import DERIVED_ALIASES

from .sealed_reads import SealedReads
from .tree import ROOT, JournalView, Node, ProjectTree, file_type_bits

log = logging.getLogger("ckptfs.fs")

IMMUTABLE_TIMEOUT = 3600.0  # sealed content never changes: let the kernel cache it
MUTABLE_TIMEOUT = 1.0
UNSUPPORTED_XATTR_NAMESPACES = (b"security.", b"system.", b"trusted.")  # no labels, no ACLs
XATTR_SHA256 = b"user.ckptfs.sha256"
XATTR_STATE = b"user.ckptfs.state"
BLOCK_SIZE = 1024 * 1024
NAME_MAX = 255
STATS_FILE_INTERVAL = 5.0  # seconds between rewrites of spool/daemon-stats.json
OPEN_UNLINKED = "open-unlinked"  # key kind of an inbox file open after its name went


@dataclass
class SourceFile:
    """An open file shown through the mount as it is on disk (the journal)."""
    fd: int


def name_of(name: bytes) -> str:
    """A name from the kernel, which leaves NAME_MAX to the file system. (The kernel
    looks a name up before it creates it: this is where a long one is refused.)"""
    if len(name) > NAME_MAX:
        log.warning("refused %r…: the name is %d bytes long; the limit is %d bytes",
                    os.fsdecode(name[:40]), len(name), NAME_MAX)
        raise pyfuse3.FUSEError(errno.ENAMETOOLONG)
    return os.fsdecode(name)


def actor_of(ctx) -> dict:
    """Who a request comes from, for the journal and the access checks: the caller (with
    all its groups), not the daemon."""
    return request_actor(ctx.uid, ctx.gid, ctx.pid)


PROJECT_KINDS = ("project", "run", "version", "entry", "sidecar", "runjson", "alias")
TOMBSTONE_KINDS = ("deleted-project", "deleted-run", "tombstone")  # under .ckptfs/deleted/


def project_of(key: tuple) -> str | None:
    """The project a node belongs to (None: store-wide, like projects/ and .ckptfs/)."""
    if key[0] == "inbox":
        return key[1].split("/", 1)[0] or None
    return key[1] if key[0] in PROJECT_KINDS + TOMBSTONE_KINDS else None


def is_gate(key: tuple) -> bool:
    """projects/<p>, inbox/<p> and .ckptfs/deleted/<p>: every path into a project's
    content passes through one."""
    return key[0] in ("project", "deleted-project") or \
        (key[0] == "inbox" and key[1] != "" and "/" not in key[1])


def path_of(key: tuple) -> str:
    """A node's path in the mount, for logs and the journal."""
    kind = key[0]
    if kind == "inbox":
        return f"inbox/{key[1]}".rstrip("/")
    if kind == "entry":
        return "projects/" + "/".join(key[1:4]) + "/" + key[4]
    if kind == "sidecar":
        return "projects/" + "/".join(key[1:4]) + ".json"
    if kind == "runjson":
        return "projects/" + "/".join(key[1:3]) + "/run.json"
    if kind in PROJECT_KINDS:
        return "projects/" + "/".join(key[1:])
    if kind in TOMBSTONE_KINDS:
        return ".ckptfs/deleted/" + "/".join(key[1:]) + (".json" if kind == "tombstone" else "")
    return {"projects": "projects", "control": ".ckptfs", "stats": ".ckptfs/stats.json",
            "audit": ".ckptfs/audit.jsonl"}.get(kind, "")


def guarded(handler):
    """Turn every error into an errno: nothing a caller does may end the daemon."""
    @functools.wraps(handler)
    async def wrapper(self, *args, **kwargs):
        try:
            return await handler(self, *args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except IntegrityError as e:
            log.error("integrity error in %s: %s", handler.__name__, e)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except AccessDeniedError as e:  # logged (and journaled) where it was raised
            raise pyfuse3.FUSEError(e.errno) from None
        except StoreError as e:
            log.warning("%s refused: %s", handler.__name__, e)
            raise pyfuse3.FUSEError(e.errno) from None
        except OSError as e:
            log.warning("%s failed: %s", handler.__name__, e)
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        except Exception:
            log.exception("unexpected error in %s", handler.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None
    return wrapper


@dataclass
class Listing:
    """An open directory: its children as of opendir, and who opened it."""
    children: list
    ctx: object = None


class InodeTable:
    """Stable inode numbers for keys, for the life of the daemon."""

    def __init__(self):
        self._by_key = {ROOT: pyfuse3.ROOT_INODE}
        self._by_ino = {pyfuse3.ROOT_INODE: ROOT}
        self._next = pyfuse3.ROOT_INODE + 1

    def ino(self, key: tuple) -> int:
        ino = self._by_key.get(key)
        if ino is None:
            ino = self._by_key[key] = self._next
            self._by_ino[ino] = key
            self._next += 1
        return ino

    def rename(self, old: tuple, new: tuple):
        """`old` (and, for a directory, everything below it) is now called `new`: the
        kernel keeps using the same inode numbers, so they must follow."""
        replaced = self._by_key.pop(new, None)
        if replaced is not None:
            self._by_ino.pop(replaced, None)  # the overwritten target is gone
        prefix = old[1] + "/"
        moving = [(k, i) for k, i in self._by_key.items()
                  if k[0] == old[0] and (k == old or k[1].startswith(prefix))]
        for k, ino in moving:
            moved = (new[0], new[1] + k[1][len(old[1]):])
            del self._by_key[k]
            self._by_key[moved] = ino
            self._by_ino[ino] = moved

    def move(self, old: tuple, new: tuple):
        """A renamed leaf (an alias symlink): its inode number now names `new`."""
        ino = self._by_key.pop(old, None)
        replaced = self._by_key.pop(new, None)
        if replaced is not None:
            self._by_ino.pop(replaced, None)
        if ino is not None:
            self._by_key[new] = ino
            self._by_ino[ino] = new

    def detach(self, key: tuple) -> int | None:
        """The name `key` is gone while its file is still open: the inode keeps its
        number under a key of its own (getattr, ftruncate… go on working through it),
        and the name gets a new number if it is created again."""
        ino = self._by_key.pop(key, None)
        if ino is not None:
            orphan = (OPEN_UNLINKED, ino)
            self._by_key[orphan] = ino
            self._by_ino[ino] = orphan
        return ino

    def drop(self, key: tuple):
        ino = self._by_key.pop(key, None)
        if ino is not None:
            self._by_ino.pop(ino, None)

    def known(self, key: tuple) -> int | None:
        return self._by_key.get(key)

    def key(self, ino: int) -> tuple:
        key = self._by_ino.get(ino)
        if key is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return key


def kernel_writes_back_on_close(release: str | None = None) -> bool:
    """Does this kernel write a file's dirty pages back at every close(), FLUSH answered
    or not? Linux 5.16 and later do; older ones skip it once FLUSH was refused (ENOSYS),
    leaving the pages to the release that follows the last close."""
    numbers = re.match(r"(\d+)\.(\d+)", release or os.uname().release)
    return numbers is not None and (int(numbers[1]), int(numbers[2])) >= (5, 16)


class CkptfsOperations(pyfuse3.Operations):
    # The kernel's writeback cache: a job's writes land in the page cache and reach the
    # daemon later in large requests (at close, fsync, or under memory pressure): 1.3 to 2
    # times the rate of `dd` into the inbox (docs/benchmarks.md). The kernel then owns a
    # file's size and mtime while it caches it; what that means for sealing is in
    # docs/mount.md ("The write path").
    # daemon.serve turns it off for CKPTFS_WRITEBACK_CACHE=0.
    enable_writeback_cache = True

    def __init__(self, store, inbox=None):
        super().__init__()
        self.store = store
        self.inbox = inbox
        extra = [("inbox", ("inbox", ""))] if inbox else []
        self.tree = ProjectTree(store, extra)
        self.tree.stats_provider = self.live_stats
        if inbox:
            inbox.sealer.on_sealed = self.forget_sealed
        self.inodes = InodeTable()
        self.journal_view = JournalView(store.journal.raw)
        self._handles: dict[int, object] = {}
        self._open_inbox: dict[int, set[int]] = {}  # inode -> handles of inbox files open
        self._next_fh = 1
        self.read_errors = 0
        self.sealed_reads = SealedReads(store.reader)
        self.follower = None  # a JournalFollower, on a store other machines write

    def forget_sealed(self, project: str, run: str, version: str, unit_path: str):
        """A unit of the inbox was sealed: the kernel must ask again what its path is now
        (the sealed version, read-only in a checkpoint directory)."""
        rel = f"{project}/{run}/{unit_path}".rstrip("/")
        parent_rel, _, name = rel.rpartition("/")
        parent = self.inodes.known(("inbox", parent_rel))
        if parent is not None and unit_path:
            try:
                pyfuse3.invalidate_entry_async(parent, os.fsencode(name), ignore_enoent=True)
            except Exception:  # only a cache hint; the entry times out anyway
                log.debug("could not invalidate inbox/%s", rel)

    async def watch_deletions(self, interval: float = 1.0):
        """Until cancelled: when versions are deleted (a `ckptfs gc` or `ckptfs delete`,
        usually in another process), tell the kernel to forget their entries, which it
        would otherwise cache for an hour (IMMUTABLE_TIMEOUT)."""
        while True:
            await trio.sleep(interval)
            try:
                gone = self.tree.take_deleted()
            except StoreError as e:
                log.warning("checking for deleted versions failed: %s", e)
                continue
            for p, r, v in gone:
                log.info("version %s/%s/%s was deleted: it leaves projects/", p, r, v)
                run_ino = self.inodes.known(("run", p, r))
                if run_ino is None:
                    continue  # the kernel never saw it
                for name in (v, v + ".json"):
                    try:
                        pyfuse3.invalidate_entry_async(run_ino, os.fsencode(name),
                                                       ignore_enoent=True)
                    except Exception:  # only a cache hint; lookups already fail
                        log.debug("could not invalidate projects/%s/%s/%s", p, r, name)

    def live_stats(self, actor: dict | None = None) -> dict:
        """What .ckptfs/stats.json shows (to `actor`: the pending versions of the projects
        it can read)."""
        st = self.store.index_stats()  # no listing of the packs at every read
        counters = dict(self.inbox.counters) if self.inbox else {}
        seconds = counters.pop("ingest_seconds", 0.0)
        pending = self.inbox.status() if self.inbox else []
        if actor is not None:
            pending = [item for item in pending if self.store.allowed(
                actor, item["version"].split("/", 1)[0], "reader")]
        return {
            "versions": st["versions"], "deleted_versions": st["deleted_versions"],
            "logical_bytes": st["logical_bytes"],
            "stored_bytes": st["stored_bytes"], "dedup_ratio": round(st["dedup_ratio"], 3),
            "compression_ratio": round(st["compression_ratio"], 3),
            "versions_sealed": counters.get("versions_sealed", 0),
            "seal_failures": counters.get("seal_failures", 0),
            "bytes_in": counters.get("bytes_in", 0),
            "bytes_stored_since_mount": counters.get("bytes_stored", 0),
            "ingest_seconds": round(seconds, 3),
            "bytes_sealed": counters.get("bytes_sealed", 0),
            "ingest_mb_per_s": round(counters.get("bytes_sealed", 0) / seconds / 1e6, 1) if seconds else None,
            "files_prepared": counters.get("files_prepared", 0),
            "files_streamed": counters.get("files_streamed", 0),
            "files_reused_at_seal": counters.get("files_reused_at_seal", 0),
            "sealer_rounds": counters.get("sealer_rounds", 0),
            "seal_retries": counters.get("seal_retries", 0),
            "read_errors": self.read_errors,
            "read_cache": self.store.reader.stats(),
            "store": self.follower.status() if self.follower else
            {"location": self.store.location, "reachable": True},
            "pending_inbox_versions": pending,
        }

    def daemon_counters(self) -> dict:
        """The counters `ckptfs serve` reads from the spool (spool/daemon.py, write_stats):
        since this daemon started, with what waits in the inbox now."""
        counters = self.inbox.counters if self.inbox else {}
        return {"versions_sealed": counters.get("versions_sealed", 0),
                "seal_failures": counters.get("seal_failures", 0),
                "seal_retries": counters.get("seal_retries", 0),
                "bytes_sealed": counters.get("bytes_sealed", 0),
                "bytes_stored": counters.get("bytes_stored", 0),
                "read_errors": self.read_errors,
                "pending_inbox_versions": self.inbox.status() if self.inbox else []}

    async def keep_counters_file(self, interval: float = STATS_FILE_INTERVAL):
        """Until cancelled: rewrite the spool's daemon-stats.json every `interval` s (the
        counters live in this process; the web application is another)."""
        failing = False
        while True:
            try:
                spool_daemon.write_stats(self.store.path, self.daemon_counters())
                failing = False
            except OSError as e:  # a full disk: the mount goes on, the figures wait
                if not failing:   # once, not every few seconds
                    log.warning("could not write the daemon's counters to the spool: %s", e)
                failing = True
            await trio.sleep(interval)

    # -- helpers ------------------------------------------------------------------------
    def _new_handle(self, value) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = value
        return fh

    def _is_inbox(self, key: tuple) -> bool:
        return key[0] == "inbox"

    def _node(self, key: tuple) -> Node:
        node = self.inbox.node(key) if self._is_inbox(key) else self.tree.node(key)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    def attributes(self, key: tuple, node: Node | None = None) -> pyfuse3.EntryAttributes:
        node = node or self._node(key)
        a = pyfuse3.EntryAttributes()
        a.st_ino = self.inodes.ino(key)
        a.st_mode = file_type_bits(node.kind) | node.mode
        if node.nlink is not None:
            a.st_nlink = node.nlink
        else:
            a.st_nlink = 2 + node.subdirs if node.kind == "dir" else 1
        a.st_size = node.size
        a.st_rdev = node.rdev
        a.st_blocks = (node.size + 511) // 512
        a.st_blksize = BLOCK_SIZE
        a.st_uid = os.getuid() if node.uid is None else node.uid
        a.st_gid = os.getgid() if node.gid is None else node.gid
        a.st_mtime_ns = node.mtime_ns
        a.st_atime_ns = node.mtime_ns if node.atime_ns is None else node.atime_ns
        a.st_ctime_ns = node.mtime_ns if node.ctime_ns is None else node.ctime_ns
        timeout = IMMUTABLE_TIMEOUT if node.immutable else MUTABLE_TIMEOUT
        a.attr_timeout = a.entry_timeout = timeout
        if (is_gate(key) or key == ("audit",)) and self.store.enforcing():
            # With --allow-other the kernel's caches serve every user alike: a cached
            # entry of projects/<p> would let the next user in without asking us. Not
            # cached, every path walk through it comes here and is checked; below it the
            # long timeouts stay (and open/opendir, always sent, are checked too).
            # audit.jsonl differs in size from one user to another.
            a.entry_timeout = 0
            if key == ("audit",):
                a.attr_timeout = 0
        return a

    # -- access control (docs/access.md) -------------------------------------------------
    async def _require(self, ctx, key: tuple, role: str, operation: str):
        """EACCES unless the caller has `role` on the project of `key` (when roles are
        enforced). A refusal is logged and journaled, on a worker thread (the journal
        fsyncs)."""
        project = project_of(key)
        if project is None or ctx is None or not self.store.enforcing():
            return  # not enforced: one index read, a few µs
        error = self.store.check_access(actor_of(ctx), project, role, operation, path_of(key))
        if error is not None:
            await trio.to_thread.run_sync(self.store.record_refusal, error)
            raise pyfuse3.FUSEError(errno.EACCES)

    def _node_for(self, key: tuple, ctx) -> Node:
        """The node as this caller sees it: when roles are enforced, audit.jsonl and
        stats.json show only what concerns the projects it can read (an admin, or anyone
        with a role on `*`, reads them whole)."""
        if key not in (("audit",), ("stats",)) or ctx is None or not self.store.enforcing():
            return self._node(key)
        actor = actor_of(ctx)
        if self.store.allowed(actor, ALL, "reader"):
            return self._node(key)
        if key == ("stats",):
            content = (json.dumps(self.live_stats(actor), indent=2, sort_keys=True) + "\n").encode()
        else:
            content = self.journal_view.content(
                lambda project: self.store.allowed(actor, project, "reader"))
        node = self._node(key)
        return Node(key, "file", 0o444, len(content), node.mtime_ns, content=content)

    def _child_key(self, parent: tuple, name: str) -> tuple | None:
        if self._is_inbox(parent):
            return self.inbox.child_key(parent, name)
        if parent == ROOT and name == "inbox" and self.inbox:
            return ("inbox", "")
        return self.tree.child_key(parent, name)

    # -- lookups and attributes ---------------------------------------------------------
    @guarded
    async def lookup(self, parent_inode, name, ctx=None):
        parent = self.inodes.key(parent_inode)
        name = name_of(name)
        if name == ".":
            return self.attributes(parent)
        key = self._child_key(parent, name)
        if key is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        await self._require(ctx, key, "reader", "read")
        return self.attributes(key, self._node_for(key, ctx))

    @guarded
    async def getattr(self, inode, ctx=None):
        key = self.inodes.key(inode)
        if key[0] == OPEN_UNLINKED:
            return self.attributes(key, self.inbox.open_file_node(key, self._open_fd(inode)))
        await self._require(ctx, key, "reader", "read")
        return self.attributes(key, self._node_for(key, ctx))

    @guarded
    async def readlink(self, inode, ctx):
        key = self.inodes.key(inode)
        await self._require(ctx, key, "reader", "read")
        node = self._node(key)
        if node.kind != "symlink":
            raise pyfuse3.FUSEError(errno.EINVAL)
        return os.fsencode(node.target)

    @guarded
    async def access(self, inode, mode, ctx):
        """access(2), `test -r`: asked only when roles are enforced (the mount then has no
        default_permissions). Read needs reader; write is for the inbox, and needs writer."""
        key = self.inodes.key(inode)
        if mode & os.W_OK and not self._is_inbox(key):
            return False
        role = "writer" if mode & os.W_OK else "reader"
        project = project_of(key)
        return project is None or self.store.allowed(actor_of(ctx), project, role)

    # -- directories --------------------------------------------------------------------
    @guarded
    async def opendir(self, inode, ctx):
        key = self.inodes.key(inode)
        await self._require(ctx, key, "reader", "read")
        if self._node(key).kind != "dir":
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        # The listing is taken once per open, so a large directory pages through one
        # stable snapshot however many readdir calls it takes.
        children = self.inbox.children(key) if self._is_inbox(key) else self.tree.children(key)
        if key in (("projects",), ("inbox", ""), ("deleted",)) and self.store.enforcing():
            actor = actor_of(ctx)  # the projects this caller may not read are not there
            children = [(name, child) for name, child in children
                        if self.store.allowed(actor, project_of(child) or name, "reader")]
        return self._new_handle(Listing(children, ctx))

    @guarded
    async def readdir(self, fh, start_id, token):
        listing = self._handles[fh]
        children = listing.children
        for index in range(start_id, len(children)):
            name, key = children[index]
            try:
                attrs = self.attributes(key, self._node_for(key, listing.ctx))
            except pyfuse3.FUSEError:
                continue  # vanished since opendir (e.g. an inbox file renamed)
            if not pyfuse3.readdir_reply(token, os.fsencode(name), attrs, index + 1):
                return

    @guarded
    async def releasedir(self, fh):
        self._handles.pop(fh, None)

    # -- files --------------------------------------------------------------------------
    @guarded
    async def open(self, inode, flags, ctx):
        key = self.inodes.key(inode)
        writing = bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND))
        if self._is_inbox(key):
            await self._require(ctx, key, *(("writer", "archive versions") if writing
                                            else ("reader", "read")))
            handle = await self.inbox.open(key, flags, ctx)
            if isinstance(handle, Node) and handle.source_path is not None:  # an error file
                fi = pyfuse3.FileInfo(fh=self._new_handle(SourceFile(
                    os.open(handle.source_path, os.O_RDONLY))))
                fi.direct_io = True
                return fi
            if isinstance(handle, Node):  # a sealed file, read where the job wrote it
                self._note_read(handle, ctx)
            elif not writing:
                self.inbox.note_spool_read(key, ctx)
            if isinstance(handle, Node):
                return pyfuse3.FileInfo(fh=self._new_handle(handle))
            return pyfuse3.FileInfo(fh=self._inbox_handle(inode, handle))
        if writing:
            raise pyfuse3.FUSEError(errno.EROFS)
        await self._require(ctx, key, "reader", "read")
        node = self._node_for(key, ctx)
        if node.kind != "file":
            raise pyfuse3.FUSEError(errno.EISDIR if node.kind == "dir" else errno.EINVAL)
        self._note_read(node, ctx)
        if node.source_path is not None:  # the audit log: grows, so read to its real end
            fi = pyfuse3.FileInfo(fh=self._new_handle(SourceFile(os.open(node.source_path, os.O_RDONLY))))
            fi.direct_io = True
            return fi
        fi = pyfuse3.FileInfo(fh=self._new_handle(node))
        fi.keep_cache = node.immutable
        # A generated file that changes (stats.json) may differ in size from what an
        # earlier getattr said: direct_io makes the kernel read it to its real end.
        fi.direct_io = node.content is not None and not node.immutable
        return fi

    def _note_read(self, node: Node, ctx):
        """Which archived version each process reads: the lineage of what it writes next
        (fs/reads.py)."""
        if self.inbox is not None and node.origin is not None and ctx is not None:
            p, r, v, path = node.origin
            self.inbox.reads.note(ctx.pid, (p, r, v), path)

    @guarded
    async def read(self, fh, off, size):
        handle = self._handles[fh]
        if isinstance(handle, SourceFile):
            return os.pread(handle.fd, size, off)
        if not isinstance(handle, Node):
            return await self.inbox.read(handle, off, size)
        if handle.content is not None:
            return handle.content[off:off + size]
        try:
            return await self.sealed_reads.read(handle.entry, off, size)
        except (IntegrityError, BackendUnavailableError) as e:
            # Damage, or bytes that are neither cached nor reachable (the object store
            # is down): the read fails, the daemon goes on.
            self.read_errors += 1
            log.error("read of %s failed: %s", "/".join(handle.key[1:]), e)
            raise pyfuse3.FUSEError(errno.EIO) from None

    @guarded
    async def release(self, fh):
        handle = self._handles.pop(fh, None)
        if isinstance(handle, SourceFile):
            os.close(handle.fd)
        elif handle is not None and not isinstance(handle, Node):
            self._forget_inbox_handle(fh, handle)
            await self.inbox.release(handle)

    # -- extended attributes ------------------------------------------------------------
    @guarded
    async def getxattr(self, inode, name, ctx):
        if name.startswith(UNSUPPORTED_XATTR_NAMESPACES):
            # `ls -l` asks every file for its SELinux label and ACL; "not supported" (not
            # "no such attribute") makes it stop asking for the rest of this file system.
            raise pyfuse3.FUSEError(errno.ENOTSUP)
        key = self.inodes.key(inode)
        if self._is_inbox(key) and name != XATTR_SHA256:
            await self._require(ctx, key, "reader", "read")
            return self.inbox.getxattr(key, name)
        if name != XATTR_SHA256:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        await self._require(ctx, key, "reader", "read")
        node = self._node(key)
        if node.entry is not None:
            return node.entry["sha256"].encode()
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR)

    @guarded
    async def listxattr(self, inode, ctx):
        key = self.inodes.key(inode)
        await self._require(ctx, key, "reader", "read")
        node = self._node(key)
        names = [XATTR_SHA256] if node.entry is not None else []
        if self._is_inbox(key) and len(self.inbox.parts(key)) > 2:
            names.append(XATTR_STATE)
        return names

    @guarded
    async def statfs(self, ctx):
        st = os.statvfs(self.store.path)
        s = pyfuse3.StatvfsData()
        s.f_bsize, s.f_frsize = st.f_bsize, st.f_frsize
        s.f_blocks, s.f_bfree, s.f_bavail = st.f_blocks, st.f_bfree, st.f_bavail
        s.f_files, s.f_ffree, s.f_favail = st.f_files, st.f_ffree, st.f_favail
        s.f_namemax = 255
        return s

    # -- changes: only the inbox takes them ---------------------------------------------
    def _refuse_outside_inbox(self, *inodes):
        keys = [self.inodes.key(i) for i in inodes]
        if not self.inbox or not all(self._is_inbox(k) for k in keys):
            raise pyfuse3.FUSEError(errno.EROFS)
        return keys

    @guarded
    async def setattr(self, inode, attr, fields, fh, ctx):
        if self.inodes.key(inode)[0] == OPEN_UNLINKED:  # ftruncate, fchmod… after unlink
            handle = self._handles.get(fh)
            fd = handle.fd if getattr(handle, "inode", None) == inode else self._open_fd(inode)
            self.inbox.setattr_open(fd, attr, fields, ctx)
            return await self.getattr(inode, ctx)
        key = self._refuse_outside_inbox(inode)[0]
        await self._require(ctx, key, "writer", "archive versions")
        await self.inbox.setattr(key, attr, fields, fh, ctx)
        return self.attributes(key)

    @guarded
    async def create(self, parent_inode, name, mode, flags, ctx):
        parent = self._refuse_outside_inbox(parent_inode)[0]
        await self._require(ctx, self.inbox.child(parent, os.fsdecode(name)), "writer",
                            "archive versions")
        key, handle = await self.inbox.create(parent, os.fsdecode(name), mode, flags, ctx)
        attributes = self.attributes(key)
        return pyfuse3.FileInfo(fh=self._inbox_handle(attributes.st_ino, handle)), attributes

    # -- inbox files open: they outlive their name until the last close -----------------
    def _inbox_handle(self, inode: int, handle) -> int:
        fh = self._new_handle(handle)
        self._open_inbox.setdefault(inode, set()).add(fh)
        handle.inode = inode
        return fh

    def _open_fd(self, inode: int) -> int:
        for fh in self._open_inbox.get(inode, ()):
            return self._handles[fh].fd
        raise pyfuse3.FUSEError(errno.ENOENT)

    def _detach_if_open(self, key: tuple):
        """`key` no longer names its file: if that is open, it lives on (POSIX: until
        the last close), else its inode number goes."""
        ino = self.inodes.known(key)
        if ino is not None and ino in self._open_inbox:
            self.inodes.detach(key)

    def _forget_inbox_handle(self, fh: int, handle):
        inode = getattr(handle, "inode", None)
        handles = self._open_inbox.get(inode)
        if handles is None:
            return
        handles.discard(fh)
        if not handles:
            del self._open_inbox[inode]
            # the last close of a file whose name went: its inode number goes too
            self.inodes.drop((OPEN_UNLINKED, inode))

    @guarded
    async def mkdir(self, parent_inode, name, mode, ctx):
        parent = self._refuse_outside_inbox(parent_inode)[0]
        await self._require(ctx, self.inbox.child(parent, os.fsdecode(name)), "writer",
                            "archive versions")
        key = await self.inbox.mkdir(parent, os.fsdecode(name), mode, ctx)
        return self.attributes(key)

    @guarded
    async def symlink(self, parent_inode, name, target, ctx):
        parent, name = self.inodes.key(parent_inode), os.fsdecode(name)
        if parent[0] == "run":
            return await self._set_alias(parent, name, os.fsdecode(target), ctx)
        parent = self._refuse_outside_inbox(parent_inode)[0]
        await self._require(ctx, self.inbox.child(parent, name), "writer", "archive versions")
        key = await self.inbox.symlink(parent, name, os.fsdecode(target), ctx)
        return self.attributes(key)

    @guarded
    async def unlink(self, parent_inode, name, ctx):
        parent, name = self.inodes.key(parent_inode), name_of(name)
        if parent[0] == "run" and self._child_key(parent, name) == ("alias", *parent[1:], name):
            p, r = parent[1:]
            await trio.to_thread.run_sync(self.store.remove_alias, p, r, name, actor_of(ctx))
            log.info("alias %s/%s/%s removed", p, r, name)
            return
        parent = self._refuse_outside_inbox(parent_inode)[0]
        await self._require(ctx, self.inbox.child(parent, name), "writer", "archive versions")
        await self.inbox.unlink(parent, name, ctx)
        self._detach_if_open(self.inbox.child(parent, name))

    # -- aliases: the only change allowed under projects/ ------------------------------
    async def _set_alias(self, run: tuple, name: str, target: str, ctx):
        """`ln -s VERSION projects/p/r/NAME`: a new alias (EEXIST if the name is taken:
        `ln -sfn` then makes it under a temporary name and renames it over)."""
        p, r = run[1:]
        if self._child_key(run, name) is not None:
            raise pyfuse3.FUSEError(errno.EEXIST)
        version = target[2:] if target.startswith("./") else target
        if "/" in version.rstrip("/"):
            log.warning("refused alias %s/%s/%s -> %s: an alias points at a version of its "
                        "own run, by its name", p, r, name, target)
            raise pyfuse3.FUSEError(errno.EINVAL)
        await trio.to_thread.run_sync(self.store.set_alias, p, r, name, version, actor_of(ctx))
        log.info("alias %s/%s/%s -> %s", p, r, name, version)
        return self.attributes(("alias", p, r, name))

    async def _rename_alias(self, run: tuple, old: str, new: str, ctx):
        p, r = run[1:]
        if self._child_key(run, old) != ("alias", p, r, old):
            raise pyfuse3.FUSEError(errno.EROFS)
        if new in DERIVED_ALIASES or self._child_key(run, new) not in (None, ("alias", p, r, new)):
            log.warning("refused renaming alias %s/%s/%s to %r: that name is taken", p, r, old, new)
            raise pyfuse3.FUSEError(errno.EPERM if new in DERIVED_ALIASES else errno.EEXIST)
        await trio.to_thread.run_sync(self.store.rename_alias, p, r, old, new, actor_of(ctx))
        self.inodes.move(("alias", p, r, old), ("alias", p, r, new))
        log.info("alias %s/%s/%s renamed to %s", p, r, old, new)

    @guarded
    async def rmdir(self, parent_inode, name, ctx):
        parent = self._refuse_outside_inbox(parent_inode)[0]
        await self._require(ctx, self.inbox.child(parent, name_of(name)), "writer",
                            "archive versions")
        await self.inbox.rmdir(parent, name_of(name), ctx)

    @guarded
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        # (a new name too long is refused by the inbox, with a log line)
        old_name, new_name = name_of(name_old), os.fsdecode(name_new)
        run = self.inodes.key(parent_inode_old)
        if run[0] == "run" and parent_inode_new == parent_inode_old:
            if flags & pyfuse3.RENAME_EXCHANGE:
                raise pyfuse3.FUSEError(errno.EINVAL)
            if flags & pyfuse3.RENAME_NOREPLACE and self._child_key(run, new_name) is not None:
                raise pyfuse3.FUSEError(errno.EEXIST)
            return await self._rename_alias(run, old_name, new_name, ctx)
        old_parent, new_parent = self._refuse_outside_inbox(parent_inode_old, parent_inode_new)
        for parent, name in ((old_parent, old_name), (new_parent, new_name)):
            await self._require(ctx, self.inbox.child(parent, name), "writer", "archive versions")
        await self.inbox.rename(old_parent, old_name, new_parent, new_name, flags, ctx)
        self._detach_if_open(self.inbox.child(new_parent, new_name))  # the file replaced
        self.inodes.rename(self.inbox.child(old_parent, old_name),
                           self.inbox.child(new_parent, new_name))

    @guarded
    async def write(self, fh, off, buf):
        handle = self._handles.get(fh)
        if handle is None or isinstance(handle, (Node, SourceFile)):
            raise pyfuse3.FUSEError(errno.EROFS)
        return await self.inbox.write(handle, off, buf)

    @guarded
    async def flush(self, fh):
        """close(): nothing for the daemon to do (the sealer waits for the release, which
        the kernel sends after writing the file's last dirty pages back). ENOSYS tells the
        kernel to stop sending FLUSH, one round trip less per close, where that does not
        also stop it writing a closed file's pages back before close() returns: the job
        must find its bytes in the daemon once it has closed the file (a `.seal` marker
        right after), and a failed write-back (a full disk) reported by its close()."""
        if kernel_writes_back_on_close() or not self.enable_writeback_cache:
            raise pyfuse3.FUSEError(errno.ENOSYS)

    @guarded
    async def fsync(self, fh, datasync):
        handle = self._handles.get(fh)
        if handle is not None and not isinstance(handle, (Node, SourceFile)):
            await self.inbox.fsync(handle, datasync)

    @guarded
    async def link(self, inode, new_parent_inode, new_name, ctx):
        name_of(new_name)
        self._refuse_outside_inbox(inode, new_parent_inode)
        log.warning("refused a hard link in the inbox: a checkpoint holds files, "
                    "directories and symlinks only")
        raise pyfuse3.FUSEError(errno.EPERM)

    @guarded
    async def setxattr(self, inode, name, value, ctx):
        key = self._refuse_outside_inbox(inode)[0]
        await self._require(ctx, key, "writer", "archive versions")
        self.inbox.setxattr(key, name, value)

    @guarded
    async def removexattr(self, inode, name, ctx):
        self._refuse_outside_inbox(inode)
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    @guarded
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        parent = self._refuse_outside_inbox(parent_inode)[0]
        name = os.fsdecode(name)
        await self._require(ctx, self.inbox.child(parent, name), "writer", "archive versions")
        key = await self.inbox.mknod(parent, name, mode, rdev, ctx)
        return self.attributes(key)
