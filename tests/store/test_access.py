"""Access control in the engine (issue 6): roles from user and group grants on a project
or `*`, the last admin kept, refusals as EACCES errors logged and journaled, catalog
changes checked. The mount: tests/mount/test_access.py; the CLI: tests/cli/test_access.py."""
import errno
import os
import shutil

import pytest

from ckptfs.store import AccessDeniedError, AccessError, NotFoundError
from tests.helpers.access import NOBODY, USERS_GROUP

pytestmark = pytest.mark.skipif(shutil.which("setpriv") is None or os.getuid() != 0,
                                reason="needs root and setpriv (util-linux)")


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
