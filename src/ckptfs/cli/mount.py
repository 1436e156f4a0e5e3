"""`ckptfs mount`, `umount`, `seal` and `status`: the mount daemon and the inbox's spool,
with or without a daemon (docs/mount.md). The daemon checks the role of every request
itself; `seal` checks writer on the project, here, before it hands the request over."""
from __future__ import annotations

import json
import os
import sys
import time
from typing import TYPE_CHECKING

import click

from ckptfs.cli._common import SECONDS, echo_json, examples, fail, json_option, open_store
from ckptfs.store.names import parse_version_ref
from ckptfs.store.private import make_private_dirs, private_opener

if TYPE_CHECKING:
    from ckptfs.store import Store


@click.command(epilog=examples(
    "ckptfs mount /data/ckpts /mnt/ckpts",
    "ckptfs mount /data/ckpts /mnt/ckpts --allow-other --seal-after 60"))
@click.argument("store")
@click.argument("mountpoint")
@click.option("-f", "--foreground", is_flag=True, help="Serve in the foreground (logs also to stderr).")
@click.option("--allow-other", is_flag=True, help="Let other users use the mount.")
@click.option("--seal-after", type=SECONDS, default=5.0, show_default=True, metavar="SECONDS",
              help="Quiet period after which an inbox version is sealed.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--poll-interval", type=SECONDS, default=2.0, show_default=True, metavar="SECONDS",
              help="On object storage: how often to look for versions other machines sealed.")
@click.option("--ready-fd", type=int, hidden=True)
def mount(store, mountpoint, foreground, allow_other, seal_after, log_level, poll_interval,
          ready_fd):
    """Mount STORE at MOUNTPOINT; returns once mounted and serves in the background."""
    from ckptfs.fs import mounts
    from ckptfs.spool import daemon as spool_daemon
    with open_store(store) as s:  # fail here, with a clear message, if it is not a store
        # Many machines write a shared store: only through conditional creates.
        problem = s.backend.probe_conditional_writes() if s.backend.shared else None
    if problem:
        fail(problem)
    if mounts.detach_dead_mount_of(store, mountpoint):
        click.echo(f"detached the dead mount at {mountpoint} (a previous daemon for this "
                   "store died; what it left in the inbox is held: see `ckptfs status`)")
    mounts.check_mountpoint(mountpoint)
    check_store_outside(store, mountpoint)
    spool_daemon.check_free(store)
    if foreground:
        # pyfuse3 and trio: only in the process that serves
        from ckptfs.fs import daemon
        # Started by a background `mount` (ready_fd): the log file only, since the
        # parent stops reading our stderr once the mount is up.
        log_path = daemon.setup_logging(store, log_level, foreground=ready_fd is None)
        try:
            daemon.serve(store, mountpoint, allow_other=allow_other, seal_after=seal_after,
                         ready_fd=ready_fd, poll_interval=poll_interval)
        except RuntimeError as e:  # pyfuse3.init: the kernel refused the mount
            fail(f"cannot mount {mountpoint}: {e} (see {log_path})")
        return
    start_background_mount(store, mountpoint, allow_other, seal_after, log_level, poll_interval)


def check_store_outside(store: str, mountpoint: str):
    """A mount over the store, or inside it, would hide the store's files from its own
    daemon, which would then wait on itself for ever."""
    from ckptfs.store.location import is_object_store
    if is_object_store(store):
        return
    store_path, mount_path = os.path.realpath(store), os.path.realpath(mountpoint)
    common = os.path.commonpath([store_path, mount_path])
    if common == mount_path:
        fail(f"cannot mount over {mountpoint}: the store {store} is inside it "
             "(choose a mount point outside the store's directory)")
    if common == store_path:
        fail(f"cannot mount at {mountpoint}: it is inside the store {store} "
             "(choose a mount point outside the store's directory)")


