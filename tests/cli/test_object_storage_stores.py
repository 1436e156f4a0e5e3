"""Stores on object storage from the command line: what holds for any store holds on a
bucket too (encryption at rest, copies between two buckets). The many-machines tests
are in test_object_storage.py."""
import os

import boto3

from tests.helpers.cli import run_cli_checked
from tests.helpers.encryption import CONFIG_TEXT
from tests.helpers.samples import make_checkpoint, tree_snapshot


def bucket_bytes(url: str) -> bytes:
    """Every object under the store's prefix, concatenated (what the server holds)."""
    bucket, prefix = url[len("s3://"):].split("/", 1)
    client = boto3.client("s3")
    listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix + "/").get("Contents", [])
    return b"".join(client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
                    for o in listed)


def test_an_encrypted_store_on_a_bucket_holds_no_plaintext(s3_store_url, tmp_path):
    cache = ("--cache-dir", tmp_path / "cache")
    key = tmp_path / "store.key"
    run_cli_checked(*cache, "init", "--encrypt", "--key-file", key, s3_store_url)
    src = make_checkpoint(tmp_path / "src" / "v1", step=1)
    run_cli_checked(*cache, "import", s3_store_url, src, "p/r/v1")
    stored = bucket_bytes(s3_store_url)
    assert b"hidden_size" not in stored and CONFIG_TEXT not in stored
    assert b"CKPTPACK" in stored  # the packs are there, their records encrypted
    # Another machine with the key reads it; the chunk cache holds no plaintext either.
    other = ("--cache-dir", tmp_path / "other")
    run_cli_checked(*other, "get", s3_store_url, "p/r/v1", tmp_path / "out")
    assert tree_snapshot(tmp_path / "out") == tree_snapshot(src)
    cached = b"".join(open(os.path.join(d, f), "rb").read()
                      for d, _dirs, files in os.walk(tmp_path / "other" / "cache") for f in files)
    assert cached and b"hidden_size" not in cached


def test_a_copy_from_one_bucket_to_another(s3_env, tmp_path, monkeypatch):
    """S3 to S3 (replication across regions): each store with a cache dir of its own,
    the default one under $XDG_CACHE_HOME/ckptfs/."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    src_url = f"s3://{s3_env.new_bucket()}/team"
    dst_url = f"s3://{s3_env.new_bucket()}/replica"
    run_cli_checked("init", src_url)
    run_cli_checked("init", dst_url)
    for step in (1, 2):
        run_cli_checked("import", src_url, make_checkpoint(tmp_path / "src" / f"s{step}",
                                                            step=step), f"p/r/step-{step}")
    out = run_cli_checked("copy", src_url, dst_url).stdout.decode()
    assert "p/r/step-1" in out and "p/r/step-2" in out
    assert len(os.listdir(tmp_path / "xdg" / "ckptfs")) == 2  # one cache dir per store
    run_cli_checked("get", dst_url, "p/r/step-2", tmp_path / "got")
    assert tree_snapshot(tmp_path / "got") == tree_snapshot(tmp_path / "src" / "s2")
    again = run_cli_checked("copy", src_url, dst_url).stdout.decode()
    assert "already there" in again
