"""Where a store is: a local directory, or a prefix in a bucket (`s3://BUCKET/PREFIX`).

A local store keeps everything in its directory. A store on object storage keeps its
truth (settings, packs, journal) in the bucket, and what one machine derives or holds
for itself in a *cache directory* on that machine: the LMDB index, the chunk cache, the
mount's spool and the lock files of its processes. Every machine has its own; two
processes of one machine share it. The cache directory is, in order: the one given
(`--cache-dir`), `CKPTFS_CACHE_DIR`, or one per store under `~/.cache/ckptfs/`
(`$XDG_CACHE_HOME/ckptfs/`).

`cache.json` in a cache directory names the store it belongs to (its URL and the
store's id, a hash of its chunk-id key): a cache directory is never used for another
store, and a cache of a store that was deleted and made again under the same URL is
started afresh (its index moved aside).
"""
import hashlib
import json
import os
import re
from datetime import datetime, timezone

from .backend import Backend, BackendUnavailableError, LocalBackend
from .errors import StoreError
from .private import make_private_dirs

OBJECT_STORE_SCHEMES = ("s3://",)
ENV_STORE = "CKPTFS_STORE"
ENV_CACHE_DIR = "CKPTFS_CACHE_DIR"
CACHE_RECORD = "cache.json"
SETTINGS_COPY = "settings.toml"  # the store's ckptfs.toml, as last read from the bucket


def is_object_store(store: str) -> bool:
    return store.startswith(OBJECT_STORE_SCHEMES)


def default_cache_dir(url: str) -> str:
    """`~/.cache/ckptfs/<bucket-prefix>-<hash>`: readable, and one per store URL and
    endpoint (two endpoints may have buckets of one name)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    endpoint = os.environ.get("AWS_ENDPOINT_URL", "")
    digest = hashlib.sha256(f"{endpoint}\0{url}".encode()).hexdigest()[:12]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", url.split("://", 1)[1]).strip("-")[:60]
    return os.path.join(base, "ckptfs", f"{slug}-{digest}")


def cache_dir_for(url: str, cache_dir: str | None = None) -> str:
    chosen = cache_dir or os.environ.get(ENV_CACHE_DIR) or default_cache_dir(url)
    return os.path.abspath(os.path.expanduser(chosen))


def local_dir_of(store: str, cache_dir: str | None = None) -> str:
    """The directory of this machine's state of `store` (index, spool, locks): the
    store's own directory, or its cache directory."""
    if is_object_store(store):
        return cache_dir_for(store, cache_dir)
    return os.path.abspath(store)


def store_label(store: str) -> str:
    """The store as mount tables and messages name it: a URL as given, a directory as
    an absolute path."""
    return store if is_object_store(store) else os.path.abspath(store)


def open_backend(store: str, cache_dir: str | None = None) -> tuple[str, Backend]:
    """(the local directory, the backend) of `store`."""
    local = local_dir_of(store, cache_dir)
    if is_object_store(store):
        from .s3 import S3Backend  # boto3: loaded only for a store that needs it
        return local, S3Backend(store, local)
    return local, LocalBackend(local)


def load_settings(backend: Backend, local: str):
    """The store's settings from the bucket, kept in the cache dir as well; when the
    bucket cannot be reached, the copy, so that a machine goes on answering from its
    index and its chunk cache (writes still need the bucket, and say so)."""
    from .config import StoreConfig
    copy = os.path.join(local, SETTINGS_COPY)
    try:
        config = StoreConfig.load(backend)
    except BackendUnavailableError:
        if not os.path.exists(copy):
            raise
        return StoreConfig.from_file(copy)
    make_private_dirs(local)
    text = config.to_toml()
    try:
        with open(copy) as f:
            unchanged = f.read() == text
    except OSError:
        unchanged = False
    if not unchanged:
        fd = os.open(copy + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(copy + ".tmp", copy)
    return config


def store_id(chunk_id_key: bytes) -> str:
    """An id of the store that names no secret (the key's hash)."""
    return hashlib.sha256(b"ckptfs store id\0" + chunk_id_key).hexdigest()[:32]


def bind_cache(local: str, url: str, identity: str) -> None:
    """Make `local` the cache directory of the store `url` whose id is `identity`:
    create it; refuse one that belongs to another store; move the index of an earlier
    store of the same URL aside (it describes objects that are gone)."""
    make_private_dirs(local)
    record_path = os.path.join(local, CACHE_RECORD)
    try:
        with open(record_path) as f:
            record = json.load(f)
    except FileNotFoundError:
        record = None
    except (OSError, ValueError):
        record = {}
    if record is not None and record.get("store") not in (None, url):
        raise StoreError(f"cache directory {local} belongs to store {record.get('store')}, "
                         f"not {url}: give each store its own --cache-dir")
    if record is not None and record.get("id") not in (None, identity):
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        for name in ("index", "cache"):
            if os.path.exists(os.path.join(local, name)):
                os.rename(os.path.join(local, name), os.path.join(local, f"{name}.stale-{stamp}"))
    if record != {"store": url, "id": identity}:
        temp = record_path + ".tmp"
        with open(temp, "w") as f:
            json.dump({"store": url, "id": identity}, f)
            f.write("\n")
        os.replace(temp, record_path)
    for sub in ("index", "spool"):
        make_private_dirs(os.path.join(local, sub))
