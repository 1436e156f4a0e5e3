"""`ckptfs` processes of many machines on one store on object storage (a bucket of the
real S3 server; each machine a cache directory of its own): a cache rebuilt from the
bucket answers like the original, writers killed mid-upload or between their packs and
their journal entry leave nothing visible, two writers racing for one name, and the
errors of `init` (no bucket, a store already there, no server)."""
import os
import signal
import subprocess

import pytest

from tests.helpers.object_storage import (
    Machine, Relay, after, environment_with, journal_entry_names, listing, machines,
    multipart_uploads, object_names, packs_and_indexes, set_gc_grace)
from tests.helpers.s3 import free_port
from tests.helpers.samples import make_checkpoint
from tests.helpers.waiting import wait_for


def one_line_error(proc) -> str:
    """The error a user sees: exactly one `ckptfs: error: …` line."""
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ckptfs: error: "), lines
    return lines[0]


# -- init -------------------------------------------------------------------------------------
def test_init_of_a_bucket_that_does_not_exist(s3_env, tmp_path):
    machine = Machine("s3://no-such-bucket-ckptfs/store", tmp_path / "cache")
    error = one_line_error(machine.ckptfs("init", rc=1))
    assert "no-such-bucket-ckptfs" in error and "no such bucket" in error


def test_init_of_a_prefix_that_already_holds_a_store(s3_server, s3_store_url, tmp_path):
    a, b = machines(s3_store_url, tmp_path, "a", "b")
    a.ckptfs("init")
    a.ckptfs("import", make_checkpoint(tmp_path / "src" / "v1", step=1), "p/r/v1")
    before = object_names(s3_server, s3_store_url)
    error = one_line_error(b.ckptfs("init", rc=1))
    assert s3_store_url in error and "already" in error
    assert object_names(s3_server, s3_store_url) == before
    assert "p/r/v1" in b.out("log")


def test_init_with_a_wrong_secret_key(request, tmp_path):
    """On SeaweedFS, which checks signatures (moto accepts any key); skipped where its
    fixture is not there."""
    try:
        url = request.getfixturevalue("seaweed_store_url")
    except pytest.FixtureLookupError:
        pytest.skip("the SeaweedFS fixture (seaweed_store_url) is not there")
    env = environment_with(AWS_SECRET_ACCESS_KEY="not-the-secret")
    error = one_line_error(Machine(url, tmp_path / "cache").ckptfs("init", rc=1, env=env))
    assert url in error and ("access denied" in error or "SignatureDoesNotMatch" in error), error


def test_init_of_an_endpoint_that_does_not_answer(s3_store_url, tmp_path):
    env = environment_with(AWS_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}",
                           CKPTFS_S3_MAX_ATTEMPTS=1, CKPTFS_S3_CONNECT_TIMEOUT=2)
    proc = Machine(s3_store_url, tmp_path / "cache").ckptfs("init", rc=1, env=env)
    error = one_line_error(proc)
    assert "cannot be reached" in error and "127.0.0.1" in error


def test_commands_of_a_machine_whose_server_is_down(s3_server, s3_store_url, tmp_path):
    """What the machine's cache can answer is answered (its index, the chunk cache);
    everything else is a one-line error that says the server cannot be reached (and not
    that the store should be created)."""
    relay = Relay(s3_server.port)
    try:
        env = environment_with(AWS_ENDPOINT_URL=relay.endpoint, CKPTFS_S3_MAX_ATTEMPTS=1)
        machine = Machine(s3_store_url, tmp_path / "cache")
        machine.ckptfs("init", env=env)
        src = make_checkpoint(tmp_path / "src" / "v1", step=1)
        machine.ckptfs("import", src, "p/r/v1", env=env)
        config = machine.ckptfs("cat", "p/r/v1/config.json", env=env).stdout  # now cached
        machine.ckptfs("import", make_checkpoint(tmp_path / "src" / "v2", step=2), "p/r/v2",
                       env=env)  # written, never read: not in the chunk cache
        relay.down()
        assert "v1" in machine.ckptfs("ls", "p/r", env=env).stdout.decode()
        assert machine.ckptfs("cat", "p/r/v1/config.json", env=env).stdout == config
        for command, *args in (("cat", "p/r/v2/optimizer.pt"), ("import", src, "p/r/v3"),
                               ("tag", "p/r/v1", "production")):
            error = one_line_error(machine.ckptfs(command, *args, rc=None, env=env))
            assert f"{s3_store_url} cannot be reached ({relay.endpoint}" in error, error
            assert "ckptfs init" not in error, error
        fresh = Machine(s3_store_url, tmp_path / "fresh")  # nothing cached: nothing to say
        error = one_line_error(fresh.ckptfs("ls", "p/r", rc=1, env=env))
        assert f"{s3_store_url} cannot be reached" in error and "ckptfs init" not in error
    finally:
        relay.close()


