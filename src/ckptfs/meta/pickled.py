"""Plain values read from a pickled checkpoint file, without unpickling it.

`read_pickled(f, size)` walks the pickle of a torch zip (`<archive>/data.pkl`), of a
legacy `torch.save` file or of a plain pickle opcode by opcode, as the unpickler would,
but builds inert values instead of importing and calling what the pickle names. The
result is a JSON-like model:

- None, bool, int, float (nan and inf stay floats: callers decide), str;
- lists; tuples and sets as lists;
- dicts with their str keys only (int, tuple or object keys are left out: JSON keys are
  strings, and turning 1 into "1" could merge it with a real "1");
- an object rebuilt from its class (NEWOBJ, protocol 2+) or made by a call (REDUCE,
  INST, OBJ) becomes its content when it has one: its state dict (BUILD; a (state,
  slotstate) pair is merged), its items (SETITEM(S) onto a dict subclass such as
  OrderedDict or Lightning's AttributeDict), or its list items (APPEND(S)). Without
  content it is a placeholder: {"__object__": "module.name", "args": [...]} or
  {"__call__": "module.name", "args": [...]}, with "state" if its state is not a dict;
- a call of a known framework enum (`SchedulerType('linear')`) is its value, "linear";
- a global used as a value: {"__global__": "module.name"};
- a torch tensor: {"__tensor__": "float32", "shape": [2, 3]}; one of a single element in
  a torch zip also has its "value", read from the member `<archive>/data/<key>`;
- other placeholders: {"__storage__": dtype, "key": ...}, {"__persistent__": ...},
  {"__bytes__": length}, {"__string__": length} (a string too long to keep or not
  decodable), {"__int__": "N-bit"} (beyond 64 bits), {"__recursive__": true} (a value
  that contains itself, e.g. a list appended to itself).

Nothing named in the pickle is imported or called: no pickle.Unpickler, no find_class,
no torch.load. Every input is untrusted: opcodes, values, string bytes, pickle length,
nesting depth and tensor reads are all bounded, and whatever cannot be read within
those bounds (or is not a pickle) raises Unreadable with the reason; nothing else.
"""
import functools
import struct
import zipfile
from dataclasses import dataclass, field

from .pickle_stream import (MEMBER_ERRORS, PICKLE_HIGHEST, STRING_OPS, ArchiveUnreadable,
                            LimitReached, Malformed, Skipped, Stream, member_stream,
                            named_global, next_opcode, read_argument, stacked_global,
                            string_value, zip_directory)
from .scan import FRAMEWORK_ENUMS

MAX_OPCODES = 1_000_000          # a checkpoint data.pkl takes some 25 per tensor
MAX_VALUES = 500_000             # values built while walking
MAX_TEXT_BYTES = 16 << 20        # bytes of string constants kept
MAX_PICKLE_BYTES = 64 << 20      # how far into a pickle (or its zip member) the walk goes
MAX_DEPTH = 64                   # nesting of the JSON model
MAX_JSON_VALUES = 200_000        # values in the JSON model (shared ones count each time)
MAX_SCALAR_READS = 256           # single-element tensors whose value is read, per file
MAX_COMPRESSED_STORAGE = 1 << 20  # a compressed tensor member is read only up to this

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # first pickle of torch.save's format before 1.6
INT64 = range(-(1 << 63), 1 << 63)
LONG_OPS = frozenset({"LONG1", "LONG4"})
BYTES_OPS = frozenset({"BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8"})

TENSOR_REBUILDERS = {"torch._utils._rebuild_tensor", "torch._utils._rebuild_tensor_v2",
                     "torch._utils._rebuild_tensor_v3"}
PARAMETER_REBUILDERS = {"torch._utils._rebuild_parameter",
                        "torch._utils._rebuild_parameter_with_state",
                        "torch.nn.parameter.Parameter"}
SUBCLASS_REBUILDER = "torch._tensor._rebuild_from_type_v2"
SET_TYPES = {"builtins.set", "builtins.frozenset"}
ENUM_CLASSES = {f"{module}.{name}" for module, name in FRAMEWORK_ENUMS}
STORAGE_DTYPES = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8",
    "BoolStorage": "bool", "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128", "UntypedStorage": "uint8",
}
SCALAR_FORMATS = {"float32": "f", "float64": "d", "float16": "e", "int64": "q", "int32": "i",
                  "int16": "h", "int8": "b", "uint8": "B", "bool": "?", "bfloat16": "H"}


