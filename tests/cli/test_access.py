"""Access control through the real CLI (issue 6): `init --shared`, grants managed with
`ckptfs access`, and commands run as another user (a forked child that drops its ids:
the interpreter under /root is out of their reach) checking that user's role. The
machine's user database is not changed. The mount: tests/mount/test_access.py."""
import json
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest
import tqdm  # noqa: F401,E402

# Imported lazily by the CLI (export, find's queries, progress bars): the forked child of
# `cli_as_user`, as nobody, cannot read Python's own files under /root, so they are
# imported here first.
import ckptfs.meta.diff  # noqa: F401,E402
import ckptfs.meta.export  # noqa: F401,E402
import ckptfs.meta.query  # noqa: F401
from ckptfs.store import Store
from tests.helpers.access import NOBODY, cli_as_user, public_dir
from tests.helpers.cli import run_cli_checked
from tests.helpers.samples import make_checkpoint

pytestmark = pytest.mark.skipif(shutil.which("setpriv") is None or os.getuid() != 0,
                                reason="needs root and setpriv (util-linux)")


def test_init_shared_enforces_and_access_commands_manage_grants(tmp_path):
    store = str(tmp_path / "store")
    out = run_cli_checked("init", "--shared", store).stdout.decode()
    assert "roles enforced" in out
    assert os.stat(store).st_mode & 0o777 == 0o700
    run_cli_checked("access", "grant", store, "vision", "reader", "user:nobody")
    granted = run_cli_checked("access", "grant", store, "vision", "writer", "group:100")
    assert granted.stdout.decode().strip() == "granted group:users writer on vision"
    with ThreadPoolExecutor(3) as pool:  # independent: most of each is Python starting
        shown, last, unknown = pool.map(lambda args: run_cli_checked(*args[1:], rc=args[0]), [
            (0, "access", "show", store, "vision"),
            (1, "access", "revoke", store, "*", "user:root"),
            (1, "access", "grant", store, "vision", "reader", "user:no-such-x")])
    shown = shown.stdout.decode().splitlines()
    assert shown[0] == "enforcement: on"
    assert [line.split() for line in shown[1:5]] == [
        ["project", "principal", "role"], ["*", "user:root", "admin"],
        ["vision", "group:users", "writer"], ["vision", "user:nobody", "reader"]]
    assert shown[5] == "user root (uid 0) has role admin on vision"
    assert "user:root is the last admin of every project (*)" in last.stderr.decode()
    assert "no user named 'no-such-x'" in unknown.stderr.decode()
    run_cli_checked("access", "revoke", store, "vision", "user:nobody")
    run_cli_checked("access", "enforce", store, "off")
    log = run_cli_checked("audit", store).stdout.decode().splitlines()
    assert [line.split()[3] for line in log] == [
        "access.granted", "access.enforcement", "access.granted", "access.granted",
        "access.revoked", "access.enforcement"]
    assert "vision  user:nobody (was reader)" in log[4]


def test_cli_commands_as_another_user_check_their_role(open_store):
    code, out = cli_as_user("tag", open_store, "vision/r/v1", "production")
    assert code == 1
    assert out == ("ckptfs: error: user nobody (uid 65534) may not set or move aliases in "
                   "project vision: needs role maintainer, has reader; ask an admin: ckptfs "
                   f"access grant {open_store} vision maintainer user:nobody\n")
    code, out = cli_as_user("cat", open_store, "nlp/r/v1/config.json")
    assert code == 1 and "may not read in project nlp: needs role reader, has no role" in out
    code, out = cli_as_user("config", "set", open_store, "vision", "mode=max")
    assert code == 1 and "may not change project settings" in out
    assert cli_as_user("ls", open_store) == (0, "vision\n")           # nlp left out
    code, out = cli_as_user("find", open_store, "--format", "paths")
    assert (code, out) == (0, "projects/vision/r/v1\n")
    assert cli_as_user("cat", open_store, "vision/r/v1/config.json")[0] == 0
    code, out = cli_as_user("audit", open_store, "--json")
    seen = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and {e["project"] for e in seen} == {"vision"}
    assert [e["type"] for e in seen] == ["version.sealed", "access.granted", "access.refused",
                                        "access.refused"]
    assert [(e["operation"], e["uid"]) for e in seen[2:]] == [
        ("set or move aliases", NOBODY), ("change project settings", NOBODY)]
    everything = run_cli_checked("audit", open_store, "--json").stdout.decode().splitlines()
    refused = [json.loads(line) for line in everything if '"access.refused"' in line]
    assert [(e["project"], e["operation"]) for e in refused] == [
        ("vision", "set or move aliases"), ("nlp", "read"), ("vision", "change project settings")]
    code, out = cli_as_user("diff", open_store, "vision/r/v1", "nlp/r/latest")
    assert code == 1 and "may not read in project nlp: needs role reader, has no role" in out
    assert cli_as_user("diff", open_store, "vision/r/v1", "vision/r/latest")[0] == 0


def test_governance_commands_check_their_role(open_store, tmp_path):
    """export needs reader; retention, delete and gc need maintainer on the projects they
    change: a reader is refused before anything changes, a maintainer is not."""
    dest = os.path.join(public_dir(), "export")
    os.chmod(os.path.dirname(dest), 0o777)
    code, out = cli_as_user("export", open_store, "nlp/r/v1", dest)
    assert code == 1 and "may not export versions in project nlp: needs role reader" in out
    assert not os.path.exists(dest)
    code, out = cli_as_user("retention", "set", open_store, "vision", "keep_last=1")
    assert code == 1 and "may not set retention policies in project vision" in out
    code, out = cli_as_user("delete", open_store, "vision/r/v1", "--reason", "space")
    assert code == 1 and "may not delete versions in project vision" in out
    with Store.open(open_store) as s:
        s.import_directory(make_checkpoint(tmp_path / "c", step=3), "vision", "r", "v2")
        s.set_retention_policy("vision", None, {"keep_last": 1})   # the owner, an admin
    for dry_run in (["--dry-run"], []):
        code, out = cli_as_user("gc", open_store, *dry_run)
        assert code == 1 and "may not delete versions by retention in project vision" in out
    assert run_cli_checked("ls", open_store, "vision/r").stdout.decode().split() == ["v1", "v2"]
    run_cli_checked("access", "grant", open_store, "vision", "maintainer", "user:nobody")
    code, out = cli_as_user("gc", open_store)
    assert code == 0, out
    assert run_cli_checked("ls", open_store, "vision/r").stdout.decode().split() == ["v2"]
    code, out = cli_as_user("export", open_store, "vision/r/v2", dest)
    assert code == 0, out
    sums = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=dest, capture_output=True)
    assert sums.returncode == 0, sums.stdout


def test_status_of_a_store_lists_only_the_inbox_of_readable_projects(open_store):
    """`ckptfs status STORE` with no daemon lists what waits in the inbox: a user sees the
    runs of the projects they may read, as in the mount's stats.json, not the others."""
    for project in ("vision", "nlp"):
        spooled = os.path.join(open_store, "spool", "inbox", project, "r", "v2", "model.bin")
        os.makedirs(os.path.dirname(spooled))
        with open(spooled, "wb") as f:
            f.write(b"weights")
    subprocess.run(["chmod", "-R", "a+rwX", open_store], check=True)
    code, out = cli_as_user("status", open_store)
    assert code == 0 and "vision/r/v2" in out and "nlp" not in out
    assert "nlp/r/v2" in run_cli_checked("status", open_store).stdout.decode()  # root: both
