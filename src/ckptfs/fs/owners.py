"""Who owns what a user creates in the inbox, and who may change that.

A daemon running as root creates the spool files; these give each the owner a file
system would (the caller, the directory's group when it is set-group-ID) and apply
chown(2)'s rules when the kernel does not (roles enforced: no default_permissions).
"""
import errno
import logging
import os
import stat

import pyfuse3

from ckptfs.store.access import request_actor

log = logging.getLogger("ckptfs.inbox")


def give_to_caller(path: str, ctx):
    """A daemon running as root makes what a user creates in the inbox that user's, as a
    file system does: `ls -l inbox/…` shows who wrote it, and the kernel's permission
    checks (default_permissions) see the real owner. The group is the caller's, or the
    directory's when that has the set-group-ID bit (what ext4 did for us already)."""
    if ctx is None or os.geteuid() != 0:
        return
    parent = os.lstat(os.path.dirname(path))
    gid = parent.st_gid if parent.st_mode & stat.S_ISGID else ctx.gid
    st = os.lstat(path)
    if (st.st_uid, st.st_gid) == (ctx.uid, gid):
        return
    try:
        os.lchown(path, ctx.uid, gid)
    except OSError as e:
        log.debug("could not give %s to uid %d: %s", path, ctx.uid, e)


def change_owner(path_or_fd, attr, fields):
    """chown: kept on the spool file itself, shown by the mount (the kernel has checked
    that the caller may: default_permissions). A version does not archive ownership
    (docs/mount.md): it is for the inbox's permission checks while a job writes."""
    uid = attr.st_uid if fields.update_uid else -1
    gid = attr.st_gid if fields.update_gid else -1
    if isinstance(path_or_fd, int):
        os.fchown(path_or_fd, uid, gid)
    else:
        os.chown(path_or_fd, uid, gid, follow_symlinks=False)


def refuse_foreign_chown(st, attr, fields, ctx):
    """chown(2)'s rules, applied here too: with roles enforced the mount has no
    default_permissions and the kernel checks nothing, while the daemon changes owners
    as root. Only root gives a file away; its owner may change its group to one of its
    own groups."""
    if ctx is None or ctx.uid == 0:
        return
    if fields.update_uid and (attr.st_uid != st.st_uid or st.st_uid != ctx.uid):
        log.warning("refused chown by uid %d: only root gives a file away", ctx.uid)
        raise pyfuse3.FUSEError(errno.EPERM)
    if fields.update_gid and (st.st_uid != ctx.uid or (
            attr.st_gid != st.st_gid and
            attr.st_gid not in request_actor(ctx.uid, ctx.gid, ctx.pid)["gids"])):
        log.warning("refused chgrp by uid %d: not its owner, or not a group of the caller",
                    ctx.uid)
        raise pyfuse3.FUSEError(errno.EPERM)
