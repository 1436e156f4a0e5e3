"""meta/pickled.py: the plain values of pickles read without unpickling them. Pickles
written by the stdlib pickler (torch's and the frameworks' globals through the stand-ins
of tests/helpers/pickles.py), and hostile ones: cycles, deep nesting, huge declared lengths,
truncated streams, a zip that claims a 1 TB member, out-of-band buffers, a pickle that
would run os.system. Nothing is ever unpickled: the marker files prove it."""
import collections
import io
import math
import os
import pickle
import time
import zipfile

import pytest
from tests.helpers.pickles import (Torch, stand_in_class, stand_in_dict_class, stand_in_enum,
                                   torch_zip)

from ckptfs.meta import pickled
from ckptfs.meta.pickled import Unreadable, read_pickled


def read_bytes(data: bytes, keys=None):
    return read_pickled(io.BytesIO(data), len(data), keys)


def read_path(path, keys=None):
    with open(path, "rb") as f:
        return read_pickled(f, os.path.getsize(path), keys)


def value_of(obj, protocol=2):
    return read_bytes(pickle.dumps(obj, protocol=protocol)).value


class RunsShell:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_plain_values_in_every_protocol(protocol):
    obj = {"int": -5, "big": 1 << 40, "float": 2.5, "str": "héllo", "none": None,
           "bools": [True, False], "tuple": (1, "a"), "set": {3}, "nested": {"a": [1, {"b": 2}]}}
    assert value_of(obj, protocol) == {
        "int": -5, "big": 1 << 40, "float": 2.5, "str": "héllo", "none": None,
        "bools": [True, False], "tuple": [1, "a"], "set": [3], "nested": {"a": [1, {"b": 2}]}}


def test_what_json_cannot_hold_becomes_a_placeholder_or_is_left_out():
    value = value_of({1: "int key", (1, 2): "tuple key", "kept": b"\0" * 10,
                      "huge": 1 << 100, "long": "x" * 5000, "nan": math.nan}, protocol=4)
    assert value["kept"] == {"__bytes__": 10}
    assert value["huge"] == {"__int__": "101-bit"}
    assert value["long"] == {"__string__": 5000}
    assert math.isnan(value["nan"])
    assert set(value) == {"kept", "huge", "long", "nan"}  # only str keys


def test_objects_become_their_state_or_items(monkeypatch):
    args_class = stand_in_class(monkeypatch, "transformers.training_args.TrainingArguments")
    schedule = stand_in_enum(monkeypatch, "transformers.trainer_utils.SchedulerType",
                             ["linear", "cosine"])
    attribute_dict = stand_in_dict_class(monkeypatch, "lightning.fabric.utilities.data.AttributeDict")
    other_enum = stand_in_enum(monkeypatch, "mylib.Mode", ["fast"])
    args = args_class()
    args.__dict__.update(learning_rate=1e-4, lr_scheduler_type=schedule("linear"),
                         mode=other_enum("fast"), hparams=attribute_dict(lr=0.1, layers=[2]),
                         ordered=collections.OrderedDict(b=1, a=2))
    for protocol in (2, 4, 5):
        found = read_bytes(pickle.dumps(args, protocol=protocol))
        assert found.root_class == "transformers.training_args.TrainingArguments"
        assert found.value == {
            "learning_rate": 1e-4, "lr_scheduler_type": "linear",
            "mode": {"__call__": "mylib.Mode", "args": ["fast"]},  # not a known enum
            "hparams": {"lr": 0.1, "layers": [2]}, "ordered": {"b": 1, "a": 2}}


def test_globals_calls_and_objects_without_content_are_placeholders():
    value = value_of({"f": len, "call": RunsShell("/nonexistent/x"), "obj": object()})
    assert value == {"f": {"__global__": "builtins.len"},
                     "call": {"__call__": "posix.system", "args": ["touch /nonexistent/x"]},
                     "obj": {"__object__": "builtins.object"}}


