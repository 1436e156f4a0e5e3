"""Access control: which Unix users and groups may do what in which project.

Roles, lowest first: reader (list, read, sidecars) < writer (reader + archive) <
maintainer (writer + aliases, settings, schema, retention) < admin (everything, access
changes). A grant gives one role on one project, or on every project (`*`), to a
principal: "user:NAME", "group:NAME", or "user:UID" / "group:GID" for an id without a
name. A caller's role on a project is the highest of the grants to its user (by name or
uid) and to any of its groups (all of them, supplementary ones included), on that
project or on `*`. Root is not special: it has the roles granted to it, like anyone.

Grants and the enforcement switch are journal events (`access.granted`,
`access.revoked`, `access.enforcement`) applied to the index's `settings` database, so
`rebuild-index` restores them. A store made by `ckptfs init` enforces nothing (one user,
nothing to protect from); its creator is granted admin on `*` all the same, so that
`ckptfs access enforce STORE on` (or `init --shared`) has an admin to start from.

Refusals are logged and journaled (`access.refused`). A script looping on a refused call
must not flood the journal: the same (uid, operation, project) is journaled at most once
a minute by one process (the mount daemon); the log gets every refusal.

No FUSE here: the daemon builds actors for its requests with `request_actor`.
"""
import grp
import logging
import os
import pwd
import threading
import time

from .errors import AccessDeniedError, AccessError, NotFoundError
from .events import access_enforcement, access_granted, access_refused, access_revoked
from .names import ALL_PROJECTS, check_project
from .users import NAMES_TTL
from .users import group_name as group_of
from .users import user_name as user_of

log = logging.getLogger("ckptfs.access")
log.addHandler(logging.NullHandler())  # the CLI prints the error itself: no stray stderr line

ROLES = ("reader", "writer", "maintainer", "admin")
RANKS = {role: rank for rank, role in enumerate(ROLES, 1)}
ALL = ALL_PROJECTS
REFUSAL_JOURNAL_INTERVAL = 60.0   # seconds between journal entries of the same refusal
GROUPS_TTL = 1.0                  # how long the groups of a requesting pid are trusted


def role_rank(role: str | None) -> int:
    """0 for no role, then 1 (reader) to 4 (admin)."""
    return RANKS.get(role, 0)


def check_role(role: str) -> str:
    if role not in ROLES:
        raise AccessError(f"unknown role {role!r}; roles, lowest first: {', '.join(ROLES)}")
    return role


def parse_principal(text: str, must_exist: bool = True) -> str:
    """The canonical form of "user:NAME", "group:NAME", "user:UID" or "group:GID": by
    name when the id has one, by number otherwise. An unknown name is an error (with
    `must_exist` False, e.g. to revoke a grant of a deleted account, it is kept as given)."""
    kind, sep, who = (text or "").partition(":")
    if not sep or kind not in ("user", "group") or not who:
        raise AccessError(f"{text!r} is not a principal: expected user:NAME or group:NAME "
                          "(or user:UID, group:GID)")
    by_id = pwd.getpwuid if kind == "user" else grp.getgrgid
    by_name = pwd.getpwnam if kind == "user" else grp.getgrnam
    if who.isdigit():
        try:
            return f"{kind}:{by_id(int(who))[0]}"
        except (KeyError, OverflowError):
            return f"{kind}:{int(who)}"
    try:
        by_name(who)
    except KeyError:
        if not must_exist:
            return text
        database = "passwd" if kind == "user" else "group"
        raise AccessError(f"no {kind} named {who!r} on this machine (see `getent {database} "
                          f"{who}`); for an id without a name use {kind}:NUMBER") from None
    return text


def user_principal(uid: int) -> str:
    name = user_of(uid)
    return f"user:{name}" if name else f"user:{uid}"


# -- actors: who is asking ------------------------------------------------------------------
def process_actor() -> dict:
    """This process as an actor (the CLI's own): uid, all its groups, pid."""
    return {"uid": os.getuid(), "gids": sorted({os.getgid(), *os.getgroups()}),
            "pid": os.getpid()}


_request_groups: dict[tuple, tuple[float, list[int]]] = {}
_request_groups_lock = threading.Lock()


