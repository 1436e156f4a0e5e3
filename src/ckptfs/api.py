"""The Python API for training code that writes into a ckptfs mount.

    import ckptfs
    ckptfs.annotate(ckpt_dir, metrics={"eval_loss": 0.31}, lineage={"data": {"version": "v3"}})
    ckptfs.seal(ckpt_dir)            # -> "bert/run-42/checkpoint-500", once sealed

Both talk to the mount daemon through extended attributes of the path in the inbox
(`user.ckptfs.seal`, `user.ckptfs.annotate`, `user.ckptfs.state`), so they work from any
process and any language that can set an xattr (`setfattr -n user.ckptfs.seal -v 1 P`).
"""
import errno
import json
import os
import time

from ckptfs.meta.user import clean_document

XATTR_SEAL = "user.ckptfs.seal"
XATTR_ANNOTATE = "user.ckptfs.annotate"
XATTR_STATE = "user.ckptfs.state"
FUSE_TYPE = "fuse.ckptfs"


class CkptfsError(Exception):
    """What the mount said no to, in words."""


class NotInMountError(CkptfsError):
    """The path is not in the inbox of a ckptfs mount."""


class SealFailedError(CkptfsError):
    """The daemon tried to seal the checkpoint and could not (its error file says why)."""


def mount_of(path: str) -> str | None:
    """The ckptfs mount point holding `path`, or None."""
    real = os.path.realpath(path)
    best = None
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                mount_point = fields[4].replace("\\040", " ")
                fs_type = fields[fields.index("-") + 1]
                if fs_type == FUSE_TYPE and (real == mount_point or real.startswith(mount_point.rstrip("/") + "/")):
                    if best is None or len(mount_point) > len(best):
                        best = mount_point
    except (OSError, ValueError, IndexError):
        return None
    return best


def _inbox_path(path: str) -> str:
    mount = mount_of(path)
    real = os.path.realpath(path)
    if mount is None:
        raise NotInMountError(f"{path} is not in a ckptfs mount")
    inside = os.path.relpath(real, mount).split(os.sep)
    if inside[0] != "inbox" or len(inside) < 3:
        raise NotInMountError(f"{path} is not in the inbox of the ckptfs mount at {mount} "
                              "(checkpoints are written under inbox/<project>/<run>/)")
    return real


def state(path: str) -> dict:
    """What the mount says of an inbox path: {"state": "writing" | "quiet" | "sealing" |
    "sealed" | "held" | "failed" | "removed", "version": "p/r/v" once sealed, …}."""
    real = _inbox_path(path)
    try:
        return json.loads(os.getxattr(real, XATTR_STATE))
    except FileNotFoundError:
        raise CkptfsError(f"{path}: no such file or directory in the inbox") from None


def seal(path: str, wait: bool = True, timeout: float = 600.0) -> str | None:
    """Seal the checkpoint at `path` now (a checkpoint directory or file in the inbox, a
    folder of logs, or the run directory: everything in it), without waiting for the
    quiet period. With `wait`, return its version ("project/run/version") once sealed;
    raise SealFailedError if it cannot be sealed (schema, unsafe pickle, full disk)."""
    real = _inbox_path(path)
    try:
        os.setxattr(real, XATTR_SEAL, b"1")
    except OSError as e:
        raise _explained(e, path, "seal") from None
    if not wait:
        return None
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        try:
            now = json.loads(os.getxattr(real, XATTR_STATE))
        except FileNotFoundError:
            return None  # removed from the working view meanwhile: sealed all the same
        if now.get("state") == "sealed":
            return now.get("version")
        if now.get("state") == "failed":
            raise SealFailedError(now.get("error") or f"sealing {path} failed")
        if now.get("state") == "empty":
            return None
        if time.monotonic() > deadline:
            raise CkptfsError(f"{path} was not sealed within {timeout:.0f} s (is a file of it "
                              "still open?)")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def annotate(path: str, *, metrics: dict | None = None, step: int | None = None,
             epoch: float | None = None, tags: list | None = None, notes: str | None = None,
             lineage: dict | None = None) -> None:
    """Metadata for the version the checkpoint at `path` will be sealed as, with the
    meaning and checks of ckptfs.json (docs/sidecar.md); it outranks ckptfs.json and what
    ckptfs reads from the files. May be called several times before the seal (later
    values win, objects merge)."""
    doc = {k: v for k, v in {"metrics": metrics, "step": step, "epoch": epoch, "tags": tags,
                             "notes": notes, "lineage": lineage}.items() if v is not None}
    warnings: list[str] = []
    clean_document(doc, warnings)
    if warnings:
        raise ValueError("; ".join(w.replace("ckptfs.json: ", "") for w in warnings))
    real = _inbox_path(path)
    try:
        os.setxattr(real, XATTR_ANNOTATE, json.dumps(doc).encode())
    except OSError as e:
        raise _explained(e, path, "annotate") from None


def _explained(error: OSError, path: str, what: str) -> CkptfsError:
    reasons = {
        errno.ENOENT: "no such file or directory in the inbox",
        errno.EROFS: "it is sealed already: its metadata can no longer change",
        errno.EACCES: "you have no writer role on this project",
        errno.EINVAL: "the mount refused it (see the mount log)",
        errno.ENOTSUP: "the mount does not support this (is ckptfs older than this API?)",
    }
    return CkptfsError(f"cannot {what} {path}: {reasons.get(error.errno, error.strerror)}")
