"""`ckptfs serve`: the web dashboard of a store (ckptfs.web), served by waitress.

Read-only; on 127.0.0.1 unless told otherwise, and beyond loopback only with a token
(docs/web.md). Flask and waitress come with the `web` extra; without them the command
says how to install them, in one line.
"""
import ipaddress
import logging
import signal
import sys

import click

from ckptfs.cli._common import examples, fail, with_store

WEB_EXTRA = "pip install 'ckptfs[web]'"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_web_extra() -> None:
    try:
        import flask  # noqa: F401
        import waitress  # noqa: F401
    except ImportError as e:
        fail(f"ckptfs serve needs the web extra ({e.name} is not installed): {WEB_EXTRA}")


def stop_on_sigterm() -> None:
    """SIGTERM (a service manager's stop) ends the server as Ctrl-C does: the store is
    closed on the way out."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, interrupt)


def check_bind(bind: str, token: str | None) -> None:
    if not is_loopback(bind) and not token:
        fail(f"serving on {bind} (beyond this machine) needs --token TOKEN (or "
             "CKPTFS_WEB_TOKEN); behind a reverse proxy that authenticates, bind 127.0.0.1")


@click.command(epilog=examples(
    "ckptfs serve /data/ckpts                      # http://127.0.0.1:8080/",
    "ckptfs serve /data/ckpts --port 9000",
    "CKPTFS_WEB_TOKEN=$(openssl rand -hex 16) ckptfs serve /data/ckpts --bind 0.0.0.0"))
@click.argument("store")
@click.option("--bind", default="127.0.0.1", show_default=True, metavar="ADDRESS",
              help="The address to listen on; beyond loopback only with --token.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535),
              help="The port (0: any free one; the address is printed).")
@click.option("--token", envvar="CKPTFS_WEB_TOKEN", metavar="TOKEN",
              help="Every request must carry it: `Authorization: Bearer TOKEN`, or "
                   "`?token=TOKEN` once in a browser (then a cookie). Env CKPTFS_WEB_TOKEN "
                   "keeps it out of `ps`.")
@with_store("reader")  # over every project: shows only those the user may read
def serve(s, store, bind, port, token):
    """Serve the web dashboard of STORE: projects and runs, metric curves, the lineage
    graph, versions, diffs, storage, health, and /metrics for Prometheus (docs/web.md).
    Read-only; it shows what the user running it may read."""
    check_web_extra()
    check_bind(bind, token)
    from waitress import create_server

    from ckptfs.web.app import build_app
    app = build_app(s, store, token=token)
    logging.basicConfig(format="ckptfs serve: %(message)s", level=logging.WARNING)
    try:
        server = create_server(app, host=bind, port=port, threads=4, ident="ckptfs")
    except OSError as e:
        fail(f"cannot listen on {bind}:{port}: {e.strerror or e}")
    host = f"[{bind}]" if ":" in bind else bind
    click.echo(f"ckptfs dashboard of {s.location} on http://{host}:{server.effective_port}/"
               " (Ctrl-C stops it)")
    sys.stdout.flush()
    stop_on_sigterm()
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


COMMANDS = (serve,)
