"""What the pickled files of a checkpoint would import when loaded, found without loading them.

Unpickling runs code: a pickle names globals (`module.name`) that the unpickler imports
and may call, so `torch.load` of a file whose pickle names `os.system` runs a shell
command. At seal, every file of the version is read by content, whatever its name (a
zip, an .npy, a tar, else a pickle stream), and each pickle in it is walked opcode by
opcode, never unpickled: each global it imports that is not on the safe list below
(data-only constructors: torch tensors and storages, numpy arrays, plain containers; the
enums and config classes transformers, accelerate and Lightning pickle into their own
checkpoints, the config classes only when rebuilt from saved state rather than called)
is a finding. Inside a zip (`torch.save` since 1.6, `.npz`) each `*.pkl` member, and
each member that begins like a pickle or an .npy, is read whatever its flags, CRC or
central directory say (zip_entries.py); an .npy whose dtype holds objects has a pickle
after its header; inside a legacy tar (`torch.save` before 0.4) each pickle member is
walked; a file that is none of these is walked as a pickle stream, including the pickles
torch's legacy format writes one after the other.

The result is the sidecar's `scan` section (docs/sidecar.md):

    {"status": "clean" | "unsafe" | "allowed" | "unscanned",
     "findings": [{"file": "optimizer.pt", "pickle": "optimizer/data.pkl",
                   "global": "posix.system"}],
     "files": {"optimizer.pt": "unsafe", "model.safetensors": "safe format",
               "extra.bin": "not a pickle (byte 0x3f at offset 0 ...)"},
     "allowed": [...]}   # only when a risky global was admitted by `pickle_allow`

The walk follows the unpickler's own rules, so that it can stop only where the unpickler
would stop too: an unknown opcode or the end of the bytes ends a load before anything
after it runs (whatever it imported before that point is still a finding; a file that
begins as a pickle and stops early is "unscanned", one that never was one is "not a
pickle"). Under `unsafe_pickles=refuse` an unscanned version is refused like an unsafe
one: what its unread pickle would import is unknown. Where the walk cannot tell what a
global is (its name computed rather than written as a constant, an extension code) it is
a finding. A pickle too large to walk within the limits is a finding as well: what it
would import past the limit is unknown.
"""
import ast
import bz2
import errno
import gzip
import io
import lzma
import os
import re
import stat
import tarfile
import tempfile
import zlib
from dataclasses import dataclass, field

from ckptfs.store.ingest import walk_source

from . import zip_entries
from .errors import SealRefused
from .pickle_stream import (
    EFFECTS,
    MEMO_GETS,
    MEMO_PUTS,
    PICKLE_HIGHEST,
    PROTO,
    STRING_OPS,
    LimitReached,
    Malformed,
    Stream,
    compat_name,  # noqa: F401 (the tests use it from here)
    importable,
    named_global,
    next_opcode,
    read_argument,
    stacked_global,
    string_value,
)

# Names under which a file without a pickle is still listed (as `not a pickle`).
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle", ".joblib")
SAFE_FORMAT_SUFFIXES = (".safetensors",)
DEFAULT_POLICY = "warn"          # the project setting unsafe_pickles: warn | refuse

MAX_OPCODES = 2_000_000          # per file: a torch data.pkl has thousands
MAX_MEMBER_BYTES = 1 << 30       # a pickle inside a zip or tar larger than this is not read
MAX_INFLATED_BYTES = 2 << 30     # per file: compressed members inflated, all together
MAX_FINDINGS_PER_PICKLE = 20     # distinct globals listed per pickle; the rest are counted
MAX_KEPT_BYTES = 64 << 20        # string constants kept per file (the stack and memo hold them)