class Unreadable(Exception):
    """The values of this file cannot be read within the limits; the message says why."""


@dataclass
class PickledValue:
    value: object                 # the JSON model of what the pickle holds
    root_class: str | None        # "module.name" when the root is an object


def read_pickled(f, size: int, keys=None) -> PickledValue:
    """The values in the file object `f` (`size` bytes): a torch zip, a legacy torch
    file or a plain pickle. With `keys`, a root that is a dict is given with those keys
    only (the rest is walked, not converted: cheaper, and its tensors are not read)."""
    try:
        return read_file(f, size, keys)
    except OSError as e:
        raise Unreadable(f"cannot be read ({e.strerror or e})") from None


def read_file(f, size: int, keys) -> PickledValue:
    head = f.read(4)
    f.seek(0)
    if head == b"PK\x03\x04":  # as torch.load decides
        return read_torch_zip(f, keys)
    walk = ValueWalk()
    stream = Stream(f, size)
    root = walk.read(stream)
    if isinstance(root, BigInt) and root.value == LEGACY_MAGIC:
        # then the protocol version, the system info, and the object
        walk.read(stream)
        walk.read(stream)
        root = walk.read(stream)
    return PickledValue(JsonBuilder(None).root(root, keys), class_of(root))


def read_torch_zip(f, keys) -> PickledValue:
    try:
        archive = zip_directory(f)
    except ArchiveUnreadable as e:
        raise Unreadable(str(e)) from None
    pickles = [i for i in archive.infolist()
               if i.filename.endswith("/data.pkl") and i.filename.count("/") == 1]
    if len(pickles) != 1:
        raise Unreadable(f"zip archive with {len(pickles)} <archive>/data.pkl members, not one")
    info = pickles[0]
    try:
        root = ValueWalk().read(member_stream(archive, info, MAX_PICKLE_BYTES))
    except (LimitReached, ArchiveUnreadable) as e:
        raise Unreadable(f"{info.filename}: {e}") from None
    except MEMBER_ERRORS as e:
        raise Unreadable(f"{info.filename} cannot be read ({e})") from None
    prefix = info.filename[:-len("/data.pkl")]
    scalars = ZipScalars(f, archive, prefix)
    return PickledValue(JsonBuilder(scalars).root(root, keys), class_of(root))


# -- the values built while walking ------------------------------------------------------------

@dataclass(eq=False)
class Obj:
    """An object the unpickler would build by calling or rebuilding a class."""
    name: str | None               # "module.name" of its class or callable (None: computed)
    kind: str                      # "object" (NEWOBJ) or "call" (REDUCE, INST, OBJ)
    args: tuple = ()
    states: list = field(default_factory=list)       # BUILD arguments, in order
    items: dict | None = None                        # SETITEM(S) onto it
    list_items: list | None = None                   # APPEND(S) onto it


@dataclass(eq=False)
class Global:
    name: str


@dataclass(eq=False)
class Storage:
    """A torch storage, named by a persistent id ('storage', type, key, location, numel)."""
    dtype: str
    key: str
    numel: int


@dataclass(eq=False)
class TensorRef:
    dtype: str
    shape: list
    storage: Storage
    offset: int


@dataclass(eq=False)
class Placeholder:
    """A value kept only as a description (bytes, a long string, a huge int…)."""
    description: dict


@dataclass(eq=False)
class BigInt:
    """An int beyond 64 bits (JSON readers may not take it): a placeholder in the model."""
    value: int


@dataclass(eq=False)
class Persistent:
    pid: object


class SetNode(list):
    """A set or frozenset (kept as a list; ADDITEMS extends it)."""


MARK = object()


def class_of(node) -> str | None:
    return node.name if isinstance(node, Obj) else None


# Opcodes that push a new constant or empty container.
NEW_VALUES = {"NONE": lambda: None, "NEWTRUE": lambda: True, "NEWFALSE": lambda: False,
              "EMPTY_LIST": list, "EMPTY_DICT": dict, "EMPTY_TUPLE": tuple,
              "EMPTY_SET": SetNode}


