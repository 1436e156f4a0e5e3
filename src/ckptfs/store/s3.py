"""A store on object storage: `S3Backend`, the `Backend` of `s3://BUCKET/PREFIX`.

Every object of the store is the S3 object `PREFIX/NAME` in BUCKET (docs/format.md,
"Object storage layout"); many machines share it, each with its own index. What makes
that safe is S3's conditional create (`If-None-Match: *`): of two machines creating one
name, exactly one succeeds. Packs are created that way (one `PutObject`, or a multipart
upload completed with the condition), and so is every journal entry, which is its own
object named by its seq (`S3JournalLog`, s3journal.py): the writer that loses a seq
catches up and tries the next one, as in the Delta Lake protocol.

Endpoint, credentials and region come the standard way (AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_PROFILE, ~/.aws/config),
read by boto3 itself; CKPTFS_S3_MAX_ATTEMPTS and CKPTFS_S3_CONNECT_TIMEOUT tune the
retries (docs/backend.md). No botocore exception leaves this module: a server that
cannot be reached is `BackendUnavailableError`, refused credentials `PermissionError`,
a missing bucket `NoSuchBucketError`, a missing object `ObjectMissingError`.
"""
import errno
import hashlib
import os
import random
import re
import secrets
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from email.utils import parsedate_to_datetime

import boto3
import botocore.exceptions as boto_errors
from botocore.config import Config

from .backend import (
    Backend,
    BackendUnavailableError,
    JournalLog,
    ObjectExistsError,
    ObjectInfo,
    ObjectMissingError,
    ObjectReader,
    ObjectWriter,
    check_object_name,
)
from .errors import NotAStoreError, StoreError
from .s3journal import S3JournalLog

SCHEME = "s3://"
# A writer sends a multipart upload's parts as they fill (S3 wants at least 5 MiB for
# every part but the last); an object smaller than one part is one PutObject.
PART_SIZE = 16 << 20
PARALLEL_GETS = 16  # GETs at once when many journal objects are read
UPLOAD_THREADS = 8  # parts of all the writers of a backend sent at once
PARTS_IN_FLIGHT = 2  # parts of one writer being sent while it fills the next
MAX_POOL_CONNECTIONS = 64
ENV_MAX_ATTEMPTS = "CKPTFS_S3_MAX_ATTEMPTS"
ENV_CONNECT_TIMEOUT = "CKPTFS_S3_CONNECT_TIMEOUT"
DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0
# AWS may answer a create racing another create of the same name with 409
# ConditionalRequestConflict: try again after these pauses (seconds, jittered).
CONFLICT_PAUSES = (0.05, 0.1, 0.2, 0.4, 0.8)
PROBE_DIR = "probe"

# A bucket name S3 accepts (the general-purpose rules): 3-63 lowercase letters, digits,
# dots and hyphens, a letter or digit at both ends, no "..", not an IP address.
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IP_RE = re.compile(r"^\d+\.\d+\.\d+\.\d+$")
_CONNECTION_ERRORS = (boto_errors.ConnectionError, boto_errors.HTTPClientError)
_CREDENTIAL_ERRORS = (boto_errors.NoCredentialsError, boto_errors.PartialCredentialsError)
_DENIED_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403",
                 "InvalidToken", "ExpiredToken", "AllAccessDisabled"}
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}


class S3ConfigError(StoreError, ValueError):
    """A store URL or an S3 setting that cannot be used."""

    errno = errno.EINVAL


class NoSuchBucketError(NotAStoreError):
    """The store's bucket does not exist (at this endpoint)."""


class _ConditionalConflict(OSError):
    """409 ConditionalRequestConflict: a create raced another; try again."""


