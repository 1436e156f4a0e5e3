"""Access control (issue 6): roles per project, enforced by the mount daemon and the CLI,
refusals journaled. The mount tests share one store made with `init --shared` by root and
mounted with --allow-other; other users are existing accounts (nobody 65534, group
users 100, daemon 1), reached with `setpriv` (real tools) or a forked child that drops
its ids (the CLI: the interpreter under /root is out of their reach). The machine's user
database is not changed."""
import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

import pytest

# Imported lazily by the CLI (export, find's queries, progress bars): the forked child of
# `cli_as_user`, as nobody, cannot read Python's own files under /root, so they are
# imported here first.
import ckptfs.meta.export  # noqa: F401,E402
import ckptfs.meta.query  # noqa: F401
import tqdm  # noqa: F401,E402
from ckptfs.store import AccessDeniedError, AccessError, NotFoundError, Store
from ckptfs.store.access import process_actor, request_actor
from conftest import run_cli_checked, unmount, wait_for
from samples import make_checkpoint

NOBODY = 65534
USERS_GROUP = 100

pytestmark = pytest.mark.skipif(shutil.which("setpriv") is None or os.getuid() != 0,
                                reason="needs root and setpriv (util-linux)")


def as_user(*command, uid=NOBODY, gid=NOBODY, groups=(), check=False):
    """Run a real command as another user (setpriv), from / (which they can enter)."""
    group_args = [f"--groups={','.join(map(str, groups))}"] if groups else ["--clear-groups"]
    proc = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={gid}", *group_args,
                           *map(str, command)], capture_output=True, text=True, cwd="/")
    if check:
        assert proc.returncode == 0, f"{command} as uid {uid}: {proc.stderr}"
    return proc


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


def journal(store_path: str) -> list[dict]:
    with Store.open(store_path) as s:
        return list(s.journal_entries())


def refusals(store_path: str, uid=NOBODY, **fields) -> list[dict]:
    return [e for e in journal(store_path) if e["type"] == "access.refused" and e["uid"] == uid
            and all(e.get(k) == v for k, v in fields.items())]



def public_dir() -> str:
    """A directory other users can enter (pytest's tmp_path lives under a 0700 one)."""
    path = tempfile.mkdtemp(prefix="ckptfs-access-", dir="/tmp")
    os.chmod(path, 0o755)
    return path


def readable_checkpoint(path, step) -> str:
    src = make_checkpoint(path, step=step)
    subprocess.run(["chmod", "-R", "a+rX", src], check=True)  # config.json is 0640
    return src


# -- the engine -------------------------------------------------------------------------------
def test_roles_come_from_user_and_group_grants_on_the_project_or_star(store):
    nobody = {"uid": NOBODY, "gids": [NOBODY], "pid": 1}
    in_users = {"uid": NOBODY, "gids": [NOBODY, USERS_GROUP], "pid": 1}
    assert store.access_grants() == {"*": {"user:root": "admin"}}  # the creator, journaled
    assert store.role_of(nobody, "vision") is None
    store.grant("vision", "user:nobody", "reader")
    store.grant("vision", "group:100", "writer")           # a number with a name: by name
    store.grant("*", f"user:{NOBODY}", "reader")
    assert store.access_grants()["vision"] == {"user:nobody": "reader", "group:users": "writer"}
    assert store.role_of(nobody, "vision") == "reader"
    assert store.role_of(in_users, "vision") == "writer"   # the highest of all its grants
    assert store.role_of(nobody, "nlp") == "reader"        # through "*"
    assert store.role_of(in_users, "*") == "reader"        # "*" counts only grants on "*"
    store.grant("vision", "user:4242424", "maintainer")    # an id without a name stays a number
    assert store.role_of({"uid": 4242424, "gids": [], "pid": 1}, "vision") == "maintainer"
    with pytest.raises(AccessError, match="no user named 'no-such-user-x'"):
        store.grant("vision", "user:no-such-user-x", "reader")
    with pytest.raises(AccessError, match="unknown role 'owner'"):
        store.grant("vision", "user:nobody", "owner")
    with pytest.raises(AccessError, match="not a principal"):
        store.grant("vision", "nobody", "reader")
    with pytest.raises(NotFoundError, match="has no grant on project nlp"):
        store.revoke("nlp", "user:nobody")
    store.revoke("vision", "user:nobody")
    assert store.role_of(nobody, "vision") == "reader"     # still through "*"
    # Derived, rebuilt from the journal like the rest of the catalog.
    before = store.access_grants()
    store.rebuild_index()
    assert store.access_grants() == before


