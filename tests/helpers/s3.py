"""A real S3 server for the tests: `moto_server` (PyPI's moto) on a free loopback port.

One server per test session (it starts in about a second and keeps everything in
memory); each test gets a bucket of its own (`s3_store_url`), so tests never see each
other's objects. The endpoint and credentials go into the environment the standard way
(AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, …), so `ckptfs` subprocesses find them as a user's
would.
"""
import os
import shutil
import socket
import subprocess
import sys
import uuid

from tests.helpers.waiting import wait_for

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "ckptfs-test",
    "AWS_SECRET_ACCESS_KEY": "ckptfs-test-secret",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accepting(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


class MotoServer:
    """`moto_server -H 127.0.0.1 -p PORT` as a child process."""

    def __init__(self, log_path: str):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        program = shutil.which("moto_server", path=os.path.dirname(sys.executable)) \
            or shutil.which("moto_server")
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen([program, "-H", "127.0.0.1", "-p", str(self.port)],
                                        stdout=self._log, stderr=subprocess.STDOUT)
        wait_for(lambda: self.process.poll() is not None or _accepting(self.port),
                 "moto_server to accept connections")
        if self.process.poll() is not None:
            raise RuntimeError(f"moto_server exited: see {log_path}")

    def client(self):
        import boto3
        return boto3.client("s3", endpoint_url=self.endpoint, **_client_credentials())

    def new_bucket(self) -> str:
        name = f"ckptfs-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


def _client_credentials() -> dict:
    return {"aws_access_key_id": S3_ENV["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": S3_ENV["AWS_SECRET_ACCESS_KEY"],
            "region_name": S3_ENV["AWS_REGION"]}


def s3_environment(endpoint: str) -> dict:
    """The variables a user sets for a store on this endpoint."""
    return {**S3_ENV, "AWS_ENDPOINT_URL": endpoint}
