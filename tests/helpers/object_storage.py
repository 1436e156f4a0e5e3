"""Many machines on one store on object storage, as the tests play them on one host: each
"machine" is a cache directory of its own (`ckptfs --cache-dir`), the store is a prefix
in a bucket of the real S3 server (tests/helpers/s3.py), and the bucket is looked at
directly with boto3 to see which objects a writer left behind."""
import os
import sys
import socket
import threading

from tests.helpers.cli import run_cli_checked
from tests.helpers.mounts import unmount


class Machine:
    """One machine of a store on object storage: the store's URL and this machine's cache
    directory; `ckptfs(...)` runs a command as this machine does."""

    def __init__(self, url: str, cache_dir: str):
        self.url, self.cache_dir = url, str(cache_dir)

    def ckptfs(self, command: str, *args, rc=0, **kw):
        """`ckptfs --cache-dir CACHE COMMAND STORE ARGS…` (checked: no traceback); COMMAND
        may be two words (`audit verify`)."""
        return run_cli_checked("--cache-dir", self.cache_dir, *command.split(), self.url, *args,
                               rc=rc, **kw)

    def out(self, command: str, *args, **kw) -> str:
        return self.ckptfs(command, *args, **kw).stdout.decode()

    def command_line(self, command: str, *args) -> list[str]:
        """The same command as an argv, for a process the test starts itself."""
        return [sys.executable, "-m", "ckptfs", "--cache-dir", self.cache_dir,
                *command.split(), self.url, *map(str, args)]


def machines(url: str, tmp_path, *names: str) -> list[Machine]:
    return [Machine(url, tmp_path / f"cache-{name}") for name in names]


class Mounts:
    """`ckptfs mount` of a machine, each taken down by `unmount_all` (in a fixture's
    teardown, even after a failure)."""

    def __init__(self, tmp_path):
        self.tmp_path, self.mounted = tmp_path, []

    def mount(self, machine: Machine, *options, **kw) -> str:
        mountpoint = self.tmp_path / f"mnt{len(self.mounted)}"
        mountpoint.mkdir()
        self.mounted.append(str(mountpoint))
        run_cli_checked("--cache-dir", machine.cache_dir, "mount", machine.url,
                        mountpoint, *options, **kw)
        return str(mountpoint)

    def unmount_all(self):
        for mountpoint in self.mounted:
            unmount(mountpoint)


def bucket_and_prefix(url: str) -> tuple[str, str]:
    bucket, _, prefix = url[len("s3://"):].partition("/")
    return bucket, prefix


def listing(server, url: str) -> list[dict]:
    """ListObjectsV2's items under the store's prefix (straight from the server)."""
    bucket, prefix = bucket_and_prefix(url)
    pages = server.client().get_paginator("list_objects_v2")
    return [item for page in pages.paginate(Bucket=bucket, Prefix=prefix + "/")
            for item in page.get("Contents", [])]


def object_names(server, url: str) -> list[str]:
    """Every object under the store's prefix, relative to it."""
    _, prefix = bucket_and_prefix(url)
    return sorted(item["Key"][len(prefix) + 1:] for item in listing(server, url))


def multipart_uploads(server, url: str) -> list[str]:
    """The keys of the unfinished multipart uploads under the store's prefix."""
    bucket, prefix = bucket_and_prefix(url)
    listed = server.client().list_multipart_uploads(Bucket=bucket, Prefix=prefix + "/")
    return [upload["Key"] for upload in listed.get("Uploads", [])]


def packs_and_indexes(names: list[str]) -> tuple[set[str], set[str]]:
    """The pack ids of the `.pack` objects, and those of the `.idx` objects."""
    def ids(suffix):
        return {n[:-len(suffix)] for n in names if n.startswith("packs/") and n.endswith(suffix)}
    return ids(".pack"), ids(".idx")


def journal_entry_names(names: list[str]) -> list[str]:
    return [n for n in names if n.startswith("journal/")]