# -- the safe list -------------------------------------------------------------------------
# Globals a checkpoint's pickle may import without a finding: each builds data from its
# arguments and runs nothing the pickle chooses (what torch's own weights_only loader
# accepts, plus numpy's array and random-state reconstruction and a few stdlib value
# types). Matched on the exact (module, name) the unpickler would import. A project adds
# its own with the `pickle_allow` setting.
SAFE_GLOBALS = {
    "builtins": {"set", "frozenset", "slice", "range", "complex", "bytearray", "bytes",
                 "dict", "list", "tuple", "int", "float", "bool", "str", "object"},
    "collections": {"OrderedDict", "defaultdict", "Counter", "deque"},
    "copyreg": {"_reconstructor"},       # protocols 0 and 1: object.__new__ + __init__ of
    "_codecs": {"encode"},               # the class named beside it; bytes in protocol <3
    "datetime": {"datetime", "date", "time", "timedelta", "timezone"},
    "decimal": {"Decimal"},
    "fractions": {"Fraction"},
    "argparse": {"Namespace"},           # hyper-parameters of Lightning, fairseq
    "pathlib": {"Path", "PosixPath", "WindowsPath", "PurePath", "PurePosixPath",
                "PureWindowsPath"},
    "numpy": {"ndarray", "dtype"},
    "numpy.core.multiarray": {"_reconstruct", "scalar"},
    "numpy._core.multiarray": {"_reconstruct", "scalar"},
    "numpy.core.numeric": {"_frombuffer"},      # arrays in protocol 5
    "numpy._core.numeric": {"_frombuffer"},
    "numpy.random._pickle": {"__bit_generator_ctor", "__generator_ctor", "__randomstate_ctor"},
    "numpy.random._pcg64": {"PCG64", "PCG64DXSM"},
    "numpy.random._mt19937": {"MT19937"},
    "numpy.random._philox": {"Philox"},
    "numpy.random._sfc64": {"SFC64"},
    "numpy.random.bit_generator": {"SeedSequence", "__pyx_unpickle_SeedSequence"},
    "torch": {
        "Size", "device", "Tensor",
        # dtypes, layouts and memory formats are pickled by name
        "float16", "half", "bfloat16", "float32", "float", "float64", "double",
        "complex32", "chalf", "complex64", "cfloat", "complex128", "cdouble",
        "uint8", "uint16", "uint32", "uint64", "int8", "int16", "short", "int32", "int",
        "int64", "long", "bool", "quint8", "qint8", "qint32", "quint4x2", "quint2x4",
        "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz",
        "strided", "sparse_coo", "sparse_csr", "sparse_csc", "sparse_bsr", "sparse_bsc",
        "contiguous_format", "channels_last", "channels_last_3d", "preserve_format",
    },
    "torch._tensor": {"_rebuild_from_type_v2"},
    "torch.nn.parameter": {"Parameter"},
    "torch.serialization": {"_get_layout"},
}
# What transformers, accelerate and Lightning write into their own checkpoints
# (training_args.bin, Lightning's hyper-parameters), found by scanning what each writes.
# Enums: calling one looks a member up by value (or fails), whatever the arguments.
FRAMEWORK_ENUMS = {
    ("transformers.training_args", "OptimizerNames"),
    ("transformers.trainer_utils", "SchedulerType"),
    ("transformers.trainer_utils", "IntervalStrategy"),
    ("transformers.trainer_utils", "SaveStrategy"),
    ("transformers.trainer_utils", "HubStrategy"),
    ("transformers.trainer_utils", "FSDPOption"),
    ("transformers.trainer_utils", "HPSearchBackend"),
    ("transformers.trainer_utils", "EvaluationStrategy"),    # transformers 4.x
    ("transformers.trainer_utils", "ShardedDDPOption"),      # transformers 4.x
    ("transformers.debug_utils", "DebugOption"),
    ("accelerate.utils.dataclasses", "DistributedType"),
}
# A dict with attribute access: Lightning's hyper-parameters.
ATTRIBUTE_DICTS = {
    ("lightning.fabric.utilities.data", "AttributeDict"),      # lightning 2.x
    ("lightning_fabric.utilities.data", "AttributeDict"),      # pytorch_lightning 2.x
    ("pytorch_lightning.utilities.parsing", "AttributeDict"),  # pytorch_lightning 1.x
}
# Safe only when rebuilt from saved state: NEWOBJ with no arguments (`cls.__new__(cls)`,
# which is object.__new__ for each: no __init__ runs), then BUILD, which fills the new
# instance's __dict__ (none of them defines __setstate__). Called instead (REDUCE, INST,
# OBJ, NEWOBJ with arguments) or handed to another constructor (copyreg._reconstructor
# calls its base's __init__), their __init__/__post_init__ would run: set up devices,
# read config files named in the arguments, start a distributed process group. Any
# such use is a finding, unless the project allows the class by name (`pickle_allow`).
STATE_ONLY = {
    ("transformers.training_args", "TrainingArguments"),
    ("transformers.training_args_seq2seq", "Seq2SeqTrainingArguments"),
    ("transformers.trainer_pt_utils", "AcceleratorConfig"),
    ("transformers.generation.configuration_utils", "GenerationConfig"),
    ("accelerate.state", "PartialState"),
}
for _module, _name in FRAMEWORK_ENUMS | ATTRIBUTE_DICTS | STATE_ONLY:
    SAFE_GLOBALS.setdefault(_module, set()).add(_name)

# torch._utils._rebuild_tensor_v2, _rebuild_parameter, … (every tensor rebuilder).
SAFE_PREFIXES = {"torch._utils": "_rebuild_"}
# torch.FloatStorage, torch.UntypedStorage, torch.cuda.HalfStorage, … (storage classes;
# torch's loader uses them as type tags of the tensor data, it does not call them).
STORAGE_MODULES = ("torch", "torch.cuda", "torch.storage")


def on_safe_list(module: str, name: str) -> bool:
    """Is the global `module.name` on ckptfs's own safe list?"""
    if name in SAFE_GLOBALS.get(module, ()):
        return True
    if "." not in name:
        prefix = SAFE_PREFIXES.get(module)
        if prefix is not None and name.startswith(prefix):
            return True
        if module in STORAGE_MODULES and name.endswith("Storage"):
            return True
    return False


def is_safe(module: str, name: str, allowed: frozenset = frozenset()) -> bool:
    """Is the global `module.name` on the safe list (or the project's `pickle_allow`)?"""
    return on_safe_list(module, name) or allowed_by_project(module, name, allowed)


def allowed_by_project(module: str, name: str, allowed: frozenset) -> bool:
    # Only a name the walk read: `<computed>.system` is no global a rule can name.
    if not (importable(module) and importable(name)):
        return False
    # `module.*` is the module's own globals, not attributes of its classes: it must not
    # admit `pathlib.Path.write_text` because the project trusts `pathlib.Path`.
    return f"{module}.{name}" in allowed or ("." not in name and f"{module}.*" in allowed)


