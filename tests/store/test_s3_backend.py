"""S3Backend (store/s3.py) beyond the contract tests of test_backend.py: the journal
shared by many machines (races for a seq, segments, a lost reply), multipart writers,
stale uploads, a server that cannot be reached, a missing bucket, the probe of
conditional writes.

The server is a real moto_server (tests/helpers/s3.py). Faults are injected at the
client, with botocore's event hooks: the request still reaches the real server (or is
answered for it, for the one reply moto cannot be made to give: 409).
"""
import json
import threading

import botocore.exceptions
import pytest
from botocore.awsrequest import AWSResponse

from ckptfs.store import s3journal
from ckptfs.store.backend import (
    BackendUnavailableError,
    ObjectExistsError,
    ObjectMissingError,
    SeqTakenError,
)
from ckptfs.store.errors import IntegrityError, StoreError
from ckptfs.store.journal import Journal
from ckptfs.store.s3 import NoSuchBucketError, S3Backend, S3ConfigError, parse_s3_url
from tests.helpers.s3 import free_port

MiB = 1 << 20


@pytest.fixture
def machines(tmp_path, s3_store_url):
    """`machines(n)`: n backends of one store, each with a local directory of its own,
    as n machines would have."""
    made = []

    def make(count=1):
        for _ in range(count):
            made.append(S3Backend(s3_store_url, str(tmp_path / f"machine-{len(made)}")))
        return made[-count:]
    yield make
    for backend in made:
        backend.close()


@pytest.fixture
def backend(machines):
    return machines(1)[0]


def line(seq: int, text: str) -> bytes:
    return json.dumps({"nonce": text, "seq": seq}, sort_keys=True).encode()


# -- the store URL -------------------------------------------------------------------------------
@pytest.mark.parametrize("url, expected", [
    ("s3://bucket/store", ("bucket", "store")),
    ("s3://my.bucket-1/teams/vision/ckpt/", ("my.bucket-1", "teams/vision/ckpt")),
    ("s3://bucket", ("bucket", "")),
    ("s3://bucket/", ("bucket", "")),
])
def test_a_store_url_names_bucket_and_prefix(url, expected):
    assert parse_s3_url(url) == expected


@pytest.mark.parametrize("url, says", [
    ("s3://", "names no bucket"),
    ("s3:///store", "names no bucket"),
    ("s3://Bucket/store", "not a bucket name"),
    ("s3://ab/store", "not a bucket name"),
    ("s3://bucket_1/store", "not a bucket name"),
    ("s3://a..b/store", "not a bucket name"),
    ("s3://192.168.1.1/store", "not a bucket name"),
    ("s3://bucket/a//b", "empty part"),
    ("s3://bucket/a/../b", "empty part"),
    ("/srv/store", "not an S3 store URL"),
])
def test_a_bad_store_url_is_a_clear_error(url, says):
    with pytest.raises(S3ConfigError, match=says):
        parse_s3_url(url)


def test_a_bad_retry_setting_is_a_clear_error(s3_store_url, monkeypatch):
    monkeypatch.setenv("CKPTFS_S3_MAX_ATTEMPTS", "many")
    with pytest.raises(S3ConfigError, match="CKPTFS_S3_MAX_ATTEMPTS='many'"):
        S3Backend(s3_store_url)


