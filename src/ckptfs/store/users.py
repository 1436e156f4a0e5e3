"""Names of Unix users and groups: the one uid/gid -> name lookup of ckptfs.

The journal names who made each change, the seal who wrote a version, provenance the
owner of the writing process, access control the principals of a caller: all ask here.
A lookup is trusted for NAMES_TTL seconds (the user database rarely changes, and a
lookup per file-system request would cost more than the request).
"""
import grp
import pwd
import time

NAMES_TTL = 60.0   # how long a uid/gid -> name lookup is trusted
MAX_CACHED = 4096


class NameCache:
    """number -> name (None: no such id, or not a number), cached for NAMES_TTL."""

    def __init__(self, lookup):
        self._lookup = lookup
        self._names: dict[int, tuple[float, str | None]] = {}

    def __call__(self, number: int | None) -> str | None:
        now = time.monotonic()
        hit = self._names.get(number)
        if hit is not None and hit[0] > now:
            return hit[1]
        try:
            name = self._lookup(number)
        except (KeyError, OverflowError, TypeError):
            name = None
        if len(self._names) > MAX_CACHED:
            self._names.clear()
        self._names[number] = (now + NAMES_TTL, name)
        return name


user_name = NameCache(lambda uid: pwd.getpwuid(uid).pw_name)
group_name = NameCache(lambda gid: grp.getgrgid(gid).gr_name)