# -- risky globals: what a `pickle_allow` rule may not admit without --force -----------------
# Modules any of whose globals runs commands, code, or reaches files, the network or the
# interpreter (and their submodules): a rule admitting one of them turns the scan off
# for exactly what it exists to catch.
RISKY_MODULES = (
    "os", "posix", "nt", "posixpath", "ntpath", "subprocess", "_posixsubprocess", "pty",
    "sys", "runpy", "importlib", "imp", "pkgutil", "zipimport", "code", "codeop", "pdb",
    "bdb", "trace", "timeit", "profile", "cProfile", "doctest", "pydoc", "webbrowser",
    "shutil", "tempfile", "glob", "io", "_io", "socket", "ssl", "http", "urllib",
    "ftplib", "smtplib", "telnetlib", "xmlrpc", "requests", "ctypes", "_ctypes", "cffi",
    "multiprocessing", "concurrent", "threading", "_thread", "asyncio", "signal",
    "pickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle", "joblib", "types",
    "functools", "operator", "inspect", "gc", "platform", "commands", "popen2", "pip",
    "codecs", "fileinput", "mmap", "resource", "sqlite3", "dbm", "zipfile", "tarfile",
    "setuptools", "distutils", "torch.hub", "torch.jit", "torch.package",
    "torch.utils.cpp_extension", "numpy.testing", "numpy.f2py", "__builtin__")
# Globals of otherwise harmless modules that run code or load other pickles.
RISKY_NAMES = {
    "builtins": {"eval", "exec", "compile", "open", "__import__", "getattr", "setattr",
                 "delattr", "globals", "locals", "vars", "input", "breakpoint", "exit", "quit",
                 "help", "memoryview", "__build_class__", "__loader__", "__spec__"},
    "torch": {"load", "hub", "jit", "package", "ops", "classes"},
    "torch.serialization": {"load", "_load", "_legacy_load"},
    "numpy": {"load", "loadtxt", "fromfile", "memmap", "testing"},
    "numpy.lib.npyio": {"load"},
    "copyreg": {"__newobj__", "__newobj_ex__", "_reconstructor_ex"},
}


def is_risky(module: str, name: str) -> bool:
    """Does loading a pickle that names `module.name` let it run code of its choosing?"""
    if any(module == risky or module.startswith(risky + ".") for risky in RISKY_MODULES):
        return True
    return name.split(".")[0] in RISKY_NAMES.get(module, ())


def risky_globals_of_rule(rule: str) -> list[str]:
    """The risky globals a `pickle_allow` rule admits (up to a few, as examples); empty
    for a rule that admits none."""
    module, _, name = rule.rpartition(".")
    if name != "*":  # "a.b.c" matches a.b's c as well as a's b.c: risky if either is
        parts = rule.split(".")
        splits = ((".".join(parts[:i]), ".".join(parts[i:])) for i in range(1, len(parts)))
        return [rule] if any(is_risky(m, n) for m, n in splits) else []
    if any(module == risky or module.startswith(risky + ".") for risky in RISKY_MODULES):
        return [f"{module}.* (the whole module)"]
    names = sorted(RISKY_NAMES.get(module, ()), key=lambda n: (n.startswith("_"), n))
    return [f"{module}.{name}" for name in names]


class AllowRuleRefused(ValueError):
    """A `pickle_allow` rule that is malformed, or admits a risky global without force."""

    errno = errno.EINVAL


def check_allow_rules(rules: list[str], force: bool = False) -> None:
    """Refuse a `pickle_allow` rule that is not `module.name` / `module.*`, or that admits
    a risky global (unless `force`: the project takes the risk, and every version
    whose pickles use such a global says `allowed` rather than `clean`)."""
    for rule in rules:
        module, _, name = rule.rpartition(".")
        if not (importable(module) and (name == "*" or importable(name))):
            raise AllowRuleRefused(f"pickle_allow rule {rule!r} is not MODULE.NAME or MODULE.*")
        risky = risky_globals_of_rule(rule)
        if risky and not force:
            examples = ", ".join(risky[:4]) + (", ..." if len(risky) > 4 else "")
            raise AllowRuleRefused(
                f"pickle_allow rule {rule!r} admits globals that run code when a pickle is "
                f"loaded ({examples}): name the exact globals you trust, or repeat with "
                "--force to take the risk (versions using them then scan as 'allowed')")


# -- walking a pickle stream -----------------------------------------------------------------

class Unknown:
    """A stack value the walk does not track (anything but a string constant)."""

    def __repr__(self):
        return "<computed>"


UNKNOWN = Unknown()
MARK = object()
NO_ARGS = object()  # an empty tuple: the arguments of NEWOBJ when nothing is passed


