"""A version imported from an export reads the same through a real mount as the original.
Export and import themselves: tests/cli/test_export.py."""
import json
import subprocess

from tests.helpers import export as helpers
from tests.helpers.export import ck

source = helpers.source  # a fixture (tests/helpers/export.py)
target = helpers.target  # a fixture (tests/helpers/export.py)


# -- through the mount ----------------------------------------------------------------------
def test_an_imported_version_reads_the_same_through_the_mount(source, tmp_path, target, mount):
    ck("export", source.store, "p/r/v1", tmp_path / "v1.tar")
    ck("import", target, tmp_path / "v1.tar", "p/r/v1")
    there, here = mount(source.store), mount(target)
    diff = subprocess.run(["diff", "-r", "--no-dereference", f"{there}/projects/p/r/v1",
                           f"{here}/projects/p/r/v1"], capture_output=True, text=True)
    assert diff.returncode == 0, diff.stdout + diff.stderr
    with open(f"{here}/projects/p/r/v1.json") as f:
        sidecar = json.load(f)
    with open(f"{there}/projects/p/r/v1.json") as f:
        original = json.load(f)
    assert sidecar["digest"] == original["digest"] == sidecar["imported_from"]["digest"]
    assert sidecar["imported_from"]["store"] == source.store