def parse_s3_url(url: str) -> tuple[str, str]:
    """(bucket, prefix) of `s3://BUCKET/PREFIX`; the prefix may be empty or nested
    (`a/b`), without slashes at its ends. S3ConfigError for anything else."""
    if not url.startswith(SCHEME):
        raise S3ConfigError(f"not an S3 store URL: {url!r} (give s3://BUCKET/PREFIX)")
    bucket, _, prefix = url[len(SCHEME):].partition("/")
    if not bucket:
        raise S3ConfigError(f"{url!r} names no bucket (give s3://BUCKET/PREFIX)")
    if not _BUCKET_RE.match(bucket) or ".." in bucket or _IP_RE.match(bucket):
        raise S3ConfigError(
            f"{bucket!r} in {url!r} is not a bucket name S3 accepts: 3 to 63 lowercase "
            "letters, digits, dots and hyphens, beginning and ending with a letter or digit")
    prefix = prefix.rstrip("/")
    if prefix:
        try:
            check_object_name(prefix)
        except ValueError:
            raise S3ConfigError(
                f"the prefix {prefix!r} in {url!r} has an empty part or a part that is "
                "'.', '..' or starts with '.'") from None
    return bucket, prefix


def _env_number(name: str, default: float, kind):
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not 0 < value < float("inf"):
        raise S3ConfigError(f"{name}={text!r} is not a positive {kind.__name__}")
    return value


def client_config() -> Config:
    """The botocore settings of every client: checksums only where S3 requires them
    (the default CRC costs 10-25 % of a PUT's speed), standard retries, timeouts and a
    connection pool big enough for parallel reads."""
    return Config(
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        retries={"mode": "standard",
                 "max_attempts": _env_number(ENV_MAX_ATTEMPTS, DEFAULT_MAX_ATTEMPTS, int)},
        connect_timeout=_env_number(ENV_CONNECT_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, float),
        read_timeout=READ_TIMEOUT,
        max_pool_connections=MAX_POOL_CONNECTIONS,
        tcp_keepalive=True,
    )


CHUNK_CACHE_DIR = "cache"
ENV_CACHE_SIZE = "CKPTFS_CACHE_SIZE"
DEFAULT_CACHE_SIZE = 10 << 30
SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def cache_capacity() -> int:
    """The chunk cache's cap in bytes: CKPTFS_CACHE_SIZE (`500M`, `20G`, bytes) or 10G."""
    text = os.environ.get(ENV_CACHE_SIZE, "").strip().upper().removesuffix("B")
    if not text:
        return DEFAULT_CACHE_SIZE
    number, unit = (text[:-1], text[-1]) if text[-1] in SIZE_UNITS else (text, "")
    try:
        size = float(number) * SIZE_UNITS[unit]
    except ValueError:
        raise S3ConfigError(f"{ENV_CACHE_SIZE}={os.environ[ENV_CACHE_SIZE]!r} is not a size "
                            "(e.g. 500M, 20G)") from None
    if size < 0:
        raise S3ConfigError(f"{ENV_CACHE_SIZE} must not be negative")
    return int(size)


def connection_problem(cause) -> str:
    """botocore's words for a failed connection, without the request's whole URL."""
    text = str(cause)
    for known in ("Could not connect to the endpoint URL", "Connect timeout",
                  "Read timeout", "Connection was closed"):
        if text.startswith(known):
            return known[0].lower() + known[1:]
    return text