def start_background_mount(store, mountpoint, allow_other, seal_after, log_level, poll_interval):
    """Start `mount -f` in a new session and wait until it says the mount is up."""
    import subprocess
    read_end, write_end = os.pipe()
    args = [sys.executable, "-m", "ckptfs", "mount", "-f", store, mountpoint,
            "--seal-after", str(seal_after), "--log-level", log_level,
            "--poll-interval", str(poll_interval), "--ready-fd", str(write_end)]
    if allow_other:
        args.append("--allow-other")
    from ckptfs.store.location import local_dir_of
    log_path = os.path.join(local_dir_of(store), "logs", "mount.log")
    make_private_dirs(os.path.dirname(log_path))
    with open(os.devnull, "rb") as devnull, \
            open(log_path, "ab", opener=private_opener) as log_file:
        child = subprocess.Popen(args, stdin=devnull, stdout=log_file, stderr=subprocess.PIPE,
                                 pass_fds=(write_end,), start_new_session=True)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as ready:
        answer = ready.read(3)
    if answer == b"ok\n":
        child.stderr.close()
        click.echo(f"mounted {store} at {mountpoint} (daemon pid {child.pid}, log {log_path})")
        from ckptfs.fs.readahead import read_ahead_hint
        if hint := read_ahead_hint(mountpoint):  # the daemon could not raise it: not root
            click.echo(hint)
        return
    errors = child.stderr.read().decode(errors="replace").strip().splitlines()
    child.wait()
    fail(errors[-1].removeprefix("ckptfs: error: ") if errors else
         f"the mount daemon exited with status {child.returncode}; see {log_path}")


@click.command(epilog=examples("ckptfs umount /mnt/ckpts"))
@click.argument("mountpoint")
def umount(mountpoint):
    """Unmount a ckptfs mount (the daemon finishes in-flight work and exits); a mount
    left dead by a daemon that died is detached."""
    import subprocess
    from ckptfs.fs import mounts
    if mounts.is_dead(mountpoint):
        store = getattr(mounts.entry_at(mountpoint), "store", None)
        why = mounts.detach(mountpoint)
        if why:
            fail(f"cannot detach the dead mount at {mountpoint}: {why}")
        click.echo(f"detached the dead mount at {mountpoint} (its daemon had died)"
                   + (f"; mount {store} again to go on" if store else ""))
        return
    if not os.path.ismount(mountpoint):
        fail(f"{mountpoint} is not mounted")
    proc = subprocess.run(["fusermount3", "-u", mountpoint], capture_output=True, text=True)
    if proc.returncode != 0:
        fail(f"cannot unmount {mountpoint}: {proc.stderr.strip() or 'fusermount3 failed'}")
    click.echo(f"unmounted {mountpoint}")


def serving_daemon(store: str) -> dict | None:
    """What the mount daemon serving STORE recorded (pid, mountpoint), if one runs: the
    holder of its lock (a pid file could name a pid the system has given to another)."""
    from ckptfs.spool import daemon as spool_daemon
    return spool_daemon.serving(store)


@click.command(epilog=examples(
    "ckptfs seal /data/ckpts bert/run-42",
    "ckptfs seal /data/ckpts bert/run-42/checkpoint-500"))
@click.argument("store")
@click.argument("ref", metavar="PROJECT/RUN[/PATH]")
@click.option("--timeout", type=SECONDS, default=3600, show_default=True, metavar="SECONDS",
              help="How long to wait for a running mount daemon to seal it.")
def seal(store, ref, timeout):
    """Seal what waits in the inbox now: the unit at PATH in the run directory (a
    checkpoint directory or file, a folder), or every unit of the run. Through the
    mount daemon when one runs; else here."""
    project, run, path = parse_inbox_ref(ref)
    with open_store(store) as s:
        s.authorize(None, project, "writer", "seal versions", ref)
        from ckptfs.spool import daemon as spool_daemon
        from ckptfs.spool.seal_requests import nothing_waits
        why = nothing_waits(s, project, run, path)
        if why and not path:  # a whole run: nothing left to seal is what was asked
            click.echo(f"{why}: everything written there is sealed")
            return
        if why:
            fail(why)
        lock, holder = spool_daemon.try_acquire(s.path, spool_daemon.SEAL)
        if lock is not None:  # no daemon, and none starts meanwhile: the same seal, here
            with lock:
                seal_here(s, project, run, path, ref)
            return
        if holder.get("role") != spool_daemon.DAEMON:
            fail(spool_daemon.busy_message(store, holder))
        start_seq = s.applied_seq()
    # A daemon serves this store: hand it the request and wait for the outcome.
    from ckptfs.spool.seal_requests import request_seal, wait_for_seal
    request_seal(store, project, run, path)
    outcome = wait_for_seal(store, project, run, path, start_seq, timeout)
    if outcome.startswith("sealed"):
        click.echo(outcome)
    else:
        fail(outcome)


def seal_here(s: Store, project: str, run: str, path: str, ref: str):
    from ckptfs.fs.offline import seal_offline
    sealed, errors = seal_offline(s, project, run, path)
    for line in sealed:
        click.echo(line)
    if errors:
        fail(errors[0])
    if not sealed:
        fail(f"nothing of {ref} waits in the inbox")


