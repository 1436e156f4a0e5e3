"""What the test_scan.py files of several levels (unit, store, cli, mount) share."""
import os
import pickle
import zipfile
from types import SimpleNamespace

import pytest

from ckptfs.meta.scan import scan_file
from tests.helpers.pickles import (
    Torch,
    break_directory,
    patch_zip,
    stand_in_class,
    stand_in_dict_class,
    stand_in_enum,
    torch_zip,
    without_directory,
    zip_bytes,
)
from tests.helpers.samples import make_hf_checkpoint


class CallsOsSystem:
    """Pickled as `os.system("echo pwned")`: what a malicious checkpoint holds."""

    def __reduce__(self):
        return os.system, ("echo pwned",)


def evil_state(protocol: int = 2) -> bytes:
    """An optimizer state_dict with the payload tucked inside."""
    return pickle.dumps({"state": {0: {"step": 10}}, "param_groups": [{"lr": 0.1}],
                         "hook": CallsOsSystem()}, protocol=protocol)


def write(path, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


def scanned(tmp_path, data: bytes, name: str = "x.pkl"):
    return scan_file(write(tmp_path / name, data), name)


@pytest.fixture
def fake_torch(monkeypatch):
    """Stand-ins for torch's globals, so the real pickler writes the ones torch.save's
    pickles name (tests/helpers/pickles.py): pickles made with them are what a real
    state_dict's data.pkl holds."""
    return Torch(monkeypatch)


@pytest.fixture
def trainer_classes(monkeypatch):
    """Stand-ins for what a Trainer's training_args.bin names."""
    return SimpleNamespace(
        TrainingArguments=stand_in_class(monkeypatch,
                                         "transformers.training_args.TrainingArguments"),
        PartialState=stand_in_class(monkeypatch, "accelerate.state.PartialState"),
        SchedulerType=stand_in_enum(monkeypatch, "transformers.trainer_utils.SchedulerType",
                                    ["linear"]),
        DistributedType=stand_in_enum(monkeypatch, "accelerate.utils.dataclasses.DistributedType",
                                      ["NO"]),
        AttributeDict=stand_in_dict_class(monkeypatch,
                                          "lightning.fabric.utilities.data.AttributeDict"))


def training_args(classes, **fields):
    args, state = classes.TrainingArguments(), classes.PartialState()
    state.__dict__.update(distributed_type=classes.DistributedType("NO"))
    args.__dict__.update(lr_scheduler_type=classes.SchedulerType("linear"),
                         distributed_state=state, hparams=classes.AttributeDict(lr=0.1), **fields)
    return args


def zip_variants(payload: bytes) -> dict[str, bytes]:
    """A torch zip holding `payload` as archive/data.pkl, made unreadable to zipfile in
    each way a permissive loader shrugs off."""
    members = {"archive/data.pkl": payload, "archive/byteorder": b"little"}
    stored, deflated = zip_bytes(members), zip_bytes(members, zipfile.ZIP_DEFLATED)
    return {"encrypted flag": patch_zip(stored, flags=0x1),
            "patched-data flag": patch_zip(stored, flags=0x20),
            "deflated, encrypted flag": patch_zip(deflated, flags=0x1),
            "bad CRC": patch_zip(stored, crc_xor=0xFFFF),
            "deflated, bad CRC": patch_zip(deflated, crc_xor=0x1),
            "bzip2, bad CRC": patch_zip(zip_bytes(members, zipfile.ZIP_BZIP2), crc_xor=0x1),
            "local flags only": patch_zip(stored, flags=0x21, central=False),
            # the local header names another file than the directory (zipfile refuses)
            "names differ": stored.replace(b"archive/data.pkl", b"archive/data.txt", 1),
            "broken central directory": break_directory(stored),
            "no central directory": without_directory(deflated)}


def evil_checkpoint(path, step: int = 10) -> str:
    """A Hugging Face Trainer checkpoint whose optimizer.pt (a torch zip) calls os.system."""
    make_hf_checkpoint(path, step)
    torch_zip(os.path.join(path, "optimizer.pt"), {"optimizer/data.pkl": evil_state()})
    return str(path)
