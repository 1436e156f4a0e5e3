"""What the test_access.py files of several levels (store, unit, cli, mount) share."""
import os
import subprocess
import sys
import tempfile

import tqdm  # noqa: F401

# Imported lazily by the CLI (export, find's queries, progress bars): the forked child of
# `cli_as_user`, as nobody, cannot read Python's own files under /root, so they are
# imported here first.
import ckptfs.meta.export  # noqa: F401
import ckptfs.meta.query  # noqa: F401
from ckptfs.store import Store
from tests.helpers.samples import make_checkpoint

NOBODY = 65534
USERS_GROUP = 100


def public_dir() -> str:
    """A directory other users can enter (pytest's tmp_path lives under a 0700 one)."""
    path = tempfile.mkdtemp(prefix="ckptfs-access-", dir="/tmp")
    os.chmod(path, 0o755)
    return path


def grant(store, project, role, principal="user:nobody"):
    with Store.open(store) as s:
        s.grant(project, principal, role)


def readable_checkpoint(path, step) -> str:
    src = make_checkpoint(path, step=step)
    subprocess.run(["chmod", "-R", "a+rX", src], check=True)  # config.json is 0640
    return src


def journal(store_path: str) -> list[dict]:
    with Store.open(store_path) as s:
        return list(s.journal_entries())


def refusals(store_path: str, uid=NOBODY, **fields) -> list[dict]:
    return [e for e in journal(store_path) if e["type"] == "access.refused" and e["uid"] == uid
            and all(e.get(k) == v for k, v in fields.items())]


def cli_as_user(*args, uid=NOBODY, gid=NOBODY, groups=()):
    """`ckptfs ARGS` run by a forked child of this process that first takes the ids of
    another user: (exit code, output)."""
    from ckptfs.cli.app import main
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 99
        try:
            os.dup2(write_end, 1)
            os.dup2(write_end, 2)
            sys.stdout, sys.stderr = os.fdopen(1, "w"), os.fdopen(2, "w")  # not pytest's capture
            os.setgroups(list(groups))
            os.setgid(gid)
            os.setuid(uid)
            os.chdir("/")
            try:
                main([str(a) for a in args], prog_name="ckptfs")
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
    os.close(write_end)
    output = b""
    while chunk := os.read(read_end, 1 << 16):
        output += chunk
    os.close(read_end)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), output.decode()