class ValueWalk:
    """Walks one or more pickles of a stream into values, within the limits."""

    def __init__(self):
        self.opcodes = self.values = self.text_bytes = 0
        self.handlers = {name[3:]: getattr(self, name) for name in dir(self)
                         if name.startswith("op_")}
        for name in STRING_OPS:
            self.handlers[name] = functools.partial(self.push_string, name)
        for name in BYTES_OPS:
            self.handlers[name] = self.push_bytes
        for name, make in NEW_VALUES.items():
            self.handlers[name] = lambda arg, make=make: self.push(make())

    def read(self, stream: Stream):
        """The value of the next pickle in `stream` (its STOP ends the walk)."""
        self.stream, self.stack, self.memo, self.protocol = stream, [], {}, 0
        try:
            while True:
                result = self.step()
                if result is not None:
                    return result[0]
        except (Malformed, ValueError, OverflowError, struct.error) as e:
            # ValueError and the others: a constant that does not parse
            if self.opcodes <= 1 and self.protocol == 0:
                raise Unreadable(f"not a pickle ({e})") from None
            raise Unreadable(f"truncated or damaged pickle ({e})") from None

    def step(self):
        """Read and apply one opcode; (root,) at STOP, else None."""
        self.opcodes += 1
        if self.opcodes > MAX_OPCODES:
            raise Unreadable(f"over {MAX_OPCODES:,} opcodes")
        if self.opcodes % 1024 == 0 and self.stream.offset > MAX_PICKLE_BYTES:
            raise Unreadable(f"a pickle over {MAX_PICKLE_BYTES >> 20} MiB")
        op = next_opcode(self.stream)
        arg = read_argument(self.stream, op, keep=STRING_OPS | LONG_OPS)
        if isinstance(arg, Skipped) and self.stream.offset > MAX_PICKLE_BYTES:
            raise Unreadable(f"a pickle over {MAX_PICKLE_BYTES >> 20} MiB")
        if op.name == "STOP":
            return (self.pop(),)
        self.handlers[op.name](arg)
        return None

    # -- the stack

    def push(self, value) -> None:
        self.values += 1
        if self.values > MAX_VALUES:
            raise Unreadable(f"over {MAX_VALUES:,} values")
        self.stack.append(value)

    def pop(self):
        if not self.stack or self.stack[-1] is MARK:
            raise Malformed("stack underflow")
        return self.stack.pop()

    def top(self):
        if not self.stack or self.stack[-1] is MARK:
            raise Malformed("stack underflow")
        return self.stack[-1]

    def pop_mark(self) -> list:
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i] is MARK:
                items = self.stack[i + 1:]
                del self.stack[i:]
                return items
        raise Malformed("no MARK on the stack")

    # -- constants

    def push_string(self, name: str, arg):
        text = string_value(name, arg)
        if text is None:  # too long to keep, or not decodable
            length = arg.length if isinstance(arg, Skipped) else len(arg)
            return self.push(Placeholder({"__string__": length}))
        self.text_bytes += len(arg)
        if self.text_bytes > MAX_TEXT_BYTES:
            raise Unreadable(f"over {MAX_TEXT_BYTES >> 20} MiB of strings")
        self.push(text)

    def push_bytes(self, arg):
        self.push(Placeholder({"__bytes__": arg.length}))

    def op_NEXT_BUFFER(self, arg):
        raise Unreadable("out-of-band buffers (pickle protocol 5) are not read")

    op_READONLY_BUFFER = op_NEXT_BUFFER

    def op_INT(self, arg):
        if isinstance(arg, Skipped):
            return self.push(Placeholder({"__int__": "too long"}))
        if arg in (b"00", b"01"):  # protocol 0 writes True and False so
            return self.push(arg == b"01")
        self.push(self.integer(int(arg)))

    def op_LONG(self, arg):
        if isinstance(arg, Skipped):
            return self.push(Placeholder({"__int__": "too long"}))
        self.push(self.integer(int(arg.rstrip(b"L"))))

    def op_BININT(self, arg):
        self.push(int.from_bytes(arg, "little", signed=True))

    def op_BININT1(self, arg):
        self.push(arg[0])

    def op_BININT2(self, arg):
        self.push(int.from_bytes(arg, "little"))

    def op_LONG1(self, arg):
        if isinstance(arg, Skipped):
            return self.push(Placeholder({"__int__": f"{arg.length * 8}-bit"}))
        self.push(self.integer(int.from_bytes(arg, "little", signed=True)))

    op_LONG4 = op_LONG1

    def integer(self, value: int):
        return value if value in INT64 else BigInt(value)

    def op_FLOAT(self, arg):
        if isinstance(arg, Skipped):
            raise Malformed("a FLOAT argument is too long")
        self.push(float(arg))

    def op_BINFLOAT(self, arg):
        self.push(struct.unpack(">d", arg)[0])

    # -- containers

    def op_LIST(self, arg):
        self.push(self.pop_mark())

    def op_TUPLE(self, arg):
        self.push(tuple(self.pop_mark()))

    def op_TUPLE1(self, arg):
        self.push((self.pop(),))

    def op_TUPLE2(self, arg):
        second, first = self.pop(), self.pop()
        self.push((first, second))

    def op_TUPLE3(self, arg):
        third, second, first = self.pop(), self.pop(), self.pop()
        self.push((first, second, third))

    def op_FROZENSET(self, arg):
        self.push(SetNode(self.pop_mark()))

    def op_DICT(self, arg):
        target: dict = {}
        set_items(target, self.pop_mark())
        self.push(target)

    def op_APPEND(self, arg):
        value = self.pop()
        append_items(self.top(), [value])

    def op_APPENDS(self, arg):
        items = self.pop_mark()
        append_items(self.top(), items)

    def op_ADDITEMS(self, arg):
        items = self.pop_mark()
        if isinstance(self.top(), SetNode):
            self.top().extend(items)

    def op_SETITEM(self, arg):
        value, key = self.pop(), self.pop()
        set_items(self.top(), [key, value])

    def op_SETITEMS(self, arg):
        items = self.pop_mark()
        set_items(self.top(), items)

    # -- the stack and the memo

    def op_PROTO(self, arg):
        if arg > PICKLE_HIGHEST:
            raise Malformed(f"unsupported pickle protocol {arg}")
        self.protocol = arg

    def op_FRAME(self, arg):
        pass

    def op_MARK(self, arg):
        self.stack.append(MARK)

    def op_POP(self, arg):
        if not self.stack:
            raise Malformed("stack underflow")
        self.stack.pop()

    def op_POP_MARK(self, arg):
        self.pop_mark()

    def op_DUP(self, arg):
        self.stack.append(self.top())

    def op_PUT(self, arg):
        self.memo[arg] = self.top()

    op_BINPUT = op_LONG_BINPUT = op_PUT

    def op_MEMOIZE(self, arg):
        self.memo[len(self.memo)] = self.top()

    def op_GET(self, arg):
        if arg not in self.memo:
            raise Malformed(f"memo entry {arg} was never stored")
        self.stack.append(self.memo[arg])

    op_BINGET = op_LONG_BINGET = op_GET

    # -- globals, calls and objects

    def op_GLOBAL(self, arg):
        module, name = named_global(*arg, self.protocol)
        self.push(Global(f"{module}.{name}"))

    def op_STACK_GLOBAL(self, arg):
        name, module = self.pop(), self.pop()
        if not (isinstance(module, str) and isinstance(name, str)):
            return self.push(Global("<computed>"))
        module, name = stacked_global(module, name)
        self.push(Global(f"{module}.{name}"))

    def op_EXT1(self, arg):
        self.push(Global(f"<extension code {arg}>"))

    op_EXT2 = op_EXT4 = op_EXT1

    def op_INST(self, arg):
        module, name = named_global(*arg, self.protocol)
        self.push(Obj(f"{module}.{name}", "call", tuple(self.pop_mark())))

    def op_OBJ(self, arg):
        items = self.pop_mark()
        if not items:
            raise Malformed("OBJ without a class")
        self.push(Obj(name_of(items[0]), "call", tuple(items[1:])))

    def op_REDUCE(self, arg):
        args, func = self.pop(), self.pop()
        if not isinstance(args, tuple):
            raise Malformed("REDUCE arguments are not a tuple")
        self.push(self.call(func, args))

    def op_NEWOBJ(self, arg):
        args, cls = self.pop(), self.pop()
        self.push(Obj(name_of(cls), "object", args if isinstance(args, tuple) else ()))

    def op_NEWOBJ_EX(self, arg):
        _kwargs, args, cls = self.pop(), self.pop(), self.pop()
        self.push(Obj(name_of(cls), "object", args if isinstance(args, tuple) else ()))

    def op_BUILD(self, arg):
        state = self.pop()
        target = self.top()
        if isinstance(target, Obj):
            target.states.append(state)

    def op_PERSID(self, arg):
        self.push(Persistent(arg.decode("ascii", "replace") if isinstance(arg, bytes) else None))

    def op_BINPERSID(self, arg):
        self.push(persistent_value(self.pop()))

    def call(self, func, args: tuple):
        """What REDUCE of `func` with `args` stands for."""
        name = name_of(func)
        if name in TENSOR_REBUILDERS:
            return tensor_of(name, args)
        if name in PARAMETER_REBUILDERS and args:
            return args[0]
        if name == SUBCLASS_REBUILDER and len(args) >= 3 and isinstance(args[2], tuple):
            return self.call(args[0], args[2])  # (func, new_type, args, state)
        if name in ENUM_CLASSES and len(args) == 1 and isinstance(args[0], (str, int)):
            return args[0]  # SchedulerType('linear') is 'linear'
        if name in SET_TYPES and len(args) == 1 and isinstance(args[0], list):
            return SetNode(args[0])  # protocols 0-3 write a set as set([items])
        if name == "_codecs.encode" and args and isinstance(args[0], str):
            return Placeholder({"__bytes__": len(args[0])})  # bytes in protocols 0-2
        return Obj(name, "call", args)