def test_a_profile_that_is_not_there_is_a_clear_error(s3_store_url, monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_PROFILE", "nobody")
    with pytest.raises(S3ConfigError, match="nobody"):
        S3Backend(s3_store_url)


def test_objects_are_keys_under_the_prefix(backend, s3_env):
    backend.put_if_absent("packs/000000/00000001.pack", b"p")
    keys = [item["Key"] for item in s3_env.client().list_objects_v2(
        Bucket=backend.bucket)["Contents"]]
    assert keys == ["store/packs/000000/00000001.pack"]
    assert backend.list("packs/")[0].mtime > 0


# -- the journal shared by machines -----------------------------------------------------------------
def test_two_machines_racing_for_a_seq_exactly_one_wins(machines):
    """Each round, two machines append the same seq at once (a barrier lines them
    up): one entry is stored, the other machine is told the seq is taken."""
    logs = [backend.journal() for backend in machines(2)]
    for seq in range(1, 11):
        barrier = threading.Barrier(2)
        outcome = {}

        def append(which):
            barrier.wait()
            try:
                logs[which].append(seq, line(seq, f"machine {which}"))
                outcome[which] = "won"
            except SeqTakenError:
                outcome[which] = "taken"
        threads = [threading.Thread(target=append, args=(which,)) for which in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(outcome.values()) == ["taken", "won"], outcome
        winner = [which for which, result in outcome.items() if result == "won"][0]
        assert logs[0].last() == logs[1].last() == line(seq, f"machine {winner}")
    assert [json.loads(x)["seq"] for x in logs[1].lines()] == list(range(1, 11))


def machines_with_a_journal(machines, monkeypatch, entries: int):
    """(writer, reader): the first machine appends `entries` entries, a segment every
    10; the second has not read the journal yet."""
    monkeypatch.setattr(s3journal, "SEGMENT", 10)
    writer, reader = machines(2)
    journal = Journal(writer.journal())
    with journal.locked():
        for n in range(entries):
            journal.append({"type": "x", "n": n})
    return writer, reader


def test_entries_and_segments_read_back_in_order(machines, monkeypatch):
    """35 entries with a segment every 10: three segments are written, and a machine
    with no journal of its own reads 3 segments and 5 entries, not 35 objects."""
    writer, reader = machines_with_a_journal(machines, monkeypatch, 35)
    assert [info.name for info in writer.list("journal/segments/")] == [
        "journal/segments/00000000000000000001-00000000000000000010.jsonl",
        "journal/segments/00000000000000000011-00000000000000000020.jsonl",
        "journal/segments/00000000000000000021-00000000000000000030.jsonl"]
    gets = count_requests(reader, "GetObject")
    fresh = Journal(reader.journal())
    assert [e["n"] for e in fresh.entries()] == list(range(35))
    assert len(gets) == 3 + 5
    assert [e["seq"] for e in fresh.entries(after_seq=13)] == list(range(14, 36))
    assert [json.loads(x)["seq"] for x in reader.journal().lines(30)] == list(range(31, 36))
    assert fresh.check_chain((35, None))["ok"]
    assert fresh.last_seq() == 35
    listed_after = start_afters(reader)
    assert json.loads(reader.journal().last())["seq"] == 35  # a log that knows nothing
    assert listed_after == [None, f"store/{s3journal.entry_name(29)}"]  # segments, entries


def test_a_missing_segment_is_read_from_the_entries_and_written_again(machines, monkeypatch):
    writer, reader = machines_with_a_journal(machines, monkeypatch, 25)
    segment = "journal/segments/00000000000000000011-00000000000000000020.jsonl"
    whole = writer.get(segment)
    writer.delete(segment)
    assert [e["n"] for e in Journal(reader.journal()).entries()] == list(range(25))
    assert writer.get(segment) == whole  # the reader wrote it again


def test_an_entry_taken_back_while_it_is_read_ends_the_journal(machines, s3_env):
    writer, reader = machines(2)
    log = writer.journal()
    for seq in (1, 2, 3):
        log.append(seq, line(seq, str(seq)))

    def take_back_once(params, **kwargs):
        if not taken and params["url_path"].endswith(s3journal.entry_name(3)):
            taken.append(True)
            log.remove_last(3)  # between the reader's listing and its GETs
    taken = []
    reader.client.meta.events.register("before-call.s3.GetObject", take_back_once)
    assert list(reader.journal().lines()) == [line(1, "1"), line(2, "2")]
    assert taken


def test_an_entry_missing_inside_the_journal_is_damage(backend):
    log = backend.journal()
    for seq in (1, 2, 3):
        log.append(seq, line(seq, str(seq)))
    backend.delete(s3journal.entry_name(2))
    with pytest.raises(IntegrityError, match="journal entry 2 is missing"):
        list(log.lines())


def test_a_lost_reply_to_an_entry_put_that_was_stored_is_ours(backend):
    """The server stores the entry, the reply is lost: read back, the same bytes (the
    nonce makes them unique) say it was this writer's."""
    lose_reply(backend, "after-call.s3.PutObject")
    log = backend.journal()
    log.append(1, line(1, "ours"))
    assert list(log.lines()) == [line(1, "ours")]
    log.append(2, line(2, "next"))  # the journal goes on from it
    assert log.last() == line(2, "next")


def test_a_lost_reply_to_a_refused_entry_put_is_a_taken_seq(machines):
    """Another machine took the seq; the reply to ours (a 412) is lost: read back,
    other bytes say the seq is taken."""
    first, second = machines(2)
    first.journal().append(1, line(1, "theirs"))
    lose_reply(second, "after-call.s3.PutObject")
    with pytest.raises(SeqTakenError):
        second.journal().append(1, line(1, "ours"))
    assert first.get(s3journal.entry_name(1)) == line(1, "theirs")


def test_a_put_that_never_arrived_is_sent_again(backend):
    lose_reply(backend, "before-call.s3.PutObject")  # fails before it is sent
    log = backend.journal()
    log.append(1, line(1, "ours"))
    assert list(log.lines()) == [line(1, "ours")]


def test_a_lost_reply_with_the_server_gone_is_unavailable(backend):
    lose_reply(backend, "after-call.s3.PutObject")
    lose_reply(backend, "before-call.s3.GetObject")
    with pytest.raises(BackendUnavailableError, match="cannot be reached"):
        backend.journal().append(1, line(1, "ours"))


def test_a_create_retried_by_botocore_after_its_first_try_landed_is_ours(backend, s3_env):
    """The first try stores the object and its reply is lost; botocore sends the PUT
    again, which the server refuses (412): the object holds these bytes, so the
    create succeeded. Another writer's bytes would still be refused."""
    def land_then_lose(request, **kwargs):
        if not landed:
            landed.append(request.url)
            key = request.url.split(f"/{backend.bucket}/", 1)[1]
            s3_env.client().put_object(Bucket=backend.bucket, Key=key, Body=request.body)
            raise botocore.exceptions.ConnectionClosedError(endpoint_url=backend.endpoint)
        return None
    landed = []
    backend.client.meta.events.register("before-send.s3.PutObject", land_then_lose)
    backend.put_if_absent("packs/000000/00000001.pack", b"ours")
    assert landed and backend.get("packs/000000/00000001.pack") == b"ours"
    with pytest.raises(ObjectExistsError):
        backend.put_if_absent("packs/000000/00000001.pack", b"theirs")


def test_a_racing_create_answered_409_is_tried_again(backend):
    """AWS may answer a create racing another with 409 ConditionalRequestConflict (moto
    never does: the reply is made at the client, once)."""
    sent = []

    def conflict_once(request, **kwargs):
        sent.append(request.url)
        if len(sent) == 1:
            body = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>"
                    b"ConditionalRequestConflict</Code><Message>racing</Message></Error>")
            return AWSResponse(request.url, 409, {}, _Raw(body))
        return None
    backend.client.meta.events.register("before-send.s3.PutObject", conflict_once)
    backend.put_if_absent("packs/000000/00000001.pack", b"p")
    assert len(sent) == 2 and backend.get("packs/000000/00000001.pack") == b"p"


def test_the_last_entry_is_taken_back_only_while_it_is_last(machines):
    first, second = machines(2)
    mine, theirs = first.journal(), second.journal()
    mine.append(1, line(1, "one"))
    mine.append(2, line(2, "two"))
    mine.remove_last(2)
    assert mine.last() == line(1, "one") and theirs.last() == line(1, "one")
    mine.append(2, line(2, "two again"))
    theirs.append(3, line(3, "three"))
    with pytest.raises(StoreError, match="cannot be taken back: another writer"):
        mine.remove_last(2)
    assert [json.loads(x)["seq"] for x in theirs.lines()] == [1, 2, 3]


def test_a_machine_sees_an_entry_taken_back_elsewhere(machines, monkeypatch):
    """The last entry a machine knew is taken back by its writer: `last` notices,
    and so does the segment that ended with it."""
    monkeypatch.setattr(s3journal, "SEGMENT", 2)
    first, second = machines(2)
    mine, theirs = first.journal(), second.journal()
    mine.append(1, line(1, "one"))
    mine.append(2, line(2, "two"))
    assert theirs.last() == line(2, "two")
    assert first.list("journal/segments/") != []
    mine.remove_last(2)
    assert theirs.last() == line(1, "one")
    assert first.list("journal/segments/") == []
    mine.append(2, line(2, "two again"))
    assert theirs.last() == line(2, "two again")
    mine.remove_last(2)
    mine.append(2, line(2, "two, third time"))  # the same seq, other bytes: another ETag
    assert theirs.last() == line(2, "two, third time")


# -- writers --------------------------------------------------------------------------------------
def test_a_writer_bigger_than_a_part_uploads_parts_as_they_fill(backend, s3_env):
    backend.part_size = 5 * MiB  # S3's smallest part
    writer = backend.open_writer("packs/000000/00000001.pack")
    pieces = [bytes([n]) * MiB for n in range(12)]
    for piece in pieces:
        writer.write(piece)
        assert writer.buffered < backend.part_size  # memory bounded by one part
    assert writer.size == 12 * MiB
    assert backend.list("packs/") == []  # nothing visible before the commit
    assert len(uploads(s3_env, backend)) == 1
    writer.commit()
    assert backend.get("packs/000000/00000001.pack") == b"".join(pieces)
    assert backend.stat("packs/000000/00000001.pack") == 12 * MiB
    assert uploads(s3_env, backend) == []


def test_an_aborted_multipart_writer_leaves_nothing(backend, s3_env):
    backend.part_size = 5 * MiB
    writer = backend.open_writer("packs/000000/00000001.pack")
    writer.write(b"x" * (6 * MiB))
    writer.abort()
    writer.abort()
    assert backend.list("") == [] and uploads(s3_env, backend) == []


def test_a_completion_whose_first_try_landed_is_ours(backend, s3_env):
    """The first CompleteMultipartUpload completes the object and its reply is lost;
    botocore sends it again and is refused (as AWS may: 412): the object's ETag is the
    one this upload's parts make, so the commit succeeded."""
    def land_then_refuse(request, **kwargs):
        tries.append(request.url)
        if len(tries) == 1:
            backend.client._endpoint.http_session.send(request)  # the real server
            raise botocore.exceptions.ConnectionClosedError(endpoint_url=backend.endpoint)
        body = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>PreconditionFailed"
                b"</Code><Message>exists</Message></Error>")
        return AWSResponse(request.url, 412, {}, _Raw(body))
    tries = []
    backend.client.meta.events.register("before-send.s3.CompleteMultipartUpload",
                                        land_then_refuse)
    backend.part_size = 5 * MiB
    writer = backend.open_writer("packs/000000/00000001.pack")
    writer.write(b"x" * (6 * MiB))
    writer.commit()
    assert len(tries) == 2
    assert backend.get("packs/000000/00000001.pack") == b"x" * (6 * MiB)


