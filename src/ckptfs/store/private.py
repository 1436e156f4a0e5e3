"""Modes of what ckptfs creates inside a store: private to the store's owner.

A store holds every version's data and its sidecars (names, metrics, command lines,
hosts), so nothing ckptfs creates in it is readable by others: a new directory is 0700
and a new file 0600, whatever the umask (docs/format.md, "Permissions"). Other users
come in through the mount (docs/access.md).

The way to widen that is the documented share (docs/access.md, "The CLI"): the owner
opens the store's directories to a group (`chmod -R g+rwX`), and a new file or
directory then grants group and others what the directory it is made in grants them,
never more. So nothing is ever more open than the directory that holds it.

What mirrors the writers' own files in the spool (`spool/inbox/`, and `spool/staging/`,
`spool/removed/` while they are sealed or set aside) keeps the modes the writers asked
for, which the mount shows; the private directories above keep it out of reach.
"""
import os
import stat

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
NOT_OWNER_RW = 0o066
NOT_OWNER_RWX = 0o077


def _shared_bits(directory: str) -> int:
    """What `directory` grants its group and others."""
    try:
        return stat.S_IMODE(os.stat(directory).st_mode) & NOT_OWNER_RWX
    except FileNotFoundError:
        return 0


def file_mode_in(directory: str) -> int:
    """The mode of a new file in `directory`."""
    return PRIVATE_FILE | (_shared_bits(directory) & NOT_OWNER_RW)


def make_private_dirs(path: str) -> None:
    """`os.makedirs` with every directory it creates private (makedirs gives its mode to
    the last one only)."""
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    if parent and parent != path:
        make_private_dirs(parent)
    try:
        os.mkdir(path, PRIVATE_DIR | _shared_bits(parent))
    except FileExistsError:
        if not os.path.isdir(path):
            raise


def private_open(path: str, flags: int) -> int:
    """`os.open` that creates the file with `file_mode_in` its directory."""
    return os.open(path, flags, file_mode_in(os.path.dirname(path) or "."))


def private_opener(path: str, flags: int) -> int:
    """An `opener` for `open()` that creates the file like `private_open`."""
    return private_open(path, flags)
