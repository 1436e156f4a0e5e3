"""An alias (latest, best, production, …) stands for the version it names wherever a
command reads a version: show, get, cat, ls, export, lineage, tag and diff. Commands
that name a new or doomed version (import, delete) take version names only."""
import json
import tarfile

import pytest

from tests.helpers.cli import run_cli_checked
from tests.helpers.samples import make_checkpoint


@pytest.fixture(scope="module")
def tagged(tmp_path_factory):
    """p/r/v1 (tagged production) and p/r/v2 (latest), imported through the CLI."""
    root = tmp_path_factory.mktemp("tagged")
    store = str(root / "store")
    run_cli_checked("init", store)
    run_cli_checked("import", store, make_checkpoint(root / "v1", step=100), "p/r/v1")
    run_cli_checked("import", store, make_checkpoint(root / "v2", step=200), "p/r/v2")
    run_cli_checked("tag", store, "p/r/v1", "production")
    return store


def stdout(*args, rc=0) -> str:
    return run_cli_checked(*args, rc=rc).stdout.decode()


def stderr(*args, rc=1) -> str:
    return run_cli_checked(*args, rc=rc).stderr.decode()


def test_show_of_an_alias_is_the_sidecar_of_its_version(tagged):
    assert json.loads(stdout("show", tagged, "p/r/latest"))["version"] == "v2"
    assert json.loads(stdout("show", tagged, "p/r/production"))["version"] == "v1"


def test_get_of_an_alias_restores_its_version(tagged, tmp_path):
    out = stdout("get", tagged, "p/r/production", tmp_path / "got")
    assert out.startswith("restored 6 files of p/r/v1, ")
    state = json.loads((tmp_path / "got" / "trainer_state.json").read_text())
    assert state["global_step"] == 100


def test_cat_and_ls_read_through_an_alias(tagged):
    assert json.loads(stdout("cat", tagged, "p/r/latest/trainer_state.json"))["global_step"] == 200
    assert "config.json" in stdout("ls", tagged, "p/r/production").split()


def test_export_of_an_alias_exports_its_version(tagged, tmp_path):
    dest = tmp_path / "prod.tar"
    assert stdout("export", tagged, "p/r/production", dest).startswith(f"exported p/r/v1 to {dest}")
    with tarfile.open(dest) as tar:
        sidecar = next(m for m in tar.getnames() if m.endswith(".json") and "v1" in m)
        assert json.load(tar.extractfile(sidecar))["version"] == "v1"


def test_lineage_and_tag_take_an_alias(tagged):
    assert "* p/r/v2 [latest]" in stdout("lineage", tagged, "p/r/latest").splitlines()
    assert stdout("tag", tagged, "p/r/latest", "staging").strip() == "p/r/staging -> v2"
    assert json.loads(stdout("show", tagged, "p/r/staging"))["version"] == "v2"


def test_a_name_that_is_neither_a_version_nor_an_alias_is_one_line(tagged, tmp_path):
    assert "no version p/r/nope" in stderr("show", tagged, "p/r/nope")
    assert "no version p/r/nope" in stderr("get", tagged, "p/r/nope", tmp_path / "x")
    assert "reserved" in stderr("import", tagged, tmp_path, "p/r/latest")