def request_actor(uid: int, gid: int, pid: int) -> dict:
    """The actor of a file-system request from (uid, gid, pid) as the kernel gives them.

    The kernel does not pass supplementary groups: they are read from
    /proc/<pid>/status, whose Uid/Gid lines must show the same (file-system) uid and gid,
    so a pid reused by another process cannot lend it its groups; failing that (the
    process is gone), the user's groups from the user database. Cached for GROUPS_TTL
    under (pid, uid, gid): many requests come from one process in a burst."""
    key = (pid, uid, gid)
    now = time.monotonic()
    hit = _request_groups.get(key)
    if hit is not None and hit[0] > now:
        gids = hit[1]
    else:
        gids = _groups_from_proc(pid, uid, gid)
        if gids is None:
            gids = _groups_from_user_db(uid, gid)
        with _request_groups_lock:
            if len(_request_groups) > 4096:
                _request_groups.clear()
            _request_groups[key] = (now + GROUPS_TTL, gids)
    return {"uid": uid, "gids": gids, "pid": pid}


def _groups_from_proc(pid: int, uid: int, gid: int) -> list[int] | None:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            status = f.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    try:
        uids, gids = fields["Uid"].split(), fields["Gid"].split()
        groups = [int(g) for g in fields.get("Groups", "").split()]
    except (KeyError, ValueError):
        return None
    # The fourth number is the file-system id, the one FUSE requests carry.
    if len(uids) < 4 or len(gids) < 4 or int(uids[3]) != uid or int(gids[3]) != gid:
        return None
    return sorted({gid, *groups})


def _groups_from_user_db(uid: int, gid: int) -> list[int]:
    name = user_of(uid)
    if name is None:
        return [gid]
    try:
        return sorted({gid, *os.getgrouplist(name, gid)})
    except OSError:
        return [gid]


_principals: dict[tuple, tuple[float, frozenset[str]]] = {}


def principals_of(actor: dict) -> frozenset[str]:
    """Every principal a grant may name to reach this actor (cached with the names)."""
    uid = actor["uid"]
    gids = actor.get("gids")
    if gids is None:  # an actor recorded for the journal only: its user's groups
        gids = _groups_from_user_db(uid, pwd_gid(uid))
    key = (uid, tuple(gids))
    now = time.monotonic()
    hit = _principals.get(key)
    if hit is not None and hit[0] > now:
        return hit[1]
    found = _principals_uncached(uid, gids)
    if len(_principals) > 4096:
        _principals.clear()
    _principals[key] = (now + NAMES_TTL, found)
    return found


def _principals_uncached(uid: int, gids) -> frozenset[str]:
    found = {f"user:{uid}"}
    if (name := user_of(uid)) is not None:
        found.add(f"user:{name}")
    for gid in gids:
        found.add(f"group:{gid}")
        if (name := group_of(gid)) is not None:
            found.add(f"group:{name}")
    return frozenset(found)


def pwd_gid(uid: int) -> int:
    try:
        return pwd.getpwuid(uid).pw_gid
    except KeyError:
        return -1


def describe_actor(actor: dict) -> str:
    """"user alice (uid 1001)", or "uid 1234" for a uid without a name."""
    name = user_of(actor["uid"])
    return f"user {name} (uid {actor['uid']})" if name else f"uid {actor['uid']}"


# -- the rules in force -------------------------------------------------------------------------
class AccessRules:
    """Grants and the enforcement switch as the index holds them at one journal seq."""

    def __init__(self, grants: dict[str, dict[str, str]], enforced: bool):
        self.grants = grants
        self.enforced = enforced

    def role_of(self, principals: frozenset[str], project: str) -> str | None:
        """The highest role granted to any of `principals` on `project` or on `*` (for
        project `*`: on `*` only)."""
        best = 0
        for scope in (project, ALL) if project != ALL else (ALL,):
            grants = self.grants.get(scope)
            if grants:
                for principal in principals:  # a handful: the user and its groups
                    role = grants.get(principal)
                    if role is not None:
                        best = max(best, RANKS.get(role, 0))
        return ROLES[best - 1] if best else None