class GlobalRef:
    """A global on the stack, to see how it is used: a STATE_ONLY class may only be the
    class of a NEWOBJ without arguments."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __repr__(self):
        return f"{self.module}.{self.name}"


@dataclass
class PickleWalk:
    """What walking one pickle stream (a file, or a member of a zip or tar) found."""
    imported: list[tuple[str, str]] = field(default_factory=list)  # (module, name), in order
    # Names the walk cannot read (computed on the stack, extension codes): findings only
    # if the bytes are a pickle at all, since in bytes that merely begin like one they
    # are noise (and the unpickler fails on them without a registered extension).
    unreadable: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)   # findings that are not a global
    misused: list[tuple[str, str]] = field(default_factory=list)  # STATE_ONLY classes called
    pickles: int = 0              # pickles read to their STOP
    limited: bool = False         # stopped by MAX_OPCODES: what follows is unknown
    error: str | None = None      # why the walk stopped before a STOP, if it did
    protocol: int = 0             # of the first pickle (0 when it has no PROTO opcode)
    end: int = 0                  # offset just after the last STOP


class Walker:
    """The opcode walk of one file, with the file's opcode and string budgets."""

    def __init__(self):
        self.opcodes = 0
        self.kept_bytes = 0
        self.inflated = 0        # bytes of compressed members inflated so far

    def inflate_budget(self) -> int:
        """How much the next compressed member may inflate to: a zip of many members that
        each inflate to the member limit must not keep the seal busy for hours."""
        return max(0, min(MAX_MEMBER_BYTES, MAX_INFLATED_BYTES - self.inflated))

    def walk_stream(self, stream: Stream) -> PickleWalk:
        """Every pickle at the start of `stream`: the first, and any that follow it with
        a PROTO opcode (torch's legacy format writes five, then raw tensor bytes)."""
        found = PickleWalk()
        while True:
            try:
                self.walk_pickle(stream, found)
            except LimitReached as e:
                found.problems.append(str(e))
                found.limited = True
                return found
            except Malformed as e:
                if found.pickles == 0:
                    found.error = str(e)
                return found  # after a complete pickle: the rest was data after all
            found.pickles += 1
            found.end = stream.offset
            if stream.offset >= stream.size or not stream.starts_pickle():
                return found

    def kept_string(self, name: str, arg):
        """A string constant, kept (it may name a module) while the file's strings stay
        under MAX_KEPT_BYTES: past that, UNKNOWN, so that memory stays bounded and a
        global named by it is a `<computed>` finding rather than a miss."""
        text = string_value(name, arg)
        if text is None:
            return UNKNOWN
        self.kept_bytes += len(arg)
        return text if self.kept_bytes <= MAX_KEPT_BYTES else UNKNOWN

    def walk_pickle(self, stream: Stream, found: PickleWalk) -> None:
        """One pickle, up to its STOP, tracking the stack as far as names need it."""
        stack: list = []
        memo: dict = {}
        protocol = 0

        def pop():
            if stack and stack[-1] is not MARK:
                return stack.pop()
            return UNKNOWN  # the unpickler fails here (underflow): nothing is hidden by going on

        def use(value):
            """`value` is taken by an opcode that may call it or pass it on."""
            if isinstance(value, GlobalRef) and (value.module, value.name) in STATE_ONLY:
                found.misused.append((value.module, value.name))

        def pop_mark():
            while stack:
                value = stack.pop()
                if value is MARK:
                    return
                use(value)

        while True:
            self.opcodes += 1
            if self.opcodes > MAX_OPCODES:
                raise LimitReached(f"over {MAX_OPCODES:,} opcodes: not walked to the end")
            op = next_opcode(stream)
            arg = read_argument(stream, op)
            name = op.name
            if name == "STOP":
                if not stack or stack[-1] is MARK:  # the unpickler fails: stack underflow
                    raise Malformed(f"STOP with nothing to return (offset {stream.offset - 1})")
                stack.pop()
                return
            if name == "PROTO":
                if arg > PICKLE_HIGHEST:
                    raise Malformed(f"unsupported pickle protocol {arg}")
                protocol = arg
                if found.pickles == 0:
                    found.protocol = arg
            elif name in STRING_OPS:
                stack.append(self.kept_string(name, arg))
            elif name == "GLOBAL":
                found.imported.append(named_global(*arg, protocol))
                stack.append(GlobalRef(*found.imported[-1]))
            elif name == "INST":  # import the class and call it with the values to MARK
                found.imported.append(named_global(*arg, protocol))
                use(GlobalRef(*found.imported[-1]))
                pop_mark()
                stack.append(UNKNOWN)
            elif name == "STACK_GLOBAL":
                attr, module = pop(), pop()
                if isinstance(module, str) and isinstance(attr, str):
                    found.imported.append(stacked_global(module, attr))
                    stack.append(GlobalRef(*found.imported[-1]))
                else:
                    found.unreadable.append(f"{module}.{attr}")
                    stack.append(UNKNOWN)
            elif name in ("EXT1", "EXT2", "EXT4"):
                found.unreadable.append(f"<extension code {arg}>")
                stack.append(UNKNOWN)
            elif name == "MARK":
                stack.append(MARK)
            elif name in MEMO_PUTS:
                memo[arg] = stack[-1] if stack else UNKNOWN
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1] if stack else UNKNOWN
            elif name in MEMO_GETS:
                stack.append(memo.get(arg, UNKNOWN))
            elif name == "DUP":
                stack.append(stack[-1] if stack else UNKNOWN)
            elif name == "POP":
                if stack:
                    stack.pop()  # a MARK too, as the unpickler does
            elif name == "EMPTY_TUPLE":
                stack.append(NO_ARGS)
            elif name in NUMBER_LINES:
                check_number_line(name, arg, stream.offset)
                stack.append(UNKNOWN)
            elif name == "NEWOBJ":  # cls.__new__(cls, *args): a rebuild when args is ()
                args, cls = pop(), pop()
                if args is not NO_ARGS:
                    use(cls)
                stack.append(UNKNOWN)
            else:  # pop what it takes (down to a MARK if it takes a slice), push values
                to_mark, popped, pushed = EFFECTS[name]  # the walk does not follow
                if to_mark:
                    pop_mark()
                for _ in range(popped):
                    use(pop())
                for _ in range(pushed):
                    stack.append(UNKNOWN)


NUMBER_LINES = ("INT", "LONG", "FLOAT")
# What the C or the Python unpickler takes as an integer line (strtol with base 0, int()):
# anything else stops both, as text does ("INFO: ..." read as INT).
INTEGER_LINE = re.compile(rb"\s*[+-]?[0-9a-fA-FxXoO_]+L?\s*")