def name_of(node) -> str | None:
    return node.name if isinstance(node, Global) else None


def set_items(target, flat: list) -> None:
    """SETITEM(S): key, value, key, value… onto a dict or an object (its items). Keys
    that are not str are left out; onto anything else, the items are ignored."""
    if len(flat) % 2:
        raise Malformed("SETITEMS with a key and no value")
    if isinstance(target, Obj):
        if target.items is None:
            target.items = {}
        target = target.items
    if isinstance(target, dict):
        for key, value in zip(flat[::2], flat[1::2]):
            if isinstance(key, str):
                target[key] = value


def append_items(target, items: list) -> None:
    if isinstance(target, Obj):
        if target.list_items is None:
            target.list_items = []
        target = target.list_items
    if isinstance(target, list) and not isinstance(target, SetNode):
        target.extend(items)


def persistent_value(pid):
    """What a persistent id stands for: torch's storages, else a placeholder."""
    if isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage":
        storage_type, key, numel = pid[1], pid[2], pid[4]
        if isinstance(key, str) and isinstance(numel, int) and name_of(storage_type):
            return Storage(storage_dtype(name_of(storage_type)), key, numel)
    return Persistent(pid)


def storage_dtype(name: str) -> str:
    module, _, cls = name.rpartition(".")
    if module in ("torch", "torch.cuda", "torch.storage") and cls in STORAGE_DTYPES:
        return STORAGE_DTYPES[cls]
    return name