def test_the_last_admin_stays_and_enforcement_cannot_lock_its_switcher_out(store):
    with pytest.raises(AccessError, match="user:root is the last admin of every project"):
        store.revoke("*", "user:root")
    with pytest.raises(AccessError, match="last admin"):
        store.grant("*", "user:root", "reader")
    store.grant("*", "user:daemon", "admin")
    store.revoke("*", "user:root")                         # another admin remains
    assert not store.enforcing()
    with pytest.raises(AccessError, match="would lock you out"):
        store.set_enforcement(True)                        # root is no admin any more
    store.grant("*", "user:root", "admin")                 # not enforced: anyone may
    assert store.set_enforcement(True)["enabled"] is True
    assert store.set_enforcement(True) is None             # no change, no entry


def test_a_refusal_is_an_eacces_error_logged_and_journaled_once_a_minute(store):
    nobody = {"uid": NOBODY, "gids": [NOBODY], "pid": 4321}
    store.authorize(nobody, "vision", "admin", "delete versions")   # not enforced: allowed
    store.grant("vision", "user:nobody", "reader")
    store.set_enforcement(True)
    for _ in range(3):  # a script looping on a refused call
        with pytest.raises(AccessDeniedError) as refused:
            store.authorize(nobody, "vision", "writer", "archive versions", "vision/r/v1")
    assert refused.value.errno == errno.EACCES
    assert str(refused.value) == (
        "user nobody (uid 65534) may not archive versions in project vision: needs role "
        f"writer, has reader; ask an admin: ckptfs access grant {store.path} vision writer "
        "user:nobody")
    with pytest.raises(AccessDeniedError, match="has no role"):
        store.authorize(nobody, "nlp", "reader", "read")
    found = [e for e in store.journal_entries() if e["type"] == "access.refused"]
    assert [(e["operation"], e["project"], e["path"], e["role"], e["uid"], e["user"], e["pid"])
            for e in found] == [("archive versions", "vision", "vision/r/v1", "writer", NOBODY,
                                 "nobody", 4321), ("read", "nlp", None, "reader", NOBODY,
                                                   "nobody", 4321)]
    store.authorize(nobody, "vision", "reader", "read")
    store.authorize(None, "vision", "admin", "delete versions")  # root: admin on "*"


def test_the_catalog_changes_check_the_role(store, checkpoint):
    store.import_directory(checkpoint, "vision", "r", "v1")
    reader = {"uid": NOBODY, "gids": [NOBODY], "pid": 1}
    store.grant("vision", "user:nobody", "reader")
    store.set_enforcement(True)
    for change in (lambda: store.set_alias("vision", "r", "prod", "v1", reader),
                   lambda: store.update_project_settings("vision", {"mode": "max"}, actor=reader),
                   lambda: store.set_project_schema("vision", {"type": "object"}, reader)):
        with pytest.raises(AccessDeniedError, match="needs role maintainer, has reader"):
            change()
    store.set_alias("vision", "r", "prod", "v1")           # root, admin
    with pytest.raises(AccessDeniedError):
        store.remove_alias("vision", "r", "prod", reader)
    assert store.aliases("vision", "r")["prod"] == "v1"


def test_request_actor_takes_the_groups_of_the_calling_process_only_if_it_is_theirs():
    me = request_actor(os.getuid(), os.getgid(), os.getpid())
    assert set(me["gids"]) == {os.getgid(), *os.getgroups()}
    assert me == {**process_actor(), "gids": me["gids"]}
    # A pid that is not nobody's (reused, or lying): the groups of the user database.
    other = request_actor(NOBODY, NOBODY, os.getpid())
    assert other["gids"] == [NOBODY]
    gone = request_actor(1, 1, 2 ** 22 + 12345)
    assert 1 in gone["gids"]


# -- the CLI ------------------------------------------------------------------------------------
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


@pytest.fixture
def open_store(tmp_path):
    """A store whose files everyone may read and write (how several users share one for
    the CLI, docs/access.md), enforced, with two projects; nobody reads `vision`."""
    base = public_dir()
    store = os.path.join(base, "open")
    with Store.init(store) as s:
        s.import_directory(make_checkpoint(tmp_path / "a", step=1), "vision", "r", "v1")
        s.import_directory(make_checkpoint(tmp_path / "b", step=2), "nlp", "r", "v1")
        s.grant("vision", "user:nobody", "reader")
        s.set_enforcement(True)
    subprocess.run(["chmod", "-R", "a+rwX", store], check=True)
    yield store
    shutil.rmtree(base, ignore_errors=True)


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