def check_number_line(name: str, arg, offset: int) -> None:
    """Malformed where neither unpickler could read the number of an INT, LONG or FLOAT."""
    if not isinstance(arg, bytes):
        return  # too long to keep: let it pass, as a number it might be
    if name == "FLOAT":
        try:
            float(arg)
            return
        except ValueError:
            pass
    elif INTEGER_LINE.fullmatch(arg):
        return
    raise Malformed(f"{name} argument {arg[:20]!r} is not a number (before offset {offset})")


# -- files ---------------------------------------------------------------------------------
# What a file is goes by its first bytes, never by its name: a pickle named `weights.dat`,
# a torch zip named `model.zip`, a numpy file of objects named `x.npy` are all loaded by
# someone. The name only decides whether a file that turns out to hold no pickle is
# listed in the sidecar (`not a pickle (...)`) or left out.

NPY_MAGIC = b"\x93NUMPY"
MAX_NPY_HEADER = 1 << 20         # np.load takes any size with allow_pickle; this is plenty


@dataclass
class FileScan:
    status: str                   # clean | unsafe | allowed | unscanned: <why> | not a pickle (<why>)
    findings: list[dict] = field(default_factory=list)
    allowed: list[dict] = field(default_factory=list)   # risky globals a project rule admits


@dataclass
class Part:
    """One pickle stream of a file: the file itself, an archive member, an npy payload."""
    member: str | None
    walk: PickleWalk
    required: bool                # known to be a pickle (by name or format): damage counts
    whole: int | None = None      # the size of a plain file: a protocol 0/1 pickle fills it


@dataclass
class Contents:
    """What reading a file found: its pickle streams, what could not be read (the file is
    then `unscanned`), and why parts are not pickles."""
    parts: list[Part] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    not_pickles: list[str] = field(default_factory=list)


def scan_file(path: str, rel: str, allowed: frozenset = frozenset()) -> FileScan:
    """Scan one file, whatever its name. Never raises: what cannot be read is `unscanned`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        return FileScan(f"unscanned: cannot be read ({e.strerror or e})")
    try:
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                return FileScan("unscanned: not a regular file")
            named = rel.lower().endswith(PICKLE_SUFFIXES)
            return judge(rel, read_contents(f, info.st_size, named), allowed)
    except OSError as e:
        return FileScan(f"unscanned: cannot be read ({e.strerror or e})")
    except Exception as e:  # the scan must never fail the seal: say so instead
        return FileScan(f"unscanned: unexpected error ({one_line(repr(e))})")


def read_contents(f, size: int, named: bool = True) -> Contents:
    """What the file holds. `named`: its name is a pickle's, so a headerless stream that
    begins as a pickle and stops early makes it `unscanned` (else it is taken for data)."""
    if size == 0:
        return Contents(not_pickles=["empty file"])
    head = f.read(8)
    f.seek(0)
    walker = Walker()
    # As torch.load and np.load decide: a zip only if the file starts like one (a pickle
    # with a zip appended is loaded as the pickle, so it is walked as one).
    if head.startswith(zip_entries.LOCAL_SIGNATURE):
        return zip_contents(f, size, walker)
    if head.startswith(NPY_MAGIC):
        return npy_contents(f, size, None, walker)
    if looks_like_tar(f):
        return tar_contents(f, walker)
    compression = compression_of(head)
    if compression is not None:
        return compressed_contents(f, compression, walker)
    f.seek(0)
    walk = walker.walk_stream(Stream(f, size))
    if named or starts_framed(head):
        # A file that begins with a protocol header and stops early is unscanned whatever
        # its name: joblib, for one, writes raw array bytes inside its pickle stream and
        # its unpickler goes on after them, so what follows must not pass unread.
        return Contents([Part(None, walk, True, whole=size)])
    # Without a protocol header or a pickle's name, text and raw numbers often begin like
    # a protocol 0 pickle (a log whose lines all start with "INFO" walks as INT opcodes):
    # such a file counts as a pickle only if it is one, whole.
    if walk.pickles and not walk.error and not walk.limited and walk.end == size:
        return Contents([Part(None, walk, False, whole=size)])
    return Contents(not_pickles=["no pickle protocol header, and not one whole pickle"])


# Whole-file compressions that joblib (compress=...) and pandas (`.pkl.gz`) wrap pickles in.
COMPRESSIONS = ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"))


def compression_of(head: bytes) -> str | None:
    for magic, name in COMPRESSIONS:
        if head.startswith(magic):
            return name
    # a zlib header: deflate, and its two bytes a multiple of 31 (joblib's "zlib")
    if len(head) >= 2 and head[0] == 0x78 and int.from_bytes(head[:2], "big") % 31 == 0:
        return "zlib"
    return None


def opened_compressed(f, compression: str):
    if compression == "gzip":
        return gzip.GzipFile(fileobj=f, mode="rb")
    if compression == "bzip2":
        return bz2.BZ2File(f, "rb")
    if compression == "xz":
        return lzma.LZMAFile(f, "rb")
    return ZlibReader(f)


class ZlibReader(io.RawIOBase):
    """A zlib stream read forward, inflated as it is read."""

    def __init__(self, f):
        self.f, self.inflater = f, zlib.decompressobj()

    def readable(self):
        return True

    def readinto(self, buffer) -> int:
        data = b""
        while not data and not self.inflater.eof:
            chunk = self.inflater.unconsumed_tail or self.f.read(1 << 16)
            if not chunk:
                break
            data = self.inflater.decompress(chunk, len(buffer))
        buffer[:len(data)] = data
        return len(data)


def compressed_contents(f, compression: str, walker: Walker) -> Contents:
    """A compressed file is a pickle (`pickle` in its findings: `<gzip>`...) if what it
    inflates to begins with a protocol header; anything else inside (a tarball of logs)
    is left alone. Inflated into a temporary file, up to the member limit."""
    label = f"<{compression}>"
    f.seek(0)
    with tempfile.SpooledTemporaryFile(16 << 20) as spool:
        try:
            with opened_compressed(f, compression) as inflated:
                head = inflated.read(2)
                if not starts_framed(head):
                    return Contents(not_pickles=[f"{compression} data that is no pickle"])
                spool.write(head)
                size, problem = copy_limited(inflated, spool, MAX_MEMBER_BYTES - len(head))
        except (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError) as e:
            return Contents(not_pickles=[f"{compression} data that cannot be inflated ({e})"])
        if size is None:
            limit = f"over {MAX_MEMBER_BYTES >> 20} MiB: not read"
            return Contents([Part(label, PickleWalk(problems=[limit], limited=True), True)])
        spool.seek(0)
        found = Contents([Part(label, walker.walk_stream(Stream(spool, len(head) + size)),
                               True)])
    if problem:
        found.unreadable.append(f"{label}: {problem}")
    return found


def copy_limited(source, out, limit: int) -> tuple[int | None, str | None]:
    """Copy `source` to `out`: (bytes copied or None past `limit`, why the copy may be
    incomplete: the compressed data is damaged)."""
    size = 0
    try:
        while chunk := source.read(1 << 20):
            size += len(chunk)
            if size > limit:
                return None, None
            out.write(chunk)
    except (OSError, EOFError, zlib.error, lzma.LZMAError) as e:
        return size, f"its data cannot be inflated ({e})"
    return size, None


def starts_framed(head: bytes) -> bool:
    """Do the bytes begin with a pickle's protocol header (PROTO 2..5)?"""
    return len(head) >= 2 and head[0] == PROTO and 2 <= head[1] <= PICKLE_HIGHEST