def test_tensors_and_single_element_values(tmp_path, monkeypatch):
    torch = Torch(monkeypatch)
    checkpoint = {
        "weights": torch.tensor([1.0, 2.0, 3.0, 4.0], shape=(2, 2)),
        "score": torch.tensor([0.25], shape=()),
        "step": torch.tensor([7], shape=(), storage="LongStorage"),
        "half": torch.tensor([1.5], shape=(1,), storage="HalfStorage"),
        "flag": torch.tensor([True], shape=(), storage="BoolStorage"),
        "view": torch.tensor([0.0, 1.0, 2.0, 3.0], shape=(), storage="DoubleStorage", offset=3),
        "outside": torch.tensor([1.0], shape=(), offset=5),  # past the storage: not read
    }
    found = read_path(torch.save(checkpoint, tmp_path / "t.pt"))
    assert found.value == {
        "weights": {"__tensor__": "float32", "shape": [2, 2]},
        "score": {"__tensor__": "float32", "shape": [], "value": 0.25},
        "step": {"__tensor__": "int64", "shape": [], "value": 7},
        "half": {"__tensor__": "float16", "shape": [1], "value": 1.5},
        "flag": {"__tensor__": "bool", "shape": [], "value": True},
        "view": {"__tensor__": "float64", "shape": [], "value": 3.0},
        "outside": {"__tensor__": "float32", "shape": []},
    }
    # the same pickle outside a zip: no tensor data to read
    assert read_bytes(torch.dumps({"s": checkpoint["score"]})).value == {
        "s": {"__tensor__": "float32", "shape": []}}


def test_only_the_keys_asked_for_are_converted(tmp_path, monkeypatch):
    torch = Torch(monkeypatch)
    deep: list = []
    for _ in range(200):
        deep = [deep]
    path = torch.save({"epoch": 3, "score": torch.tensor([0.5], shape=()), "deep": deep},
                      tmp_path / "k.pt")
    assert read_path(path, keys=("epoch", "score", "missing")).value == {
        "epoch": 3, "score": {"__tensor__": "float32", "shape": [], "value": 0.5}}
    with pytest.raises(Unreadable, match="nested deeper than 64 levels"):
        read_path(path)


def test_memo_cycles_do_not_loop():
    loop: list = [1]
    loop.append(loop)
    both: dict = {"self": None}
    both["self"] = both
    shared = [1, 2]
    assert value_of({"loop": loop, "dict": both, "shared": [shared, shared]}) == {
        "loop": [1, {"__recursive__": True}], "dict": {"self": {"__recursive__": True}},
        "shared": [[1, 2], [1, 2]]}


def test_shared_values_cannot_blow_up_the_model(monkeypatch):
    # each level holds the one below twice: 2**40 values once expanded
    layer: list = [0]
    for _ in range(40):
        layer = [layer, layer]
    monkeypatch.setattr(pickled, "MAX_DEPTH", 100)
    started = time.monotonic()
    with pytest.raises(Unreadable, match=r"over 200,000 values \(shared ones counted"):
        value_of(layer)
    assert time.monotonic() - started < 2


def test_truncated_and_damaged_pickles():
    data = pickle.dumps({"a": list(range(50))}, protocol=4)
    with pytest.raises(Unreadable, match=r"^truncated or damaged pickle \(the bytes end "):
        read_bytes(data[:-10])
    with pytest.raises(Unreadable, match=r"^not a pickle \(byte 0x00 at offset 0"):
        read_bytes(b"\0" * 100)
    with pytest.raises(Unreadable, match="stack underflow"):
        read_bytes(b"\x80\x02\x85.")  # TUPLE1 of nothing
    with pytest.raises(Unreadable, match="memo entry 7 was never stored"):
        read_bytes(b"\x80\x02h\x07.")
    with pytest.raises(Unreadable, match="out-of-band buffers"):
        read_bytes(pickle.dumps(pickle.PickleBuffer(b"abc"), protocol=5,
                                buffer_callback=lambda buffer: False))


def test_huge_declared_lengths(tmp_path):
    # a string that says it is 2**60 bytes long, in a 20-byte file
    with pytest.raises(Unreadable, match="runs past the end"):
        read_bytes(b"\x80\x04\x8d" + (1 << 60).to_bytes(8, "little") + b"xx.")
    # 8 GiB of bytes in a sparse file: skipped, not read, and the walk gives up
    big = tmp_path / "big.pkl"
    with open(big, "wb") as f:
        f.write(b"\x80\x04\x8e" + (8 << 30).to_bytes(8, "little"))
        f.seek(8 << 30, os.SEEK_CUR)
        f.write(b".")
    started = time.monotonic()
    with pytest.raises(Unreadable, match="a pickle over 64 MiB"):
        read_path(big)
    assert time.monotonic() - started < 1


