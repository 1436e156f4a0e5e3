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