def looks_like_tar(f) -> bool:
    """Does the file start with a valid (uncompressed) tar header, as torch's legacy
    loader requires? Checked on the first block only: nothing is decompressed."""
    try:
        tarfile.TarInfo.frombuf(f.read(tarfile.BLOCKSIZE), tarfile.ENCODING, "surrogateescape")
        return True
    except tarfile.HeaderError:
        return False
    finally:
        f.seek(0)


def member_kind(name: str, head: bytes) -> str | None:
    """How a member of an archive is read: "pickle" (a `*.pkl`, as torch reads its
    data.pkl, or bytes that begin with a protocol 2+ header), "npy" (numpy's magic: an
    .npz member), or None (tensor bytes, text: nothing a loader unpickles)."""
    if name.endswith(".pkl") or starts_framed(head):
        return "pickle"
    if head.startswith(NPY_MAGIC):
        return "npy"
    return None


def zip_contents(f, size: int, walker: Walker) -> Contents:
    """Every entry that holds a pickle, read whatever its flags, CRC or directory say."""
    entries, problem = zip_entries.zip_entries(f, size)
    found = Contents(unreadable=[problem] if problem else [])
    for entry in entries:
        if not entry.name.endswith("/"):
            read_zip_entry(f, entry, walker, found)
    if not found.parts and not found.unreadable:
        found.not_pickles.append("zip archive with no pickle member")
    return found


def read_zip_entry(f, entry, walker: Walker, found: Contents) -> None:
    name = entry.name
    try:
        kind = member_kind(name, zip_entries.entry_head(f, entry))
    except zip_entries.EntryUnreadable as e:
        found.unreadable.append(f"{name}: cannot be read ({e})")
        return
    if kind is None:
        if entry.encrypted:  # its plain bytes are no pickle: they may be ciphertext of one
            found.unreadable.append(f"{name}: encrypted member (it may hold a pickle)")
        return
    opened = open_zip_member(f, entry, walker, found)
    if opened is None:
        return
    data, size = opened
    with data:
        if kind == "npy":
            member = npy_contents(data, size, name, walker)
            found.parts += member.parts
            found.unreadable += member.unreadable
            return
        walk = walker.walk_stream(Stream(data, size))
    if entry.encrypted and walk.pickles == 0 and not walk.imported:
        found.unreadable.append(f"{name}: encrypted member (it may hold a pickle)")
        return
    found.parts.append(Part(name, walk, required=name.endswith(".pkl")))


def open_zip_member(f, entry, walker: Walker, found: Contents):
    """(file, size) of a member's bytes, within the limits; None (and why, in `found`)
    when they cannot be had."""
    stored = entry.method == zip_entries.STORED
    budget = MAX_MEMBER_BYTES if stored else walker.inflate_budget()
    try:
        data, size, damage = zip_entries.open_entry(f, entry, budget)
    except zip_entries.EntryUnreadable as e:
        found.unreadable.append(f"{entry.name}: cannot be read ({e})")
        return None
    except zip_entries.TooLarge:
        walker.inflated += 0 if stored else budget
        limit = f"over {budget >> 20} MiB: not read" if budget == MAX_MEMBER_BYTES else \
            f"past the {MAX_INFLATED_BYTES >> 20} MiB this file's members may inflate to: not read"
        found.parts.append(Part(entry.name, PickleWalk(problems=[limit], limited=True), True))
        return None
    walker.inflated += 0 if stored else size
    if damage:
        found.unreadable.append(f"{entry.name}: {damage}")
    return data, size