def tensor_of(name: str, args: tuple):
    """_rebuild_tensor_v2(storage, offset, size, stride, …) as a tensor reference."""
    if len(args) >= 3 and isinstance(args[0], Storage) and isinstance(args[1], int) \
            and isinstance(args[2], tuple) and all(isinstance(n, int) for n in args[2]):
        return TensorRef(args[0].dtype, list(args[2]), args[0], args[1])
    return Obj(name, "call", args)


# -- the JSON model ------------------------------------------------------------------------------

class JsonBuilder:
    """Turns the walk's values into the JSON model, within MAX_DEPTH and MAX_JSON_VALUES;
    reads single-element tensors through `scalars` (None: no tensor data to read)."""

    def __init__(self, scalars):
        self.scalars = scalars
        self.count = 0
        self.path: set[int] = set()   # ids of the containers being converted: cycles

    def root(self, node, keys):
        entries = entries_of(node)
        if keys is not None and entries is not None:
            return {key: self.convert(entries[key], 1) for key in keys if key in entries}
        return self.convert(node, 0)

    def convert(self, node, depth: int):
        self.count += 1
        if self.count > MAX_JSON_VALUES:
            raise Unreadable(f"over {MAX_JSON_VALUES:,} values (shared ones counted each time)")
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if depth > MAX_DEPTH:
            raise Unreadable(f"nested deeper than {MAX_DEPTH} levels")
        if id(node) in self.path:
            return {"__recursive__": True}
        self.path.add(id(node))
        try:
            return self.convert_container(node, depth + 1)
        finally:
            self.path.discard(id(node))

    def convert_container(self, node, depth: int):
        if isinstance(node, (list, tuple)):  # SetNode too
            return [self.convert(item, depth) for item in node]
        if isinstance(node, dict):
            return {key: self.convert(value, depth) for key, value in node.items()}
        if isinstance(node, Obj):
            return self.convert_object(node, depth)
        if isinstance(node, TensorRef):
            return self.convert_tensor(node)
        if isinstance(node, Global):
            return {"__global__": node.name}
        if isinstance(node, Storage):
            return {"__storage__": node.dtype, "key": node.key}
        if isinstance(node, Persistent):
            return {"__persistent__": self.convert(node.pid, depth)}
        if isinstance(node, BigInt):
            return {"__int__": f"{node.value.bit_length()}-bit"}
        return dict(node.description)  # Placeholder

    def convert_object(self, obj: Obj, depth: int):
        entries = entries_of(obj)
        if entries is not None:
            return {key: self.convert(value, depth) for key, value in entries.items()}
        if obj.list_items is not None:
            return [self.convert(item, depth) for item in obj.list_items]
        kind = "__object__" if obj.kind == "object" else "__call__"
        out = {kind: obj.name or "<computed>"}
        if obj.args:
            out["args"] = self.convert(list(obj.args), depth)
        if obj.states:
            out["state"] = self.convert(obj.states[-1], depth)
        return out

    def convert_tensor(self, tensor: TensorRef) -> dict:
        out = {"__tensor__": tensor.dtype, "shape": tensor.shape}
        if self.scalars is not None and all(n == 1 for n in tensor.shape):  # one element
            value = self.scalars.value(tensor)
            if value is not None:
                out["value"] = value
        return out


