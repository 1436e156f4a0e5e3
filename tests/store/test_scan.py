"""The pickle scan at seal on a real store: the dangerous globals of framework pickles are
still found unsafe when the version is archived. The scan itself: tests/unit/test_scan.py."""
import os
import pickle
import subprocess

import pytest

from ckptfs.meta.scan import UnsafePickleError, scan_directory
from ckptfs.meta.seal import archive_directory
from ckptfs.meta.sidecar import sidecar_of as sidecar_of_version
from ckptfs.store import Store
from tests.helpers import scan as helpers
from tests.helpers.pickles import torch_zip
from tests.helpers.scan import training_args

fake_torch = helpers.fake_torch  # a fixture (tests/helpers/scan.py)
trainer_classes = helpers.trainer_classes  # a fixture (tests/helpers/scan.py)


class Touches:
    """Unpickling this runs `touch MARKER`, through the callable given."""

    def __init__(self, call, marker):
        self.call, self.marker = call, marker

    def __reduce__(self):
        return self.call, (f"touch {self.marker}",)


def test_dangerous_globals_in_framework_pickles_are_still_unsafe(tmp_path, fake_torch,
                                                                trainer_classes):
    marker = tmp_path / "RAN"
    calls = [os.system, eval, exec, subprocess.call, subprocess.Popen, getattr]
    evil = training_args(trainer_classes, hooks=[Touches(call, marker) for call in calls])
    evil.hparams["callback"] = Touches(os.popen, marker)
    version = tmp_path / "v"
    version.mkdir()
    torch_zip(version / "training_args.bin", {"training_args/data.pkl": pickle.dumps(evil, 2)})
    fake_torch.save({"hyper_parameters": trainer_classes.AttributeDict(
        x=Touches(os.system, marker))}, version / "last.ckpt")
    result = scan_directory(str(version))
    assert result["status"] == "unsafe"
    assert {(f["file"], f["global"]) for f in result["findings"]} == {
        ("training_args.bin", "posix.system"), ("training_args.bin", "builtins.eval"),
        ("training_args.bin", "builtins.exec"), ("training_args.bin", "subprocess.call"),
        ("training_args.bin", "subprocess.Popen"), ("training_args.bin", "builtins.getattr"),
        ("training_args.bin", "os.popen"), ("last.ckpt", "posix.system")}
    with Store.init(str(tmp_path / "store")) as store:
        store.update_project_settings("p", {"unsafe_pickles": "refuse"})
        with pytest.raises(UnsafePickleError):
            archive_directory(store, str(version), "p", "r", "v1")
        store.update_project_settings("p", {"unsafe_pickles": "warn"})
        archive_directory(store, str(version), "p", "r", "v1")  # extraction reads them too
        assert sidecar_of_version(store, "p", "r", "v1")["scan"]["status"] == "unsafe"
    assert not marker.exists(), "a pickle was run"