def tar_contents(f, walker: Walker) -> Contents:
    """The members of a tar (torch's format before 0.4) that hold pickles."""
    found = Contents()
    try:
        archive = tarfile.open(fileobj=f, mode="r:")
        for info in (m for m in archive.getmembers() if m.isfile()):
            member = archive.extractfile(info)
            kind = member_kind(info.name, member.read(8))
            member.seek(0)
            if kind is not None and info.size > MAX_MEMBER_BYTES:
                limit = f"over {MAX_MEMBER_BYTES >> 20} MiB: not read"
                found.parts.append(Part(info.name, PickleWalk(problems=[limit], limited=True),
                                        True))
            elif kind == "npy":
                npy = npy_contents(member, info.size, info.name, walker)
                found.parts += npy.parts
                found.unreadable += npy.unreadable
            elif kind == "pickle":
                found.parts.append(Part(info.name, walker.walk_stream(Stream(member, info.size)),
                                        info.name.endswith(".pkl")))
    except (tarfile.TarError, EOFError, ValueError, zlib.error) as e:
        found.unreadable.append(f"tar archive that cannot be read ({e})")
    if not found.parts and not found.unreadable:
        found.not_pickles.append("tar archive with no pickle member")
    return found


def npy_contents(f, size: int, member: str | None, walker: Walker) -> Contents:
    """A numpy .npy: np.load unpickles what follows the header when the dtype holds
    Python objects (with allow_pickle=True, which such a file needs)."""
    where = f"{member}: " if member else ""
    try:
        dtype = npy_dtype(f)
    except (ValueError, SyntaxError, TypeError, KeyError, MemoryError, RecursionError) as e:
        return Contents(unreadable=[f"{where}numpy header that cannot be read "
                                    f"({one_line(str(e))[:200]})"])
    if not dtype.hasobject:
        return Contents(not_pickles=[f"{where}numpy array of {dtype}"])
    return Contents([Part(member, walker.walk_stream(Stream(f, size)), True)])


def npy_dtype(f):
    """The dtype in an .npy header (read as numpy does: a Python literal, never code)."""
    import numpy.lib.format as npy_format  # numpy only when an .npy turns up

    magic = f.read(8)
    major = magic[6]
    if major not in (1, 2, 3):
        raise ValueError(f"unknown .npy version {major}")
    width = 2 if major == 1 else 4
    length = int.from_bytes(f.read(width), "little")
    if length > MAX_NPY_HEADER:
        raise ValueError(f"header of {length} bytes")
    header = f.read(length)
    if len(header) != length:
        raise ValueError("the file ends inside the header")
    described = ast.literal_eval(header.decode("utf-8" if major == 3 else "latin-1"))
    return npy_format.descr_to_dtype(described["descr"])


def one_line(text: str) -> str:
    return " ".join(text.split())


def judge(rel: str, contents: Contents, allowed: frozenset) -> FileScan:
    """The file's status, findings and admitted risky globals from what was read."""
    findings, admitted = [], []
    unreadable, not_pickles = list(contents.unreadable), list(contents.not_pickles)
    pickles_read = False
    for part in contents.parts:
        walk, where = part.walk, (f"{part.member}: " if part.member else "")
        # A protocol 0/1 pickle is alone in its file: bytes that parse as one only at
        # their start are something else (raw numbers that begin like a pickle).
        partial = not walk.error and not walk.limited and part.whole is not None \
            and walk.protocol < 2 and walk.end < part.whole
        is_pickle = (walk.protocol >= 2 or not walk.error) and not partial
        found, risky = pickle_findings(rel, part.member, walk, allowed, is_pickle)
        findings += found
        admitted += risky
        if walk.error and walk.protocol >= 2 and part.required:
            unreadable.append(f"{where}truncated or damaged pickle ({walk.error})")
        elif walk.error:
            not_pickles.append(where + walk.error)
        elif partial:
            unreadable.append(f"{where}only its first {walk.end} bytes parse as a pickle")
        else:
            pickles_read = True
    if findings:
        return FileScan("unsafe", findings)
    if unreadable:
        return FileScan("unscanned: " + one_line("; ".join(unreadable)))
    if admitted:
        return FileScan("allowed", allowed=admitted)
    if pickles_read:
        return FileScan("clean")
    return FileScan("not a pickle (" + one_line("; ".join(not_pickles)) + ")")


def pickle_findings(rel: str, member: str | None, walk: PickleWalk, allowed: frozenset,
                    is_pickle: bool) -> tuple[list[dict], list[dict]]:
    """One finding per distinct unsafe global (and per problem) of one pickle, and the
    risky globals that a project rule admitted (listed, not findings)."""
    unsafe, admitted = [], []
    for module, name in dict.fromkeys(walk.imported):
        if on_safe_list(module, name):
            continue
        if not allowed_by_project(module, name, allowed):
            unsafe.append(f"{module}.{name}")
        elif is_risky(module, name) or "." in name:  # a method reached through its class
            admitted.append({"file": rel, "pickle": member, "global": f"{module}.{name}"})
    if is_pickle:
        unsafe += walk.unreadable
    findings = [{"file": rel, "pickle": member, "global": name} for name in dict.fromkeys(unsafe)]
    if len(findings) > MAX_FINDINGS_PER_PICKLE:
        more = len(findings) - MAX_FINDINGS_PER_PICKLE
        findings = findings[:MAX_FINDINGS_PER_PICKLE]
        findings.append({"file": rel, "pickle": member, "global": None,
                         "problem": f"{more} more globals not on the safe list"})
    for module, name in dict.fromkeys(walk.misused):
        if not allowed_by_project(module, name, allowed):
            findings.append({"file": rel, "pickle": member, "global": f"{module}.{name}",
                             "problem": MISUSED})
    for problem in walk.problems:
        findings.append({"file": rel, "pickle": member, "global": None, "problem": problem})
    return findings, admitted