def test_a_part_that_cannot_be_sent_fails_the_commit_and_leaves_nothing(backend, s3_env):
    backend.part_size = 5 * MiB
    lose_reply(backend, "before-call.s3.UploadPart")
    writer = backend.open_writer("packs/000000/00000001.pack")
    writer.write(b"x" * (6 * MiB))  # the part fails in the background
    with pytest.raises(BackendUnavailableError, match="cannot be reached"):
        writer.commit()
    assert backend.list("") == [] and uploads(s3_env, backend) == []


def test_a_multipart_commit_never_replaces_an_object(backend, s3_env):
    backend.part_size = 5 * MiB
    writer = backend.open_writer("packs/000000/00000001.pack")
    writer.write(b"x" * (6 * MiB))
    backend.put_if_absent("packs/000000/00000001.pack", b"first")  # another writer
    with pytest.raises(ObjectExistsError):
        writer.commit()
    assert backend.get("packs/000000/00000001.pack") == b"first"
    assert uploads(s3_env, backend) == []


def test_stale_uploads_are_aborted_by_age(machines, s3_env, s3_store_url):
    """moto dates every upload in 2010: one 16 years old is stale after an hour and
    not after a century. An upload of another prefix is left alone."""
    backend = machines(1)[0]
    backend.part_size = 5 * MiB
    writer = backend.open_writer("packs/000000/00000001.pack")
    writer.write(b"x" * (5 * MiB))  # a killed writer: its upload stays
    elsewhere = S3Backend(s3_store_url + "-other")
    elsewhere.part_size = 5 * MiB
    elsewhere.open_writer("packs/000000/00000001.pack").write(b"y" * (5 * MiB))
    assert backend.abort_stale_uploads(older_than=100 * 365 * 86400) == 0
    assert len(uploads(s3_env, backend)) == 1
    assert backend.abort_stale_uploads(older_than=3600) == 1
    assert uploads(s3_env, backend) == []
    assert len(uploads(s3_env, elsewhere)) == 1
    writer.abort()  # gone already: no error
    elsewhere.close()