class Relay:
    """A TCP relay on a loopback port of its own in front of the S3 server: the store's
    endpoint as machines see it. It counts the bytes the server sent (`bytes_down`).
    `down()` closes the port and cuts every connection (the server seems gone:
    connections are refused); `up()` listens on the same port again. The server behind
    it keeps its data, as a real one restarted would."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._connections: list[socket.socket] = []
        self._lock = threading.Lock()
        self.bytes_down = 0
        self._serve()

    def _serve(self):
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()

    def _accept(self, listener):
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by down()
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._connections += [client, server]
            threading.Thread(target=self._pipe, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, True), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, counted: bool = False):
        try:
            while data := src.recv(65536):
                if counted:
                    with self._lock:
                        self.bytes_down += len(data)
                dst.sendall(data)
        except OSError:
            pass
        _close(src)
        _close(dst)

    def down(self):
        self._listener.close()
        with self._lock:
            for conn in self._connections:
                _close(conn)
            self._connections.clear()

    def up(self):
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._serve()

    def close(self):
        self.down()


def _close(conn: socket.socket):
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    conn.close()


def environment_with(**variables) -> dict:
    return {**os.environ, **{k: str(v) for k, v in variables.items()}}


def commit_versions(url: str, cache_dir: str, writer: int, count: int, go_file: str):
    """One writer process of many (run as `python -c`): once `go_file` exists, import
    `count` small versions p/w<writer>/v<i>, each a file of its own bytes, through the
    Store API with this machine's cache directory."""
    import tempfile

    from ckptfs.store import Store
    store = Store.open(url, cache_dir=cache_dir)
    try:
        _wait_for_file(go_file)
        for i in range(count):
            with tempfile.TemporaryDirectory() as src:
                with open(os.path.join(src, "data.bin"), "wb") as f:
                    f.write(version_bytes(writer, i))
                store.import_directory(src, "p", f"w{writer}", f"v{i}")
    finally:
        store.close()


def _wait_for_file(path: str):
    """Wait (in a process of its own, no deadline: the test's wait on it has one) for
    the test to create `path`: the start signal of processes meant to race."""
    import time
    while not os.path.exists(path):
        time.sleep(0.01)


def version_bytes(writer: int, i: int) -> bytes:
    return f"writer {writer} version {i}\n".encode() * 100


def helper_process(function: str, *args) -> list[str]:
    """The argv of a process that runs FUNCTION(*args) of this module (start it with
    cwd=REPO_ROOT, so that it imports `tests.helpers`)."""
    return [sys.executable, "-c",
            f"from tests.helpers.object_storage import {function}; {function}(*{args!r})"]


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def import_all(url: str, cache_dir: str, sources: list[str], go_file: str):
    """A writer process (run as `python -c`): once `go_file` exists, import each source
    directory as p/r/<its name>, through the Store API with this machine's cache."""
    from ckptfs.store import Store
    store = Store.open(url, cache_dir=cache_dir)
    try:
        _wait_for_file(go_file)
        for src in sources:
            store.import_directory(src, "p", "r", os.path.basename(src))
    finally:
        store.close()


def after(go_file: str, *commands: list[str]) -> list[str]:
    """A shell command line that waits for `go_file`, then runs the commands in turn
    (stopping at the first that fails)."""
    import shlex
    steps = " && ".join(shlex.join(map(str, c)) for c in commands)
    return ["sh", "-c", f'while [ ! -e {shlex.quote(str(go_file))} ]; do sleep 0.01; done; '
            + steps]


def set_gc_grace(server, url: str, seconds: float):
    """gc.grace_seconds in the store's ckptfs.toml in the bucket (as an operator edits it)."""
    bucket, prefix = bucket_and_prefix(url)
    key = f"{prefix}/ckptfs.toml"
    settings = server.client().get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    assert "[gc]\n" in settings
    server.client().put_object(Bucket=bucket, Key=key, Body=settings.replace(
        "[gc]\n", f"[gc]\ngrace_seconds = {seconds}\n").encode())