# -- the mount ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shared():
    """Root's `init --shared` store with vision/r/v1 and nlp/r/v1, mounted --allow-other
    in a directory other users can enter. Yields (store, mountpoint, source dir)."""
    if not os.path.exists("/dev/fuse"):
        pytest.skip("/dev/fuse is missing")
    base = public_dir()
    store, mnt = os.path.join(base, "store"), os.path.join(base, "mnt")
    os.mkdir(mnt)
    os.chmod(mnt, 0o755)
    run_cli_checked("init", "--shared", store)
    src = readable_checkpoint(os.path.join(base, "src", "v2"), step=2)
    with Store.open(store) as s:
        for project in ("vision", "nlp"):
            s.import_directory(make_checkpoint(os.path.join(base, project, "v1"), step=1),
                               project, "r", "v1")
    run_cli_checked("mount", store, mnt, "--allow-other", "--seal-after", "0.3")
    try:
        yield store, mnt, src
    finally:
        unmount(mnt)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def mounted(shared):
    """The shared mount with nobody's and group users' grants cleared before the test."""
    store = shared[0]
    with Store.open(store) as s:
        for project, grants in s.access_grants().items():
            for principal in grants:
                if principal != "user:root":
                    s.revoke(project, principal)
    return shared


def grant(store, project, role, principal="user:nobody"):
    with Store.open(store) as s:
        s.grant(project, principal, role)


def test_without_a_grant_a_user_sees_no_project_and_is_refused(mounted):
    store, mnt, _ = mounted
    config = os.path.join(mnt, "projects", "vision", "r", "v1", "config.json")
    os.stat(config)  # root looks first: the kernel caches what it was told, for everyone
    assert os.listdir(os.path.join(mnt, "projects")) == ["nlp", "vision"]
    listing = as_user("ls", "-A", os.path.join(mnt, "projects"), check=True)
    assert listing.stdout == ""
    assert as_user("ls", "-A", os.path.join(mnt, "inbox"), check=True).stdout == ""
    for command in (["cat", config], ["stat", config], ["ls", os.path.dirname(config)],
                    ["ls", os.path.join(mnt, "projects", "nlp")]):
        refused = as_user(*command)
        assert refused.returncode != 0 and "Permission denied" in refused.stderr, command
    missing = as_user("ls", os.path.join(mnt, "projects", "no-such-project"))
    assert "No such file or directory" in missing.stderr
    assert refusals(store, project="vision", operation="read", role="reader")
    assert refusals(store, project="nlp", operation="read")


def test_a_reader_reads_but_cannot_archive(mounted):
    store, mnt, src = mounted
    grant(store, "vision", "reader")
    assert as_user("ls", os.path.join(mnt, "projects"), check=True).stdout.split() == ["vision"]
    model = os.path.join(mnt, "projects", "vision", "r", "v1", "model.safetensors")
    theirs = as_user("sha256sum", model, check=True).stdout.split()[0]
    assert theirs == subprocess.run(["sha256sum", model], capture_output=True,
                                    text=True).stdout.split()[0]
    assert as_user("cat", os.path.join(mnt, "projects", "vision", "r", "v1.json"),
                   check=True).stdout.startswith("{")
    os.makedirs(os.path.join(mnt, "inbox", "vision", "reader-run"))  # root (admin) may
    copy = as_user("cp", "-r", src, os.path.join(mnt, "inbox", "vision", "reader-run", "v2"))
    assert copy.returncode != 0 and "Permission denied" in copy.stderr
    made = as_user("mkdir", "-p", os.path.join(mnt, "inbox", "vision", "other-run"))
    assert made.returncode != 0 and "Permission denied" in made.stderr
    assert os.listdir(os.path.join(store, "spool", "inbox", "vision", "reader-run")) == []
    os.rmdir(os.path.join(mnt, "inbox", "vision", "reader-run"))
    assert refusals(store, project="vision", operation="archive versions", role="writer")


def test_a_writer_archives_and_the_seal_names_them(mounted):
    store, mnt, src = mounted
    grant(store, "vision", "writer")
    as_user("mkdir", "-p", os.path.join(mnt, "inbox", "vision", "new-run"), check=True)
    spooled = os.path.join(store, "spool", "inbox", "vision", "new-run")
    assert os.stat(spooled).st_uid == NOBODY  # the daemon runs as root: chowned to the writer
    as_user("cp", "-r", src, os.path.join(mnt, "inbox", "vision", "r", "v2"), check=True)
    sealed = os.path.join(mnt, "projects", "vision", "r", "v2", "config.json")
    wait_for(lambda: os.path.exists(sealed), what="the seal of vision/r/v2")
    entry = [e for e in journal(store) if e["type"] == "version.sealed" and e["version"] == "v2"]
    assert [(e["project"], e["uid"], e["user"]) for e in entry] == [("vision", NOBODY, "nobody")]
    with open(os.path.join(src, "config.json")) as f:
        assert as_user("cat", sealed, check=True).stdout == f.read()


