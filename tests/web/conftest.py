"""Fixtures of the dashboard's tests: the demo store (tests/helpers/web.py, roles
enforced: nobody reads nlp and vision, not secret), `ckptfs serve` on it as root (admin
of every project) and as nobody, and one headless chromium for a module."""
import os
import shutil

import pytest

from tests.helpers.access import public_dir
from tests.helpers.web import CHROMEDRIVER, CHROMIUM, NOBODY, build_store, chromium, serving


@pytest.fixture(scope="module")
def demo_store():
    base = public_dir()
    yield build_store(os.path.join(base, "store"))
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def server(demo_store):
    """The dashboard as root, who made the store (admin of `*`)."""
    with serving(demo_store.path) as address:
        yield address


@pytest.fixture(scope="module")
def nobody_server(demo_store):
    """The dashboard run by nobody, a reader of nlp and vision only."""
    if shutil.which("setpriv") is None or os.getuid() != 0:
        pytest.skip("needs root and setpriv (util-linux) to run the server as nobody")
    with serving(demo_store.path, uid=NOBODY) as address:
        yield address


@pytest.fixture(scope="module")
def browser():
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip("needs Debian's chromium and chromium-driver (scripts/bootstrap)")
    pytest.importorskip("selenium")
    driver = chromium()
    yield driver
    driver.quit()
