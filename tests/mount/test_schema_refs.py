"""The daemon's seal against a project schema that refers to itself or a sidecar nested
too deeply: the `.error` file gives the one-line reason and the daemon goes on sealing.
The schema rules and the CLI: tests/cli/test_schema_refs.py."""
import os

from ckptfs.store import Store
from tests.helpers.inbox import sh, wait_sealed
from tests.helpers.samples import make_checkpoint
from tests.helpers.schema_refs import GAVE_UP, SECRET, SELF, secret_file
from tests.helpers.stores import new_store
from tests.helpers.waiting import wait_for


def test_the_daemon_writes_the_reason_and_goes_on_sealing(tmp_path, mount):
    store = new_store(tmp_path)
    mnt = mount(store, "--seal-after", "0.5")
    with Store.open(store) as s:
        s.set_project_schema("selfref", SELF)
        s.set_project_schema("fetch", {"$ref": f"file://{secret_file(tmp_path)}"})
    for project in ("selfref", "fetch", "plain"):
        src = make_checkpoint(tmp_path / project / "v1")
        copy = sh(f"mkdir -p {mnt}/inbox/{project}/r && cp -r {src} {mnt}/inbox/{project}/r/")
        assert copy.returncode == 0, copy.stderr
    wait_sealed(mnt, "plain/r/v1")
    for project, reason in (("selfref", GAVE_UP), ("fetch", "is not inside the schema")):
        error_file = f"{mnt}/inbox/{project}/r/v1.error"
        wait_for(lambda path=error_file: os.path.exists(path), error_file)
        with open(error_file) as f:
            text = f.read()
        assert reason in text and SECRET not in text and "Traceback" not in text, text
    with open(os.path.join(store, "logs", "mount.log"), errors="replace") as f:
        log = f.read()
    assert "Traceback" not in log and "RecursionError" not in log