# -- a cache rebuilt from the bucket ----------------------------------------------------------
def test_a_cache_rebuilt_from_the_bucket_answers_like_the_original(s3_server, s3_store_url,
                                                                   tmp_path):
    original, rebuilt = machines(s3_store_url, tmp_path, "original", "rebuilt")
    original.ckptfs("init")
    for step in (1, 2, 3):
        src = make_checkpoint(tmp_path / "src" / f"v{step}", step=step)
        original.ckptfs("import", src, f"p/r/v{step}")
    original.ckptfs("import", make_checkpoint(tmp_path / "src" / "w1", step=7), "p/w/v1")
    original.ckptfs("tag", "p/r/v2", "production")
    original.ckptfs("delete", "p/r/v1", "--reason", "superseded")
    queries = [("ls",), ("ls", "p"), ("ls", "p/r"), ("ls", "p/r/v2"), ("show", "p/r/v3"),
               ("find", "--format", "json"), ("log",), ("tags", "p/r"), ("audit",), ("audit verify",)]
    relay = Relay(s3_server.port)  # what the new cache downloads goes through it
    try:
        env = environment_with(AWS_ENDPOINT_URL=relay.endpoint)
        answers = [rebuilt.out(command, *args, env=env) for command, *args in queries]
        built_with = relay.bytes_down
        # the relay does count pack bytes: a file's bytes are in a pack (random floats,
        # stored about as large as they are)
        cat = rebuilt.ckptfs("cat", "p/r/v2/optimizer.pt", env=env).stdout
        assert relay.bytes_down - built_with > len(cat) / 2
    finally:
        relay.close()
    assert answers == [original.out(command, *args) for command, *args in queries]
    assert "production" in answers[7] and "v1" not in answers[2].split()
    assert cat == (tmp_path / "src" / "v2" / "optimizer.pt").read_bytes()
    pack_bytes = sum(info["Size"] for info in listing(s3_server, s3_store_url)
                     if info["Key"].endswith(".pack"))
    # the new index came from the .idx objects, the journal and each version's manifest
    # record (a ranged GET): far less than the packs
    assert built_with < pack_bytes / 10, (built_with, pack_bytes)


# -- writers racing for one name ----------------------------------------------------------------
def test_two_imports_racing_for_one_name_one_wins(s3_server, s3_store_url, tmp_path):
    a, b = machines(s3_store_url, tmp_path, "a", "b")
    a.ckptfs("init")
    go = tmp_path / "go"
    sources = [make_checkpoint(tmp_path / f"src-{seed}" / "v1", step=1, seed=seed)
               for seed in (1, 2)]
    racers = [subprocess.Popen(after(go, machine.command_line("import", src, "p/r/v1")),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
              for machine, src in zip((a, b), sources)]
    go.touch()
    results = [(p.wait(timeout=120), p.stderr.read().decode()) for p in racers]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 1], results
    error = next(err for code, err in results if code == 1)
    assert "Traceback" not in error and len(error.strip().splitlines()) == 1, error
    assert "already exists" in error or "created by another import meanwhile" in error, error
    # one version, and every machine sees the same one; the chain has no second seal
    assert a.out("log") == b.out("log") and a.out("log").count("version p/r/v1") == 1
    assert a.out("audit verify").startswith("journal ok: 2 entries")


# -- writers killed ----------------------------------------------------------------------------
def big_checkpoint(path, megabytes: int) -> str:
    """Random bytes (nothing to compress or deduplicate): a pack big enough to be sent
    as a multipart upload (parts of 16 MiB)."""
    os.makedirs(path)
    with open(os.path.join(path, "model.bin"), "wb") as f:
        for _ in range(megabytes):
            f.write(os.urandom(1 << 20))
    return str(path)