def entries_of(node) -> dict | None:
    """The str-keyed entries of a dict, or of an object with items or a dict state (its
    items first, then its state's entries not already there); None for anything else."""
    if isinstance(node, dict):
        return node
    if not isinstance(node, Obj):
        return None
    entries = dict(node.items) if node.items is not None else None
    for state in node.states:
        for part in state_dicts(state):
            entries = {} if entries is None else entries
            for key, value in part.items():
                entries.setdefault(key, value)
    return entries


def state_dicts(state) -> list[dict]:
    """The dicts of a BUILD argument: a state dict, or a (state, slotstate) pair."""
    if isinstance(state, dict):
        return [state]
    if isinstance(state, tuple) and len(state) == 2:
        return [part for part in state if isinstance(part, dict)]
    return []


class ZipScalars:
    """Reads the value of single-element tensors from the data members of a torch zip."""

    def __init__(self, f, archive: zipfile.ZipFile, prefix: str):
        self.f, self.archive, self.prefix = f, archive, prefix
        self.reads = 0
        self.byteorder = self.read_byteorder()

    def read_byteorder(self) -> str | None:
        """'<' or '>' from the archive's byteorder record (little when it has none)."""
        try:
            info = self.archive.getinfo(f"{self.prefix}/byteorder")
        except KeyError:
            return "<"
        if info.file_size > 16:
            return None
        try:
            text = self.archive.read(info)
        except MEMBER_ERRORS:
            return None
        return {b"little": "<", b"big": ">"}.get(text)

    def value(self, tensor: TensorRef):
        """The tensor's one element, or None when it cannot be read cheaply and safely."""
        code = SCALAR_FORMATS.get(tensor.dtype)
        if code is None or self.byteorder is None or self.reads >= MAX_SCALAR_READS:
            return None
        if not 0 <= tensor.offset < tensor.storage.numel:
            return None
        self.reads += 1
        size = struct.calcsize(code)
        data = self.member_bytes(f"{self.prefix}/data/{tensor.storage.key}",
                                 tensor.offset * size, size)
        if data is None:
            return None
        (value,) = struct.unpack(self.byteorder + code, data)
        if tensor.dtype == "bfloat16":  # the high half of a float32
            (value,) = struct.unpack("<f", (value << 16).to_bytes(4, "little"))
        return value

    def member_bytes(self, name: str, start: int, size: int) -> bytes | None:
        """`size` bytes at `start` of a member: read in place when it is stored (as
        torch.save writes), decompressed only when small."""
        try:
            info = self.archive.getinfo(name)
        except KeyError:
            return None
        if start + size > info.file_size:
            return None
        try:
            if info.flag_bits & 1:  # encrypted
                return None
            if info.compress_type == zipfile.ZIP_STORED:
                return self.stored_bytes(info, start, size)
            if info.file_size <= MAX_COMPRESSED_STORAGE:
                with self.archive.open(info) as member:
                    return member.read(start + size)[start:]
        except (OSError, *MEMBER_ERRORS):
            return None
        return None

    def stored_bytes(self, info: zipfile.ZipInfo, start: int, size: int) -> bytes | None:
        self.f.seek(info.header_offset)
        header = self.f.read(30)
        if len(header) != 30 or header[:4] != b"PK\x03\x04":
            return None
        name_length, extra_length = struct.unpack("<HH", header[26:30])
        self.f.seek(info.header_offset + 30 + name_length + extra_length + start)
        data = self.f.read(size)
        return data if len(data) == size else None

