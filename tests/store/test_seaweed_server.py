"""The SeaweedFS fixture is the server the S3 backend's second tier needs: it refuses a
second create of a name (the journal's commit relies on it), checks signatures, and keeps
objects across a clean restart and across a kill; a store on it outlives the server's
death."""
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from ckptfs.store import Store
from tests.helpers.samples import tree_snapshot


def _bucket_and_prefix(url: str) -> tuple[str, str]:
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    return bucket, prefix + "/"


def _error_code(excinfo) -> str:
    return excinfo.value.response["Error"]["Code"]


def test_a_second_create_of_a_name_is_refused(seaweed_server, seaweed_store_url):
    bucket, prefix = _bucket_and_prefix(seaweed_store_url)
    client = seaweed_server.client()
    key = prefix + "journal/00000000000000000001.json"
    client.put_object(Bucket=bucket, Key=key, Body=b"first", IfNoneMatch="*")
    with pytest.raises(ClientError) as refused:
        client.put_object(Bucket=bucket, Key=key, Body=b"second", IfNoneMatch="*")
    assert _error_code(refused) == "PreconditionFailed"
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == b"first"


def test_a_second_multipart_completion_of_a_name_is_refused(seaweed_server, seaweed_store_url):
    bucket, prefix = _bucket_and_prefix(seaweed_store_url)
    client = seaweed_server.client()
    key = prefix + "packs/000000/00000001.pack"
    first, second = (_uploaded_parts(client, bucket, key, fill) for fill in (b"a", b"b"))
    _complete(client, bucket, key, first)
    with pytest.raises(ClientError) as refused:
        _complete(client, bucket, key, second)
    assert _error_code(refused) == "PreconditionFailed"
    body = client.get_object(Bucket=bucket, Key=key, Range="bytes=0-3")["Body"].read()
    assert body == b"aaaa"


def _uploaded_parts(client, bucket, key, fill: bytes) -> tuple[str, list[dict]]:
    upload = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    parts = []
    for number, size in ((1, 5 * 1024 * 1024), (2, 10)):   # parts but the last: >= 5 MiB
        etag = client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=number,
                                  Body=fill * size)["ETag"]
        parts.append({"PartNumber": number, "ETag": etag})
    return upload, parts


def _complete(client, bucket, key, upload_and_parts) -> None:
    upload, parts = upload_and_parts
    client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload,
                                     MultipartUpload={"Parts": parts}, IfNoneMatch="*")


def test_a_wrong_secret_is_refused(seaweed_server, seaweed_store_url):
    import boto3
    bucket, _ = _bucket_and_prefix(seaweed_store_url)
    intruder = boto3.client("s3", endpoint_url=seaweed_server.endpoint, region_name="us-east-1",
                            aws_access_key_id=seaweed_server.s3_environment()["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key="not-the-secret")
    with pytest.raises(ClientError) as refused:
        intruder.list_objects_v2(Bucket=bucket)
    assert _error_code(refused) == "SignatureDoesNotMatch"


def test_objects_outlive_a_restart_and_a_kill(seaweed_server, seaweed_store_url):
    bucket, prefix = _bucket_and_prefix(seaweed_store_url)
    endpoint = seaweed_server.endpoint
    seaweed_server.client().put_object(Bucket=bucket, Key=prefix + "before-restart", Body=b"r")
    seaweed_server.restart()
    seaweed_server.client().put_object(Bucket=bucket, Key=prefix + "before-kill", Body=b"k")
    seaweed_server.kill()
    with pytest.raises(EndpointConnectionError):
        seaweed_server.client(attempts=1).head_object(Bucket=bucket, Key=prefix + "before-kill")
    seaweed_server.restart()
    client = seaweed_server.client()
    assert seaweed_server.endpoint == endpoint
    assert client.get_object(Bucket=bucket, Key=prefix + "before-restart")["Body"].read() == b"r"
    assert client.get_object(Bucket=bucket, Key=prefix + "before-kill")["Body"].read() == b"k"


def test_a_store_outlives_the_server_killed(seaweed_server, seaweed_store_url, checkpoint,
                                            tmp_path):
    """A version imported on one machine, the server killed and started again: another
    machine, with a new cache directory, lists it and reads it byte for byte."""
    with Store.init(seaweed_store_url, cache_dir=str(tmp_path / "machine-a")) as store:
        store.import_directory(checkpoint, "p", "r", "v1")
    seaweed_server.kill()
    seaweed_server.restart()
    with Store.open(seaweed_store_url, cache_dir=str(tmp_path / "machine-b")) as other:
        assert [v["version"] for v in other.all_versions()] == ["v1"]
        other.restore("p", "r", "v1", str(tmp_path / "got"))
    assert tree_snapshot(tmp_path / "got") == tree_snapshot(checkpoint)