class S3Backend(Backend):
    """The objects of a store under `s3://BUCKET/PREFIX` (module docstring).

    `local_dir` is this machine's directory of the store (index, spool, locks): the
    journal's lock file goes there, so that processes of one machine catch up one at
    a time."""

    shared = True

    def __init__(self, url: str, local_dir: str | None = None):
        self.bucket, self.prefix = parse_s3_url(url)
        self.location = url.rstrip("/")
        self.local_dir = local_dir
        self.part_size = PART_SIZE
        self._root = f"{self.prefix}/" if self.prefix else ""
        try:
            self.client = boto3.session.Session().client("s3", config=client_config())
        except boto_errors.BotoCoreError as e:  # e.g. AWS_PROFILE names no profile
            raise S3ConfigError(f"{self.location}: {e}") from None
        self.endpoint = self.client.meta.endpoint_url
        self._pools: dict[str, ThreadPoolExecutor] = {}
        self._pool_lock = threading.Lock()
        self._chunk_cache = None  # one CachingReader, opened at the first read

    # -- names and requests ------------------------------------------------------------
    def key(self, name: str) -> str:
        """The S3 key of object `name`."""
        check_object_name(name)
        return self._root + name

    def call(self, operation: str, name: str | None = None, tolerate: tuple = (),
             **params) -> dict | None:
        """The S3 request `operation` on this store's bucket, its errors turned into the
        backend's (`name`: the object it is about, for messages); None for an error
        whose code is in `tolerate`."""
        with self.translated(operation, name):
            try:
                return getattr(self.client, operation)(Bucket=self.bucket, **params)
            except boto_errors.ClientError as e:
                if e.response.get("Error", {}).get("Code") in tolerate:
                    return None
                raise

    @contextmanager
    def translated(self, operation: str, name: str | None = None):
        """botocore's exceptions in the block turned into the backend's errors."""
        try:
            yield
        except boto_errors.ClientError as e:
            raise self._client_error(e, operation, name) from None
        except _CONNECTION_ERRORS as e:
            raise self.unavailable(e) from None
        except _CREDENTIAL_ERRORS as e:
            raise PermissionError(errno.EACCES, f"{self.location}: {e}: set AWS_ACCESS_KEY_ID "
                                  "and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE") from None
        except boto_errors.BotoCoreError as e:
            raise OSError(errno.EIO, f"{self.location}: {operation} failed: {e}") from None

    def unavailable(self, cause) -> BackendUnavailableError:
        return BackendUnavailableError(
            errno.EIO, f"{self.location} cannot be reached ({self.endpoint}: "
                       f"{connection_problem(cause)})")

    def _client_error(self, e, operation: str, name: str | None) -> Exception:
        """The backend's error for S3's refusal `e`; its `retried` says whether botocore
        had sent the request before (then an earlier try may have done what was asked:
        made the object, completed the upload)."""
        translated = self._error_for(e, operation, name)
        translated.retried = e.response.get("ResponseMetadata", {}).get("RetryAttempts", 0) > 0
        return translated

    def _error_for(self, e, operation: str, name: str | None) -> Exception:
        error = e.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        what = self.describe(name) if name else self.location
        if code == "NoSuchBucket":
            return self.no_such_bucket()
        if code in _MISSING_CODES:
            if operation == "head_object" and self._bucket_missing():
                return self.no_such_bucket()  # a HEAD's 404 says not which is missing
            return ObjectMissingError(f"{what} is missing")
        if code == "PreconditionFailed" or status == 412:
            return ObjectExistsError(f"{what} exists")
        if code == "ConditionalRequestConflict":
            return _ConditionalConflict(errno.EAGAIN, f"{what} is being created by another "
                                        "writer at the same time")
        if code in _DENIED_CODES:
            return PermissionError(
                errno.EACCES, f"{what}: access denied ({code}): check the credentials "
                "(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE) and what "
                "the bucket's policy grants them")
        message = f"{code}: {error.get('Message', '')}".rstrip(": ")
        if status >= 500:
            return BackendUnavailableError(
                errno.EIO, f"{self.location}: the server at {self.endpoint} failed ({message})")
        return OSError(errno.EIO, f"{what}: {operation} was refused ({message})")

    def _bucket_missing(self) -> bool:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except boto_errors.ClientError as e:
            return str(e.response.get("Error", {}).get("Code")) in ("404", "NoSuchBucket")
        except (boto_errors.BotoCoreError, OSError):
            return False
        return False

    def no_such_bucket(self) -> NoSuchBucketError:
        return NoSuchBucketError(f"{self.location}: no such bucket {self.bucket!r} at "
                                 f"{self.endpoint} (create it first)")

    def pool(self) -> ThreadPoolExecutor:
        """Threads for parallel GETs (boto3's client is thread-safe)."""
        return self._lazy_pool("get", PARALLEL_GETS)

    def upload_pool(self) -> ThreadPoolExecutor:
        """Threads that send the parts of multipart uploads (apart from the GETs': a
        reader of the journal never waits behind a pack's parts)."""
        return self._lazy_pool("upload", UPLOAD_THREADS)

    def _lazy_pool(self, kind: str, workers: int) -> ThreadPoolExecutor:
        with self._pool_lock:
            if kind not in self._pools:
                self._pools[kind] = ThreadPoolExecutor(
                    workers, thread_name_prefix=f"ckptfs-s3-{kind}")
            return self._pools[kind]

    # -- objects -------------------------------------------------------------------------
    def put_if_absent(self, name: str, data: bytes) -> None:
        self.create(name, data)

    def create(self, name: str, data: bytes) -> str | None:
        """`put_if_absent`; returns the new object's ETag (None where not known)."""
        key = self.key(name)

        def send():
            return self.call("put_object", name, Key=key, Body=data, IfNoneMatch="*")
        try:
            return retry_conflicts(send).get("ETag")
        except ObjectExistsError as e:
            # A reply lost and the request sent again: the object may be our own.
            if getattr(e, "retried", False) and self._holds(name, data):
                return None
            raise

    def _holds(self, name: str, data: bytes) -> bool:
        try:
            return self.get(name) == data
        except ObjectMissingError:
            return False

    def put(self, name: str, data: bytes, secret: bool = False) -> None:
        # `secret`: who may read the bucket is its policy's business, not the object's.
        self.call("put_object", name, Key=self.key(name), Body=data)

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        key = self.key(name)
        if length == 0:
            self.stat(name)  # a missing object is still an error
            return b""
        params = {}
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            params["Range"] = f"bytes={offset}-{end}"
        response = self.call("get_object", name, tolerate=("InvalidRange",), Key=key, **params)
        if response is None:
            return b""  # the range starts at or after the object's end
        return self._read_body(response)

    def _read_body(self, response) -> bytes:
        with self.translated("get_object"):
            return response["Body"].read()

    def stat(self, name: str) -> int:
        return self.call("head_object", name, Key=self.key(name))["ContentLength"]

    def list(self, prefix: str) -> list[ObjectInfo]:
        found = [ObjectInfo(item["Key"][len(self._root):], item["Size"],
                            item["LastModified"].timestamp())
                 for item in self.list_keys(self._root + prefix)]
        return sorted(found, key=lambda info: info.name)

    def list_keys(self, key_prefix: str, start_after: str | None = None):
        """The listing entries (Key, Size, ETag, LastModified) of the keys starting with
        `key_prefix`, after `start_after`, in key order."""
        params = {"Bucket": self.bucket, "Prefix": key_prefix}
        if start_after:
            params["StartAfter"] = start_after
        pages = self.client.get_paginator("list_objects_v2").paginate(**params)
        with self.translated("list_objects_v2"):
            for page in pages:
                yield from page.get("Contents", [])

    def delete(self, name: str) -> bool:
        key = self.key(name)
        try:
            self.call("head_object", name, Key=key)
        except ObjectMissingError:
            return False
        self.call("delete_object", name, Key=key)
        return True

    def open_writer(self, name: str) -> ObjectWriter:
        return S3Writer(self, name)

    def journal(self) -> JournalLog:
        return S3JournalLog(self, self.local_dir)

    # -- upkeep, checks, life cycle -----------------------------------------------------------
    def abort_stale_uploads(self, older_than: float) -> int:
        """Abort the multipart uploads under the prefix begun more than `older_than`
        seconds ago (by the server's clock, which dates the uploads)."""
        pages = self.client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=self._root)
        aborted = 0
        with self.translated("list_multipart_uploads"):
            for page in pages:
                now = _server_time(page)
                for upload in page.get("Uploads", []):
                    if now - upload["Initiated"].timestamp() > older_than:
                        aborted += self.abort_upload(upload["Key"], upload["UploadId"])
        return aborted

    def abort_upload(self, key: str, upload_id: str) -> int:
        """1 if the upload was aborted, 0 if it had finished or gone meanwhile."""
        done = self.call("abort_multipart_upload", tolerate=("NoSuchUpload",), Key=key,
                         UploadId=upload_id)
        return 0 if done is None else 1

    def root_problem(self) -> str | None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except boto_errors.ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchBucket"):
                return ": no such bucket"
            if code in _DENIED_CODES:
                return ": access denied"
            return f": the server refused ({code})"
        except _CONNECTION_ERRORS as e:
            # Not "no store here": a machine may go on from its cache (Store.open).
            raise self.unavailable(e) from None
        except _CREDENTIAL_ERRORS as e:
            return f": {e} (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)"
        except boto_errors.BotoCoreError as e:
            return f" cannot be used ({e})"
        return None

    def probe_conditional_writes(self) -> str | None:
        """None if the server refuses a second create of one name, as the store needs;
        else the problem in words. A server that ignores `If-None-Match: *` would let two
        machines overwrite each other's journal entries."""
        name = f"{PROBE_DIR}/{secrets.token_hex(8)}"
        try:
            self.put_if_absent(name, b"first")
            try:
                self.put_if_absent(name, b"second")
            except ObjectExistsError:
                return None
            return (f"{self.location} does not honour conditional writes (If-None-Match: *): "
                    "two machines could overwrite each other's commits, so ckptfs refuses "
                    "it as a store")
        finally:
            self.delete(name)

    def open_reader(self, cached: bool = True) -> ObjectReader:
        """Reads of packs go through this machine's chunk cache (objcache.py) in
        `local_dir/cache`, capped at CKPTFS_CACHE_SIZE (default 10G): one cache for the
        backend, a handle per reader."""
        if not cached or self.local_dir is None:
            return ObjectReader(self)
        with self._pool_lock:
            if self._chunk_cache is None:
                from .objcache import CachingReader
                try:
                    self._chunk_cache = CachingReader(
                        self, os.path.join(self.local_dir, CHUNK_CACHE_DIR), cache_capacity())
                except OSError as e:
                    raise OSError(e.errno, f"cannot use the chunk cache in {self.local_dir}: "
                                           f"{e.strerror or e}") from None
            return self._chunk_cache.handle()

    def close(self) -> None:
        with self._pool_lock:
            pools, self._pools = self._pools, {}
            cache, self._chunk_cache = self._chunk_cache, None
        if cache is not None:
            cache.close()
        for pool in pools.values():
            pool.shutdown(wait=True)
        self.client.close()