def test_moving_an_alias_needs_maintainer(mounted):
    store, mnt, _ = mounted
    alias = os.path.join(mnt, "projects", "vision", "r", "production")
    grant(store, "vision", "writer")
    refused = as_user("ln", "-sfn", "v1", alias)
    assert refused.returncode != 0 and "Permission denied" in refused.stderr
    assert not os.path.lexists(alias)
    grant(store, "vision", "maintainer")
    as_user("ln", "-sfn", "v1", alias, check=True)
    assert os.readlink(alias) == "v1"
    moved = [e for e in journal(store) if e["type"] == "alias.set" and e["alias"] == "production"]
    assert moved[-1]["uid"] == NOBODY
    assert refusals(store, project="vision", operation="set or move aliases", role="maintainer")
    grant(store, "vision", "writer")
    removed = as_user("rm", alias)
    assert removed.returncode != 0 and "Permission denied" in removed.stderr
    os.unlink(alias)  # root is admin


def test_a_group_grant_counts_for_its_members(mounted):
    store, mnt, _ = mounted
    grant(store, "nlp", "reader", "group:users")
    config = os.path.join(mnt, "projects", "nlp", "r", "v1", "config.json")
    in_group = as_user("cat", config, groups=[USERS_GROUP])
    assert in_group.returncode == 0 and "bert" in in_group.stdout
    assert "Permission denied" in as_user("cat", config).stderr
    assert as_user("ls", os.path.join(mnt, "projects"),
                   groups=[USERS_GROUP]).stdout.split() == ["nlp"]


def test_a_revoke_takes_effect_on_the_running_mount_at_once(mounted):
    store, mnt, _ = mounted
    grant(store, "vision", "reader")
    config = os.path.join(mnt, "projects", "vision", "r", "v1", "config.json")
    as_user("cat", config, check=True)  # every cache warm for this path
    run_cli_checked("access", "revoke", store, "vision", "user:nobody")
    assert "Permission denied" in as_user("cat", config).stderr
    assert "Permission denied" in as_user("stat", config).stderr
    assert as_user("ls", "-A", os.path.join(mnt, "projects"), check=True).stdout == ""


def test_a_revoke_reaches_a_process_already_inside_the_project(mounted):
    """Its working directory is inside: relative paths never pass projects/<p> again, and
    the kernel has the names below cached for an hour. open() is always asked."""
    store, mnt, _ = mounted
    grant(store, "vision", "reader")
    inside = subprocess.Popen(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "sh", "-c",
         "cd \"$1\" && cat config.json >/dev/null && echo in && read go && cat config.json",
         "sh", os.path.join(mnt, "projects", "vision", "r", "v1")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert inside.stdout.readline() == "in\n"
        with Store.open(store) as s:
            s.revoke("vision", "user:nobody")
        _, err = inside.communicate("go\n", timeout=20)
    finally:
        inside.kill()
    assert inside.returncode != 0 and "Permission denied" in err


def test_audit_jsonl_shows_a_user_only_the_projects_they_read(mounted):
    store, mnt, _ = mounted
    grant(store, "nlp", "reader")
    view = os.path.join(mnt, ".ckptfs", "audit.jsonl")
    theirs = as_user("cat", view, check=True).stdout
    entries = [json.loads(line) for line in theirs.splitlines()]
    assert entries and {e["project"] for e in entries} == {"nlp"}
    assert {"version.sealed", "access.granted"} <= {e["type"] for e in entries}
    assert as_user("stat", "-c", "%s", view, check=True).stdout.strip() == str(len(theirs))
    with open(view, "rb") as f, open(os.path.join(store, "journal", "journal.jsonl"), "rb") as g:
        assert f.read() == g.read()  # root, admin of every project: the journal itself
    greps = as_user("grep", "-c", '"project":"vision"', view)
    assert greps.stdout.strip() == "0"


def test_root_is_not_special_without_a_grant(tmp_path, mount):
    """Root made this store, then handed it to another admin: it is refused like anyone."""
    store = str(tmp_path / "store")
    with Store.init(store, shared=True) as s:
        s.import_directory(make_checkpoint(tmp_path / "v1", step=1), "vision", "r", "v1")
        s.grant("*", "user:daemon", "admin")
        s.revoke("*", "user:root")
    mnt = mount(store, "--allow-other")
    assert os.listdir(os.path.join(mnt, "projects")) == []
    with pytest.raises(PermissionError):
        open(os.path.join(mnt, "projects", "vision", "r", "v1", "config.json"))
    tag = run_cli_checked("tag", store, "vision/r/v1", "production", rc=1)
    assert "user root (uid 0) may not set or move aliases in project vision: needs role " \
           "maintainer, has no role" in tag.stderr.decode()
    grant_back = run_cli_checked("access", "grant", store, "*", "admin", "user:root", rc=1)
    assert "may not change access in every project (*)" in grant_back.stderr.decode()
    assert {(e["project"], e["operation"]) for e in refusals(store, uid=0)} >= {
        ("vision", "read"), ("vision", "set or move aliases"), ("*", "change access")}
