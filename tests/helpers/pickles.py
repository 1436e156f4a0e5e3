"""Pickles naming the globals of torch and of the training frameworks, written by the
stdlib pickler without those packages: stand-in modules are registered under the real
names, so the bytes hold exactly the GLOBAL opcodes (`torch._utils _rebuild_tensor_v2`,
`transformers.training_args TrainingArguments`…) that torch.save writes. Nothing here
is ever unpickled."""
import collections
import enum
import io
import pickle
import struct
import sys
import types
import zipfile


def stand_in(monkeypatch, qualified: str, obj):
    """Register `obj` as the global `qualified` ("module.name"), creating stand-in
    modules for the module and its parents as needed; returns obj."""
    module_name, _, name = qualified.rpartition(".")
    parts = module_name.split(".")
    for i in range(1, len(parts) + 1):  # the pickler imports the module to check the name
        prefix = ".".join(parts[:i])
        if prefix not in sys.modules:
            monkeypatch.setitem(sys.modules, prefix, types.ModuleType(prefix))
    obj.__module__, obj.__qualname__ = module_name, name
    monkeypatch.setattr(sys.modules[module_name], name, obj, raising=False)
    return obj


def stand_in_class(monkeypatch, qualified: str):
    """A plain class pickled as `qualified`: protocol 2+ writes NEWOBJ (no arguments) and
    BUILD with its __dict__, as for TrainingArguments or PartialState."""
    return stand_in(monkeypatch, qualified, type(qualified.rpartition(".")[2], (), {}))


def stand_in_enum(monkeypatch, qualified: str, values: list[str]):
    """A str enum pickled as `qualified`: REDUCE of the class with the member's value."""
    cls = enum.Enum(qualified.rpartition(".")[2], {v.upper(): v for v in values}, type=str)
    return stand_in(monkeypatch, qualified, cls)


def stand_in_dict_class(monkeypatch, qualified: str):
    """A dict subclass (Lightning's AttributeDict): NEWOBJ, then SETITEMS of its items."""
    return stand_in(monkeypatch, qualified, type(qualified.rpartition(".")[2], (dict,), {}))


STORAGE_FORMATS = {"FloatStorage": "<f", "DoubleStorage": "<d", "LongStorage": "<q",
                   "HalfStorage": "<e", "BoolStorage": "<?", "IntStorage": "<i"}


class Torch:
    """torch.save's zip layout for objects holding Tensor stand-ins: their storages go out
    of band as ('storage', torch.<Type>Storage, key, 'cpu', numel) persistent ids and
    their bytes into `<archive>/data/<key>`."""

    def __init__(self, monkeypatch):
        def rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks):
            raise AssertionError("never called: nothing is unpickled")

        self.rebuild = stand_in(monkeypatch, "torch._utils._rebuild_tensor_v2", rebuild_tensor_v2)
        self.storages = {name: stand_in(monkeypatch, f"torch.{name}", type(name, (), {}))
                         for name in STORAGE_FORMATS}

    def tensor(self, values, shape=None, storage="FloatStorage", offset=0):
        """A tensor of `values` (a list) in a storage of its own; shape (len(values),) by
        default, () for a scalar."""
        return Tensor(self, list(values), (len(values),) if shape is None else tuple(shape),
                      storage, offset)

    def state_dict(self, n_tensors=3):
        return collections.OrderedDict((f"layer.{i}.weight", self.tensor([0.0] * 4))
                                       for i in range(n_tensors))

    def dumps(self, obj, protocol=2) -> bytes:
        return self.dumps_with_data(obj, protocol)[0]

    def dumps_with_data(self, obj, protocol=2) -> tuple[bytes, dict[str, bytes]]:
        data: dict[str, bytes] = {}
        torch = self

        class TorchPickler(pickle.Pickler):
            def persistent_id(self, value):
                if not isinstance(value, Storage):
                    return None
                key = str(len(data))
                order, code = STORAGE_FORMATS[value.type]
                data[key] = struct.pack(f"{order}{len(value.values)}{code}", *value.values)
                return ("storage", torch.storages[value.type], key, "cpu", len(value.values))

        out = io.BytesIO()
        TorchPickler(out, protocol=protocol).dump(obj)
        return out.getvalue(), data

    def save(self, obj, path, protocol=2, prefix="archive") -> str:
        """A file as torch.save writes it (stored members, byteorder and version records)."""
        pickled, data = self.dumps_with_data(obj, protocol)
        return torch_zip(path, {f"{prefix}/data.pkl": pickled},
                         {f"{prefix}/data/{key}": raw for key, raw in data.items()},
                         prefix=prefix)


class Storage:
    def __init__(self, storage_type: str, values: list):
        self.type, self.values = storage_type, values


class Tensor:
    def __init__(self, torch: Torch, values, shape, storage_type, offset):
        self.torch, self.shape, self.offset = torch, shape, offset
        self.storage = Storage(storage_type, values)

    def __reduce_ex__(self, protocol):
        stride = tuple(1 for _ in self.shape)
        return self.torch.rebuild, (self.storage, self.offset, self.shape, stride, False,
                                    collections.OrderedDict())


def torch_zip(path, pickles: dict[str, bytes], data: dict[str, bytes] | None = None,
              prefix: str = "archive") -> str:
    with zipfile.ZipFile(path, "w") as archive:
        for member, payload in pickles.items():
            archive.writestr(member, payload)
        for member, payload in (data or {}).items():
            archive.writestr(member, payload)
        archive.writestr(f"{prefix}/byteorder", "little")
        archive.writestr(f"{prefix}/version", "3\n")
    return str(path)


# -- zips that trip up zipfile but not every loader ------------------------------------------

def patch_zip(data: bytes, flags: int = 0, crc_xor: int = 0, local: bool = True,
              central: bool = True) -> bytes:
    """`data` (a zip) with `flags` OR-ed into the general-purpose flags and `crc_xor`
    XOR-ed into the CRC of every local header and/or central directory entry."""
    out = bytearray(data)
    for signature, flag_at, crc_at, wanted in ((b"PK\x03\x04", 6, 14, local),
                                               (b"PK\x01\x02", 8, 16, central)):
        position = out.find(signature) if wanted else -1
        while position >= 0:
            struct.pack_into("<H", out, position + flag_at,
                             struct.unpack_from("<H", out, position + flag_at)[0] | flags)
            struct.pack_into("<I", out, position + crc_at,
                             struct.unpack_from("<I", out, position + crc_at)[0] ^ crc_xor)
            position = out.find(signature, position + 4)
    return bytes(out)


def zip_bytes(members: dict[str, bytes], compression=zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for member, payload in members.items():
            archive.writestr(member, payload)
    return buffer.getvalue()


def break_directory(data: bytes) -> bytes:
    """The zip with its central directory's signatures overwritten: zipfile cannot list it."""
    return data.replace(b"PK\x01\x02", b"XX\x01\x02").replace(b"PK\x05\x06", b"XX\x05\x06")


def without_directory(data: bytes) -> bytes:
    """Only the local entries: the central directory and its end record cut off."""
    return data[:data.find(b"PK\x01\x02")]