# -- a server that cannot be used -------------------------------------------------------------------
def test_a_closed_port_is_unavailable(s3_store_url, monkeypatch):
    port = free_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("CKPTFS_S3_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("CKPTFS_S3_CONNECT_TIMEOUT", "2")
    backend = S3Backend(s3_store_url)
    try:
        for call in (lambda: backend.get("ckptfs.toml"), lambda: backend.list("packs/"),
                     lambda: backend.put_if_absent("a", b"x"),
                     lambda: backend.journal().last()):
            with pytest.raises(BackendUnavailableError, match=f"127.0.0.1:{port}"):
                call()
        # Not a root problem ("no store here"): the machine may go on from its cache.
        with pytest.raises(BackendUnavailableError, match=f"127.0.0.1:{port}"):
            backend.root_problem()
    finally:
        backend.close()


def test_a_missing_bucket_is_a_clear_error(s3_env):
    backend = S3Backend("s3://ckptfs-no-such-bucket/store")
    try:
        assert backend.root_problem() == ": no such bucket"
        for call in (lambda: backend.get("ckptfs.toml"), lambda: backend.stat("ckptfs.toml"),
                     lambda: backend.list("packs/"), lambda: backend.put("a", b"x")):
            with pytest.raises(NoSuchBucketError, match="no such bucket 'ckptfs-no-such-bucket'"):
                call()
    finally:
        backend.close()


@pytest.mark.parametrize("status, code, error", [
    (403, "AccessDenied", PermissionError),
    (403, "InvalidAccessKeyId", PermissionError),
    (403, "SignatureDoesNotMatch", PermissionError),
    (503, "SlowDown", BackendUnavailableError),
    (400, "InvalidArgument", OSError),
])
def test_refusals_are_the_backend_s_errors(machines, monkeypatch, status, code, error):
    """Replies moto does not give (it takes any credentials) are made at the client:
    each is one clear error, never a botocore exception."""
    monkeypatch.setenv("CKPTFS_S3_MAX_ATTEMPTS", "1")  # botocore would try a 503 again
    backend = machines(1)[0]
    answer(backend, "GetObject", status, code)
    with pytest.raises(error) as raised:
        backend.get("ckptfs.toml")
    assert not isinstance(raised.value, botocore.exceptions.BotoCoreError)
    assert backend.location in str(raised.value)
    if error is PermissionError:
        assert "AWS_ACCESS_KEY_ID" in str(raised.value)


def test_an_access_denied_bucket_is_the_root_problem(backend):
    answer(backend, "HeadBucket", 403, "AccessDenied")
    assert backend.root_problem() == ": access denied"


def test_no_credentials_is_a_permission_error(s3_store_url, monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no network beyond loopback
    backend = S3Backend(s3_store_url)
    try:
        with pytest.raises(PermissionError, match="Unable to locate credentials"):
            backend.get("ckptfs.toml")
        assert "credentials" in backend.root_problem()
    finally:
        backend.close()


def test_a_reachable_bucket_has_no_problem(backend):
    assert backend.root_problem() is None
    with pytest.raises(ObjectMissingError):
        backend.stat("ckptfs.toml")  # a HEAD's 404 in a bucket that is there


# -- the probe of conditional writes -------------------------------------------------------------
def test_moto_honours_conditional_writes(backend):
    assert backend.probe_conditional_writes() is None
    assert backend.list("") == []  # the probe cleans up


class IgnoresConditions(S3Backend):
    """A server that ignores If-None-Match cannot be had here: this backend's creates
    are plain PUTs, which is what such a server does with them."""

    def put_if_absent(self, name, data):
        self.put(name, data)


def test_a_server_ignoring_conditional_writes_is_refused(s3_store_url, tmp_path):
    backend = IgnoresConditions(s3_store_url)
    try:
        problem = backend.probe_conditional_writes()
        assert problem == (f"{s3_store_url} does not honour conditional writes "
                           "(If-None-Match: *): two machines could overwrite each other's "
                           "commits, so ckptfs refuses it as a store")
        assert backend.list("") == []
    finally:
        backend.close()


# -- helpers -----------------------------------------------------------------------------------------
class _Raw:
    """The raw body of a reply made at the client."""

    def __init__(self, body: bytes):
        self.body = body

    def stream(self, *args, **kwargs):
        yield self.body


def answer(backend: S3Backend, operation: str, status: int, code: str) -> None:
    """Every `operation` of the backend is answered at the client with S3's error
    `code`, however often botocore tries."""
    def reply(request, **kwargs):
        body = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
                f"<Message>made by the test</Message></Error>").encode()
        return AWSResponse(request.url, status, {}, _Raw(body))
    backend.client.meta.events.register(f"before-send.s3.{operation}", reply)


def lose_reply(backend: S3Backend, event: str) -> None:
    """The next request at `event` ends in a connection error: at `after-call…` once
    the server has answered (a lost reply), at `before-call…` before it is sent."""
    fired = []

    def fail_once(**kwargs):
        if not fired:
            fired.append(True)
            raise botocore.exceptions.ConnectionClosedError(endpoint_url=backend.endpoint)
    backend.client.meta.events.register(event, fail_once)


def count_requests(backend: S3Backend, operation: str) -> list:
    sent = []
    backend.client.meta.events.register(f"before-call.s3.{operation}",
                                        lambda **kwargs: sent.append(1))
    return sent


def start_afters(backend: S3Backend) -> list:
    """The StartAfter of each listing the backend sends from now on."""
    seen = []
    backend.client.meta.events.register(
        "before-call.s3.ListObjectsV2",
        lambda params, **kwargs: seen.append(params["query_string"].get("start-after")))
    return seen


def uploads(s3_env, backend: S3Backend) -> list[str]:
    """The keys of the multipart uploads under the backend's prefix, from the server."""
    reply = s3_env.client().list_multipart_uploads(Bucket=backend.bucket,
                                                   Prefix=backend.prefix + "/")
    return [upload["Key"] for upload in reply.get("Uploads", [])]
