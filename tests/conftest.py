"""Fixtures every level uses: a store on disk and a sample checkpoint. The kernel mount's
fixture is in tests/mount/conftest.py; plain helpers are in tests/helpers/."""
import pytest

from ckptfs.store import Store
from tests.helpers.cli import run_cli
from tests.helpers.samples import make_checkpoint


@pytest.fixture
def store_path(tmp_path):
    return str(tmp_path / "store")


@pytest.fixture
def store(store_path):
    s = Store.init(store_path)
    yield s
    s.close()


@pytest.fixture
def checkpoint(tmp_path):
    """A sample checkpoint directory (see samples.make_checkpoint)."""
    return make_checkpoint(tmp_path / "src" / "step-100", step=100)


@pytest.fixture
def cli():
    return run_cli


# -- object storage: a real S3 server (moto_server) -------------------------------------------
@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    from tests.helpers.s3 import MotoServer
    server = MotoServer(str(tmp_path_factory.mktemp("moto") / "moto_server.log"))
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """The endpoint and credentials in the environment (for this process and the
    `ckptfs` processes it starts), as a user would set them."""
    from tests.helpers.s3 import s3_environment
    for name, value in s3_environment(s3_server.endpoint).items():
        monkeypatch.setenv(name, value)
    return s3_server


@pytest.fixture
def s3_store_url(s3_env):
    """`s3://BUCKET/store`: a prefix in a bucket of this test's own, not yet a store."""
    return f"s3://{s3_env.new_bucket()}/store"


# -- object storage: a persistent S3 server that checks signatures (SeaweedFS) -----------------
@pytest.fixture(scope="session")
def seaweed_server(tmp_path_factory):
    """`weed mini` on free loopback ports, its data in a directory of the session; a test
    may stop, kill and restart it (the fixture leaves it running for the next test)."""
    from tests.helpers.seaweed import SeaweedServer
    server = SeaweedServer(str(tmp_path_factory.mktemp("seaweed")))
    yield server
    server.discard()


@pytest.fixture
def seaweed_env(seaweed_server, monkeypatch):
    """SeaweedFS's endpoint and the credentials it checks, in the environment (for this
    process and the `ckptfs` processes it starts), as a user would set them."""
    if not seaweed_server.running:
        seaweed_server.restart()
    for name, value in seaweed_server.s3_environment().items():
        monkeypatch.setenv(name, value)
    return seaweed_server


@pytest.fixture
def seaweed_store_url(seaweed_env):
    """`s3://BUCKET/store` on SeaweedFS: a prefix in a bucket of this test's own, not yet
    a store. The bucket goes at the end (its volumes are freed for the next tests)."""
    bucket = seaweed_env.new_bucket()
    yield f"s3://{bucket}/store"
    if not seaweed_env.running:
        seaweed_env.restart()
    seaweed_env.delete_bucket(bucket)
