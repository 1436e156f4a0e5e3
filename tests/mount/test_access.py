"""Access control (issue 6): roles per project, enforced by the mount daemon and the CLI,
refusals journaled. The mount tests share one store made with `init --shared` by root and
mounted with --allow-other; other users are existing accounts (nobody 65534, group
users 100, daemon 1), reached with `setpriv` (real tools) or a forked child that drops
its ids (the CLI: the interpreter under /root is out of their reach). The machine's user
database is not changed."""
import json
import os
import shutil
import subprocess

import pytest
import tqdm  # noqa: F401,E402

# Imported lazily by the CLI (export, progress bars): the forked child of `cli_as_user`, as
# nobody, cannot read Python's own files under /root, so they are imported here first.
import ckptfs.meta.export  # noqa: F401,E402
from ckptfs.store import Store
from tests.helpers.access import (
    NOBODY,
    USERS_GROUP,
    grant,
    journal,
    public_dir,
    readable_checkpoint,
    refusals,
)
from tests.helpers.cli import run_cli_checked
from tests.helpers.mounts import unmount
from tests.helpers.samples import make_checkpoint
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.skipif(shutil.which("setpriv") is None or os.getuid() != 0,
                                reason="needs root and setpriv (util-linux)")


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


def as_user(*command, uid=NOBODY, gid=NOBODY, groups=(), check=False):
    """Run a real command as another user (setpriv), from / (which they can enter)."""
    group_args = [f"--groups={','.join(map(str, groups))}"] if groups else ["--clear-groups"]
    proc = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={gid}", *group_args,
                           *map(str, command)], capture_output=True, text=True, cwd="/")
    if check:
        assert proc.returncode == 0, f"{command} as uid {uid}: {proc.stderr}"
    return proc


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
