"""`ckptfs seal` with no mount daemon running: the same sealer the daemon runs, here.

The rest of what `ckptfs seal` and `status` do (a request to a running daemon, its
outcome, what waits in the inbox) is the spool's protocol (ckptfs.spool.seal_requests)
and needs no daemon code. The sealer schedules on trio, so trio is imported by this
seal alone, never by `import ckptfs.fs.offline`; pyfuse3 never is (no file-system
calls: the inbox's state without the Inbox).
"""


def seal_offline(store, project: str, run: str, path: str) -> tuple[list[str], list[str]]:
    """Seal the unit at `path` of run p/r (every unit of the run for ""): (lines saying
    what was sealed, errors). The caller holds the spool's lock (ckptfs.spool.daemon)."""
    import trio

    from .inbox_state import InboxState
    from .sealer import Sealer
    state = InboxState(store)
    sealer = Sealer(state, seal_after=0.0)
    sealer.recover(crashed=False)
    keys = sealer.request((project, run), path)
    sealed, errors = [], []

    async def seal_all():
        for key in keys:
            before = sealer.counters["versions_sealed"]
            await sealer.seal(key)
            unit_state = sealer.units.get(key)
            if sealer.counters["versions_sealed"] > before:
                sealed.append(f"sealed {'/'.join(key[:3]).rstrip('/')}: {sealer.last_sealed}")
            elif unit_state is not None and unit_state.error:
                errors.append(unit_state.error)
    try:
        trio.run(seal_all)
    finally:
        sealer.close(daemon=False)
    return sealed, errors