def kill_mid_upload(server, writer: Machine, src: str, ref: str):
    """`ckptfs import` killed (SIGKILL) once its pack's multipart upload has begun."""
    proc = subprocess.Popen(writer.command_line("import", src, ref),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: proc.poll() is not None or multipart_uploads(server, writer.url),
                 "a multipart upload of the import's pack")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the import ended before its upload was seen"


def assert_nothing_visible(server, url: str, versions_before: int = 0):
    """No version but those before, every pack whole (with its index object), and the
    journal holds only the entries before (init and the `versions_before` seals)."""
    names = object_names(server, url)
    packs, indexes = packs_and_indexes(names)
    assert packs == indexes, names
    assert len(journal_entry_names(names)) == 1 + versions_before, names


def test_a_writer_killed_mid_upload_leaves_no_version_and_no_partial_object(s3_server,
                                                                              s3_store_url,
                                                                              tmp_path):
    writer, reader = machines(s3_store_url, tmp_path, "writer", "reader")
    writer.ckptfs("init")
    kill_mid_upload(s3_server, writer, big_checkpoint(tmp_path / "big" / "v1", megabytes=48),
                    "p/r/v1")
    assert_nothing_visible(s3_server, s3_store_url)
    assert not packs_and_indexes(object_names(s3_server, s3_store_url))[0]
    assert multipart_uploads(s3_server, s3_store_url)  # unfinished: for gc to abort
    assert "p/r/v1" not in reader.out("log")
    one_line_error(reader.ckptfs("ls", "p/r/v1", rc=1))


def test_a_writer_killed_between_its_packs_and_its_journal_entry(s3_server, s3_store_url,
                                                                 tmp_path):
    writer, reader = machines(s3_store_url, tmp_path, "writer", "reader")
    writer.ckptfs("init")
    writer.ckptfs("import", make_checkpoint(tmp_path / "src" / "v1", step=1), "p/r/v1")
    crashed = writer.ckptfs("import", make_checkpoint(tmp_path / "src" / "v2", step=2),
                            "p/r/v2", rc=98, env=environment_with(
                                CKPTFS_COMMIT_CRASH_AT="before-journal"))
    assert crashed.returncode == 98
    assert_nothing_visible(s3_server, s3_store_url, versions_before=1)
    packs, _ = packs_and_indexes(object_names(s3_server, s3_store_url))
    assert len(packs) == 2  # v1's, and v2's orphan
    for machine in (writer, reader):
        assert machine.out("ls", "p/r").split() == ["v1"]
    assert reader.out("audit verify").startswith("journal ok: 2 entries")


def test_gc_removes_what_killed_writers_left_and_aborts_their_uploads(s3_server, s3_store_url,
                                                                      tmp_path):
    writer, other = machines(s3_store_url, tmp_path, "writer", "other")
    writer.ckptfs("init")
    src = make_checkpoint(tmp_path / "src" / "v1", step=1)
    writer.ckptfs("import", src, "p/r/v1")
    writer.ckptfs("import", make_checkpoint(tmp_path / "src" / "v2", step=2), "p/r/v2",
                  rc=98, env=environment_with(CKPTFS_COMMIT_CRASH_AT="before-journal"))
    kill_mid_upload(s3_server, writer, big_checkpoint(tmp_path / "big" / "v3", megabytes=24),
                    "p/r/v3")
    assert len(packs_and_indexes(object_names(s3_server, s3_store_url))[0]) == 2
    set_gc_grace(s3_server, s3_store_url, 0)

    other.ckptfs("gc")
    names = object_names(s3_server, s3_store_url)
    packs, indexes = packs_and_indexes(names)
    assert len(packs) == 1 and packs == indexes, names  # v1's alone
    assert not multipart_uploads(s3_server, s3_store_url)
    assert other.ckptfs("cat", "p/r/v1/optimizer.pt").stdout == \
        (tmp_path / "src" / "v1" / "optimizer.pt").read_bytes()
    assert other.out("verify").startswith("ok:")