def parse_inbox_ref(ref: str) -> tuple[str, str, str]:
    """PROJECT/RUN[/PATH]: a run of the inbox, and a path in its directory ("" for all)."""
    pieces = ref.strip("/").split("/")
    if len(pieces) < 2:
        fail(f"expected PROJECT/RUN[/PATH], got {ref!r}")
    project, run = parse_version_ref("/".join(pieces[:2]), parts=2)
    return project, run, "/".join(pieces[2:])


def store_status_line(store: str) -> str:
    from ckptfs.spool import daemon as spool_daemon
    serving = serving_daemon(store)
    if serving:
        return (f"store {store}: mounted at {serving.get('mountpoint')} by daemon pid "
                f"{serving.get('pid')}")
    if spool_daemon.last_daemon_died(store):
        return (f"store {store}: not mounted; its last daemon died (what it left in the "
                "inbox is held until written again or sealed with `ckptfs seal`)")
    return f"store {store}: not mounted"


def store_reachability_line(store: dict) -> str:
    """What `status` says of the store the mount serves (stats.json's `store`)."""
    where = store.get("location", "the store")
    if store.get("reachable", True):
        return f"store {where}: reachable"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(store["unreachable_since"]))
    return (f"store {where}: UNREACHABLE since {since} ({store.get('problem')}); cached data "
            "is still served, seals wait and retry, the inbox keeps everything")


@click.command(epilog=examples(
    "ckptfs status /mnt/ckpts",
    "ckptfs status /data/ckpts",
    "ckptfs status /mnt/ckpts --json | jq .pending_inbox_versions"))
@click.argument("target", metavar="MOUNTPOINT|STORE")
@json_option('the status: {"mounted", "pending_inbox_versions", …} (docs/cli.md)')
def status(target, as_json):
    """Pending inbox units, ingest progress and counters."""
    from ckptfs.fs import mounts
    if mounts.is_dead(target):
        store = getattr(mounts.entry_at(target), "store", None) or "STORE"
        fail(f"{target}: the mount daemon died; recover with `ckptfs umount {target}` then "
             f"`ckptfs mount {store} {target}` (units it left wait, held, in the inbox)")
    stats_path = os.path.join(target, ".ckptfs", "stats.json")
    if os.path.isfile(stats_path):
        with open(stats_path) as f:
            st = json.load(f)
        if as_json:
            return echo_json({"mountpoint": target, "mounted": True,
                              "pending_inbox_versions": st["pending_inbox_versions"], "stats": st})
        click.echo(f"mounted: {st['versions']} versions, {st['versions_sealed']} sealed since "
                   f"mount, {st['seal_failures']} seal failures, {st['read_errors']} read errors")
        if "poll_interval" in (st.get("store") or {}):  # a store other machines write
            click.echo(store_reachability_line(st["store"]))
        pending = st["pending_inbox_versions"]
    else:
        from ckptfs.spool.seal_requests import spooled_units
        with open_store(target) as s:
            pending = spooled_units(s)
        if as_json:
            return echo_json(store_status(target, pending))
        click.echo(store_status_line(target))
        for dead in mounts.dead_mounts_of(target):
            click.echo(f"a dead mount of it is left at {dead}: run `ckptfs umount {dead}`")
    if not pending:
        click.echo("nothing waits in the inbox")
    for item in pending:
        age = f", {item['age_seconds']:.0f} s" if item.get("age_seconds") is not None else ""
        kind = f" [{item['kind']}]" if item.get("kind") and item["kind"] != "checkpoint" else ""
        line = f"  {item['version']}{kind}: {item['state']}{age}"
        click.echo(line + (f" ({item['error']})" if item.get("error") else ""))


def store_status(store: str, pending: list[dict]) -> dict:
    """`status STORE --json`: what store_status_line and the dead mounts say, as fields."""
    from ckptfs.fs import mounts
    from ckptfs.spool import daemon as spool_daemon
    serving = serving_daemon(store) or {}
    return {"store": store, "mounted": bool(serving), "mountpoint": serving.get("mountpoint"),
            "daemon_pid": serving.get("pid"),
            "last_daemon_died": not serving and spool_daemon.last_daemon_died(store),
            "dead_mounts": mounts.dead_mounts_of(store), "pending_inbox_versions": pending}


COMMANDS = (mount, umount, seal, status)