MISUSED = "used otherwise than rebuilt from saved state: loading it would run its code"


# -- a checkpoint directory ----------------------------------------------------------------

def scan_directory(src: str, allowed=()) -> dict:
    """The sidecar's `scan` section for the version directory `src` (docs/sidecar.md).
    `allowed`: the project's `pickle_allow` globals (`module.name` or `module.*`).
    Every file is read; one that holds no pickle is listed only if its name says it
    should (a pickle suffix, `.npy`, or `.safetensors` that is no safetensors file)."""
    allowed = frozenset(allowed)
    files, findings, admitted = {}, [], []
    for entry in walk_source(src)[1]:
        if entry.kind != "file":
            continue
        lower = entry.path.lower()
        if lower.endswith(SAFE_FORMAT_SUFFIXES) and is_safetensors(entry.abs_path):
            files[entry.path] = "safe format"
            continue
        result = scan_file(entry.abs_path, entry.path, allowed)
        if result.status.startswith("not a pickle") and not lower.endswith(LISTED_SUFFIXES):
            continue
        files[entry.path] = result.status
        findings += result.findings
        admitted += result.allowed
    scan = {"status": overall_status(files, findings, admitted), "findings": findings,
            "files": files}
    if admitted:
        scan["allowed"] = admitted
    return scan


LISTED_SUFFIXES = PICKLE_SUFFIXES + SAFE_FORMAT_SUFFIXES + (".npy", ".npz", ".zip")


def is_safetensors(path: str) -> bool:
    """A safetensors file: an 8-byte little-endian header length, then a JSON object of
    that length (checked on its first byte) inside the file."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return False
    if len(head) < 9:
        return False
    return 8 + int.from_bytes(head[:8], "little") <= size and head[8:9] == b"{"


def overall_status(files: dict, findings: list, admitted: list = ()) -> str:
    if findings:
        return "unsafe"
    if any(status.startswith("unscanned") for status in files.values()):
        return "unscanned"
    if admitted:
        return "allowed"
    return "clean"


def describe_finding(finding: dict) -> str:
    """`optimizer.pt [optimizer/data.pkl] imports posix.system` (or its problem)."""
    where = finding["file"] + (f" [{finding['pickle']}]" if finding.get("pickle") else "")
    if finding["global"] is None:
        return f"{where}: {finding['problem']}"
    if finding.get("problem"):
        return f"{where} imports {finding['global']}, {finding['problem']}"
    return f"{where} imports {finding['global']}"


def scan_warnings(scan: dict) -> list[str]:
    """The sidecar `warnings` of a scan: one per unsafe finding, one per risky global
    that a project rule admitted."""
    warnings = [f"unsafe pickle: {describe_finding(f)}" + (
        "" if f.get("problem") == MISUSED else " (not on the safe list: loading it may run code)")
        for f in scan["findings"]]
    warnings += [f"allowed pickle: {describe_finding(f)} (admitted by the project's "
                 "pickle_allow: loading it may run code)" for f in scan.get("allowed", ())]
    return warnings


class UnsafePickleError(SealRefused):
    """A project with `unsafe_pickles=refuse` was given a version whose pickles import
    globals that are not on the safe list."""

    errno = errno.EPERM

    def __init__(self, message: str, findings: list[dict]):
        super().__init__(message)
        self.findings = findings


def refuse_if_unsafe(scan: dict, policy: str, project: str, name: str) -> None:
    """Raise UnsafePickleError if the project refuses unsafe pickles and `scan` found some,
    or found files that might hold a pickle but could not be read to the end (`unscanned`:
    what they would import is unknown). One line: the CLI prints it as is, the mount
    writes it to `<version>.error`."""
    if policy != "refuse" or scan["status"] not in ("unsafe", "unscanned"):
        return
    if scan["status"] == "unsafe":
        listing = "; ".join(describe_finding(f) for f in scan["findings"])
        raise UnsafePickleError(
            f"version {name} refused: unsafe pickles: {listing} (project {project} has "
            "unsafe_pickles=refuse). Replace or remove the file, allow a global you trust with "
            f"`ckptfs config set STORE {project} pickle_allow=MODULE.NAME`, or seal it with a "
            f"warning after `ckptfs config set STORE {project} unsafe_pickles=warn`",
            scan["findings"])
    unscanned = {path: status for path, status in scan["files"].items()
                 if status.startswith("unscanned")}
    listing = "; ".join(f"{path}: {status.removeprefix('unscanned: ')}"
                        for path, status in unscanned.items())
    raise UnsafePickleError(
        f"version {name} refused: files that may hold pickles could not be scanned to the "
        f"end: {listing} (project {project} has unsafe_pickles=refuse). Replace or remove "
        "the file, or seal it unscanned after "
        f"`ckptfs config set STORE {project} unsafe_pickles=warn`",
        [{"file": path, "pickle": None, "global": None, "problem": status}
         for path, status in unscanned.items()])
