"""Following a store that other machines write (a shared backend: object storage).

Each machine's index learns what others commit only from the journal: the daemon asks
for new entries every `interval` seconds (`ckptfs mount --poll-interval`, default 2 s)
and applies them, so their versions appear in `projects/` and `ls`. The same poll
notices an object store that cannot be reached, and when it is back: `stats.json` and
`ckptfs status` say so, reads of what is cached go on, seals wait and retry.
"""
import logging
import time

import trio

from ckptfs.store import StoreError
from ckptfs.store.backend import BackendUnavailableError

log = logging.getLogger("ckptfs.fs")

DEFAULT_POLL_INTERVAL = 2.0


class JournalFollower:
    def __init__(self, store, interval: float = DEFAULT_POLL_INTERVAL):
        self.store = store
        self.interval = interval
        self.unreachable_since: float | None = None  # time.time() of the first failure
        self.problem: str | None = None
        self.last_poll: float | None = None           # time.time() of the last good poll

    async def run(self):
        """Until cancelled: poll, apply, sleep."""
        while True:
            await trio.to_thread.run_sync(self.poll)
            await trio.sleep(self.interval)

    def poll(self) -> None:
        try:
            self.store.committer.catch_up_if_behind(when_unreachable="raise")
        except BackendUnavailableError as e:
            if self.unreachable_since is None:
                self.unreachable_since = time.time()
                log.warning("the store cannot be reached: %s (cached data is still served; "
                            "seals wait)", e.strerror or e)
            self.problem = e.strerror or str(e)
            return
        except (StoreError, OSError) as e:
            self.problem = getattr(e, "strerror", None) or str(e)
            log.warning("following the journal failed: %s", e)
            return
        if self.unreachable_since is not None:
            log.info("the store can be reached again (after %.0f s)",
                     time.time() - self.unreachable_since)
        self.unreachable_since, self.problem = None, None
        self.last_poll = time.time()

    def status(self) -> dict:
        """For stats.json: where the store is and whether it answers."""
        return {"location": self.store.location, "reachable": self.unreachable_since is None,
                "unreachable_since": self.unreachable_since, "problem": self.problem,
                "last_poll": self.last_poll, "poll_interval": self.interval}