def zip64_claiming(path, member: str, claimed: int) -> str:
    """A zip whose central directory says `member` is `claimed` bytes (uncompressed), in a
    zip64 extra field: what a crafted file can say, whatever its real size."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(member, pickle.dumps({"a": 1}, 2))
    data = bytearray(open(path, "rb").read())
    central = data.index(b"PK\x01\x02")
    name_length = int.from_bytes(data[central + 28:central + 30], "little")
    data[central + 24:central + 28] = b"\xff\xff\xff\xff"     # size: see the zip64 field
    data[central + 30:central + 32] = (12).to_bytes(2, "little")  # extra field length
    zip64 = b"\x01\x00" + (8).to_bytes(2, "little") + claimed.to_bytes(8, "little")
    data[central + 46 + name_length:central + 46 + name_length] = zip64
    end = data.index(b"PK\x05\x06")
    directory_size = int.from_bytes(data[end + 12:end + 16], "little") + len(zip64)
    data[end + 12:end + 16] = directory_size.to_bytes(4, "little")
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


def test_a_zip_claiming_a_1_tb_pickle_is_not_read(tmp_path):
    path = zip64_claiming(tmp_path / "claims.pt", "archive/data.pkl", 1 << 40)
    assert zipfile.ZipFile(path).getinfo("archive/data.pkl").file_size == 1 << 40
    with pytest.raises(Unreadable, match=r"archive/data.pkl: over 64 MiB: not read"):
        read_path(path)


def test_zip_layouts_that_are_not_torch_files(tmp_path):
    with pytest.raises(Unreadable, match="zip archive with 0 <archive>/data.pkl members"):
        read_path(torch_zip(tmp_path / "none.pt", {"x.txt": b"x"}))
    two = torch_zip(tmp_path / "two.pt", {"a/data.pkl": pickle.dumps(1), "b/data.pkl": b""})
    with pytest.raises(Unreadable, match="with 2 <archive>/data.pkl members"):
        read_path(two)
    with open(tmp_path / "bad.pt", "wb") as f:
        f.write(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(Unreadable, match="zip archive whose directory cannot be read"):
        read_path(tmp_path / "bad.pt")
    cut = torch_zip(tmp_path / "cut.pt", {"archive/data.pkl": pickle.dumps([1, 2], 2)[:-2]})
    with pytest.raises(Unreadable, match="truncated or damaged pickle"):
        read_path(cut)


def test_the_limits_end_the_walk(monkeypatch):
    data = pickle.dumps(list(range(3000)), protocol=2)
    monkeypatch.setattr(pickled, "MAX_OPCODES", 1000)
    with pytest.raises(Unreadable, match="over 1,000 opcodes"):
        read_bytes(data)
    monkeypatch.setattr(pickled, "MAX_OPCODES", 1_000_000)
    monkeypatch.setattr(pickled, "MAX_VALUES", 500)
    with pytest.raises(Unreadable, match="over 500 values"):
        read_bytes(data)
    monkeypatch.setattr(pickled, "MAX_VALUES", 500_000)
    monkeypatch.setattr(pickled, "MAX_TEXT_BYTES", 10_000)
    with pytest.raises(Unreadable, match="over 0 MiB of strings"):
        read_bytes(pickle.dumps([str(i) * 100 for i in range(200)], protocol=2))


def test_legacy_torch_format(tmp_path, monkeypatch):
    torch = Torch(monkeypatch)
    pickles = [pickle.dumps(0x1950A86A20F9469CFC6C, 2), pickle.dumps(1001, 2),
               pickle.dumps({"little_endian": True}, 2),
               torch.dumps({"epoch": 2, "w": torch.tensor([1.0])}), pickle.dumps(["0"], 2)]
    path = tmp_path / "legacy.pt"
    with open(path, "wb") as f:
        f.write(b"".join(pickles))
        f.truncate(2 << 30)  # sparse raw tensor bytes after the pickles: never read
    started = time.monotonic()
    assert read_path(path).value == {"epoch": 2, "w": {"__tensor__": "float32", "shape": [1]}}
    assert time.monotonic() - started < 1


def test_nothing_is_ever_run(tmp_path, monkeypatch):
    marker = tmp_path / "RAN"
    torch = Torch(monkeypatch)
    for data in (pickle.dumps({"x": RunsShell(marker)}, p) for p in range(6)):
        read_bytes(data)
    read_path(torch.save({"hook": RunsShell(marker)}, tmp_path / "e.pt"))
    assert not marker.exists()