def retry_conflicts(send):
    """`send()`, again after a short pause while the server answers 409
    ConditionalRequestConflict (a racing create of the same name still under way);
    ObjectExistsError when it never settles: the other create is taken to have won."""
    for pause in CONFLICT_PAUSES + (None,):
        try:
            return send()
        except _ConditionalConflict as e:
            if pause is None:
                raise ObjectExistsError(e.strerror) from None
            time.sleep(pause * (1 + random.random()))


def _server_time(response: dict) -> float:
    """The time by the server's clock, from the Date header of its reply (this
    machine's clock when there is none)."""
    date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    try:
        return parsedate_to_datetime(date).timestamp()
    except (TypeError, ValueError):
        return time.time()


class S3Writer(ObjectWriter):
    """A new object, invisible until `commit`. A small object is sent at `commit` with
    one PutObject; a bigger one is a multipart upload whose parts are sent as they fill,
    in the background (at most PARTS_IN_FLIGHT at once, so memory stays bounded by a
    few parts whatever the size), completed at `commit` with `If-None-Match: *`."""

    def __init__(self, backend: S3Backend, name: str):
        self._backend = backend
        self.name = name
        self._key = backend.key(name)
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._sending: deque = deque()  # (part number, Future of its ETag), oldest first
        self._parts: list[dict] = []  # the parts sent: PartNumber, ETag
        self.size = 0

    @property
    def buffered(self) -> int:
        """Bytes held in memory, not sent yet (less than a part after each write)."""
        return len(self._buffer)

    def write(self, data) -> None:
        self._buffer += data
        self.size += len(data)
        part_size = self._backend.part_size
        while len(self._buffer) >= part_size:
            part = bytes(self._buffer[:part_size])
            del self._buffer[:part_size]
            self._send_part(part)

    def _send_part(self, data: bytes) -> None:
        if self._upload_id is None:
            self._upload_id = self._backend.call("create_multipart_upload", self.name,
                                                 Key=self._key)["UploadId"]
        while len(self._sending) >= PARTS_IN_FLIGHT:
            self._settle_oldest()
        number = len(self._parts) + len(self._sending) + 1
        future = self._backend.upload_pool().submit(self._upload_part, number, data)
        self._sending.append((number, future))

    def _upload_part(self, number: int, data: bytes) -> str:
        return self._backend.call("upload_part", self.name, Key=self._key,
                                  UploadId=self._upload_id, PartNumber=number,
                                  Body=data)["ETag"]

    def _settle_oldest(self) -> None:
        """Wait for the oldest part being sent; its error, if it failed."""
        number, future = self._sending.popleft()
        self._parts.append({"PartNumber": number, "ETag": future.result()})

    def commit(self) -> None:
        try:
            if self._upload_id is None:
                self._backend.put_if_absent(self.name, bytes(self._buffer))
            else:
                if self._buffer:
                    self._send_part(bytes(self._buffer))
                while self._sending:
                    self._settle_oldest()
                self._complete()
        except BaseException:
            try:
                self.abort()
            except OSError:
                pass  # the error that stopped the commit is the one to tell
            raise
        self._buffer = bytearray()

    def _complete(self) -> None:
        def send():
            return self._backend.call(
                "complete_multipart_upload", self.name, Key=self._key,
                UploadId=self._upload_id, MultipartUpload={"Parts": self._parts},
                IfNoneMatch="*")
        try:
            retry_conflicts(send)
        except OSError as e:
            # botocore sent the completion again (the reply to the first was lost) and
            # it was refused (412, or NoSuchUpload): the first may have made the object.
            if not (getattr(e, "retried", False) and self._completed_by_this_upload()):
                raise
        self._upload_id = None

    def _completed_by_this_upload(self) -> bool:
        """Whether the object is the one this upload's parts make: S3's ETag of a
        multipart object is the MD5 of its parts' MD5s, "-", their count (where part
        ETags are MD5s: not with SSE-KMS, which then counts as not ours)."""
        try:
            digests = b"".join(bytes.fromhex(part["ETag"].strip('"')) for part in self._parts)
        except ValueError:
            return False  # a server whose part ETags are not hex digests
        expected = f'"{hashlib.md5(digests).hexdigest()}-{len(self._parts)}"'
        try:
            return self._backend.call("head_object", self.name, Key=self._key)["ETag"] == expected
        except ObjectMissingError:
            return False

    def abort(self) -> None:
        self._buffer = bytearray()
        while self._sending:
            _number, future = self._sending.popleft()
            if not future.cancel():
                # Sent already: let it end, or the part could land after the abort
                # and keep the upload alive. Its error does not matter any more.
                future.exception()
        upload_id, self._upload_id = self._upload_id, None
        if upload_id is not None:
            self._backend.abort_upload(self._key, upload_id)