class _RefusalLimiter:
    """Journal one refusal per (uid, operation, project) per REFUSAL_JOURNAL_INTERVAL."""

    def __init__(self):
        self._last: dict[tuple, float] = {}
        self._lock = threading.Lock()

    def due(self, key: tuple) -> bool:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < REFUSAL_JOURNAL_INTERVAL:
                return False
            if len(self._last) > 10_000:
                self._last = {k: t for k, t in self._last.items()
                              if now - t < REFUSAL_JOURNAL_INTERVAL}
            self._last[key] = now
            return True


class AccessControl:
    """Who may do what: the rules in force (read from the index), checks, refusals
    (journaled through the committer), and changes to the rules. `store_path` names
    the store in the commands its messages suggest."""

    def __init__(self, index, committer, store_path: str):
        self.index = index
        self.committer = committer
        self.path = store_path
        self._access_cache: tuple[int, AccessRules] | None = None
        self._refusal_limiter = _RefusalLimiter()

    # -- reading the rules ----------------------------------------------------------------
    def access_rules(self) -> AccessRules:
        """The rules in force, re-read only when the journal moved on (a grant made by
        another process, e.g. the CLI beside a mount, counts at once)."""
        seq = self.committer.applied_seq()
        cached = self._access_cache
        if cached is not None and cached[0] == seq:
            return cached[1]
        with self.index.read() as txn:
            grants = dict(self.index.iter_settings(txn, "access"))
            enforced = bool(self.index.get_setting(txn, ALL, "enforcement"))
        rules = AccessRules(grants, enforced)
        self._access_cache = (seq, rules)
        return rules

    def enforcing(self) -> bool:
        return self.access_rules().enforced

    def access_grants(self) -> dict[str, dict[str, str]]:
        """{project or "*": {principal: role}}."""
        return {p: dict(g) for p, g in self.access_rules().grants.items()}

    def role_of(self, actor: dict | None, project: str) -> str | None:
        """The actor's role on `project` (None: no role), enforced or not."""
        actor = actor or process_actor()
        return self.access_rules().role_of(principals_of(actor), project)

    def allowed(self, actor: dict | None, project: str, role: str,
                rules: AccessRules | None = None) -> bool:
        """May the actor do what needs `role` in `project`? Always, when not enforced."""
        rules = rules or self.access_rules()
        if not rules.enforced:
            return True
        return role_rank(rules.role_of(principals_of(actor or process_actor()), project)) \
            >= role_rank(role)

    def readable_projects(self, actor: dict | None, projects) -> list[str]:
        """The projects of `projects` the actor may read."""
        return [p for p in projects if self.allowed(actor, p, "reader")]

    def entry_visible(self, actor: dict | None, entry: dict) -> bool:
        """Whether the actor may see a journal entry (`ckptfs audit`, audit.jsonl): those of
        projects it can read; store-wide ones (no project, or `*`) with any role on `*`."""
        project = entry.get("project")
        if not isinstance(project, str) or not project:
            project = ALL
        return self.allowed(actor, project, "reader")

    # -- checking -----------------------------------------------------------------------------
    def check_access(self, actor: dict | None, project: str, role: str, operation: str,
                     path: str | None = None) -> AccessDeniedError | None:
        """None if allowed, else the error to raise (not yet logged nor journaled: see
        `record_refusal`). No I/O beyond an index read: cheap enough for every request."""
        check_role(role)
        rules = self.access_rules()
        if not rules.enforced:
            return None
        actor = actor or process_actor()
        if self.allowed(actor, project, role, rules):
            return None
        has = rules.role_of(principals_of(actor), project)
        where = f"in project {project}" if project != ALL else "in every project (*)"
        principal = user_principal(actor["uid"])
        scope = project if project != ALL else "'*'"
        message = (f"{describe_actor(actor)} may not {operation} {where}: needs role {role}, "
                   f"has {has or 'no role'}; ask an admin: ckptfs access grant {self.path} "
                   f"{scope} {role} {principal}")
        return AccessDeniedError(message, actor=actor, project=project, needed=role,
                                 operation=operation, path=path)

    def record_refusal(self, error: AccessDeniedError) -> None:
        """Log a refusal, and journal it unless the same one was journaled less than a
        minute ago. Blocking (fsync): the daemon runs it on a worker thread. A caller
        who cannot write the journal (a CLI user with read-only access to the store's
        files) is still refused: only the journal entry is lost, and logged."""
        actor = error.actor
        log.warning("access refused%s: %s", f" ({error.path})" if error.path else "", error)
        if not self._refusal_limiter.due((actor.get("uid"), error.operation, error.project)):
            return
        event = access_refused(error.operation, error.project, error.path, error.needed)
        try:
            self.committer.commit_event(lambda: event, actor)
        except Exception as e:  # noqa: BLE001  the refusal stands regardless
            log.warning("could not journal the refusal above: %s", e)

    def authorize(self, actor: dict | None, project: str, role: str,
                  operation: str = "do this", path: str | None = None) -> None:
        """Raise AccessDeniedError (errno EACCES, logged and journaled) unless enforcement
        is off or `actor` (None: this process) has at least `role` on `project` (`*`:
        on every project). One line for a command:

            store.authorize(None, project, "maintainer", "delete versions")
        """
        error = self.check_access(actor, project, role, operation, path)
        if error is not None:
            self.record_refusal(error)
            raise error

    # -- changing the rules -----------------------------------------------------------------------
    def grant(self, project: str, principal: str, role: str,
              actor: dict | None = None) -> dict | None:
        """Give `principal` `role` on `project` (`*`: every project), replacing the role it
        had there. Needs admin on that project when enforced. Returns the journal entry
        (None if it had that role already)."""
        check_project(project)
        check_role(role)
        principal = parse_principal(principal)
        self.authorize(actor, project, "admin", "change access")

        def event():
            previous = self.access_grants().get(project, {}).get(principal)
            if previous == role:
                return None
            if project == ALL and previous == "admin":
                self._keep_an_admin(principal)
            return access_granted(project, principal, role, previous)
        return self.committer.commit_event(event, actor)

    def revoke(self, project: str, principal: str, actor: dict | None = None) -> dict:
        """Take away the grant to `principal` on `project`. Needs admin on that project
        when enforced. Refused for the last admin of `*`."""
        check_project(project)
        principal = parse_principal(principal, must_exist=False)
        self.authorize(actor, project, "admin", "change access")

        def event():
            previous = self.access_grants().get(project, {}).get(principal)
            if previous is None:
                raise NotFoundError(f"{principal} has no grant on project {project} (see "
                                    f"ckptfs access show {self.path})")
            if project == ALL and previous == "admin":
                self._keep_an_admin(principal)
            return access_revoked(project, principal, previous)
        return self.committer.commit_event(event, actor)

    def set_enforcement(self, enabled: bool, actor: dict | None = None) -> dict | None:
        """Switch enforcement on or off (admin on `*` when enforced). Turning it on is
        refused unless the caller is an admin on `*`: it would lock them out."""
        actor = actor or process_actor()
        self.authorize(actor, ALL, "admin", "switch access enforcement")

        def event():
            rules = self.access_rules()
            if rules.enforced == enabled:
                return None
            if enabled and rules.role_of(principals_of(actor), ALL) != "admin":
                raise AccessError(
                    f"{describe_actor(actor)} is not an admin of every project (*): turning "
                    "enforcement on would lock you out of access changes; first: ckptfs "
                    f"access grant {self.path} '*' admin {user_principal(actor['uid'])}")
            return access_enforcement(enabled)
        return self.committer.commit_event(event, actor)

    def _keep_an_admin(self, principal: str):
        admins = [p for p, r in self.access_grants().get(ALL, {}).items() if r == "admin"]
        if admins == [principal]:
            raise AccessError(f"{principal} is the last admin of every project (*): grant "
                              f"admin on '*' to someone else first (ckptfs access grant "
                              f"{self.path} '*' admin user:NAME)")

    def start(self, shared: bool):
        """A new store: its creator becomes admin of every project; `shared` turns
        enforcement on."""
        creator = user_principal(os.getuid())
        self.committer.commit_event(lambda: access_granted(ALL, creator, "admin", None))
        if shared:
            self.committer.commit_event(lambda: access_enforcement(True))
