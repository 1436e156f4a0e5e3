"""What the pickled files of a checkpoint would import when loaded, found without loading them.

Unpickling runs code: a pickle names globals (`module.name`) that the unpickler imports
and may call, so `torch.load` of a file whose pickle names `os.system` runs a shell
command. At seal, every pickle-named file (`*.pt *.pth *.bin *.ckpt *.pkl *.pickle`) is
walked opcode by opcode, never unpickled, and each global it imports that is not on the
safe list below (data-only constructors: torch tensors and storages, numpy arrays,
plain containers; the enums and config classes transformers, accelerate and Lightning
pickle into their own checkpoints, the config classes only when rebuilt from saved
state rather than called) is a finding. Inside a torch zip (`torch.save` since 1.6) each `*.pkl`
member is walked; inside a legacy tar (`torch.save` before 0.4) each member is; a file
that is neither is walked as a pickle stream, including the pickles torch's legacy
format writes one after the other.

The result is the sidecar's `scan` section (docs/sidecar.md):

    {"status": "clean" | "unsafe" | "unscanned",
     "findings": [{"file": "optimizer.pt", "pickle": "optimizer/data.pkl",
                   "global": "posix.system"}],
     "files": {"optimizer.pt": "unsafe", "model.safetensors": "safe format",
               "extra.bin": "unscanned: not a pickle (byte 0x3f at offset 0 ...)"}}

The walk follows the unpickler's own rules, so that it can stop only where the unpickler
would stop too: an unknown opcode or the end of the bytes ends a load before anything
after it runs (the file is then "unscanned", and whatever it imported before that point
is still a finding). Where the walk cannot tell what a global is (its name computed
rather than written as a constant, an extension code) it is a finding. A pickle too
large to walk within the limits is a finding as well: what it would import past the
limit is unknown.
"""
import errno
import os
import stat
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field

from ckptfs.store.ingest import walk_source

from .errors import SealRefused
from .pickle_stream import (EFFECTS, MEMO_GETS, MEMO_PUTS, PICKLE_HIGHEST, STRING_OPS,
                            ArchiveUnreadable, LimitReached, Malformed, Stream, member_stream,
                            named_global, next_opcode, read_argument, stacked_global,
                            string_value, zip_directory)
from .pickle_stream import compat_name, importable  # noqa: F401 (the tests use them from here)

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")
SAFE_FORMAT_SUFFIXES = (".safetensors",)
DEFAULT_POLICY = "warn"          # the project setting unsafe_pickles: warn | refuse

MAX_OPCODES = 2_000_000          # per file: a torch data.pkl has thousands
MAX_MEMBER_BYTES = 1 << 30       # a pickle inside a zip or tar larger than this is not read
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


def is_safe(module: str, name: str, allowed: frozenset = frozenset()) -> bool:
    """Is the global `module.name` on the safe list (or the project's `pickle_allow`)?"""
    if name in SAFE_GLOBALS.get(module, ()):
        return True
    if "." not in name:
        prefix = SAFE_PREFIXES.get(module)
        if prefix is not None and name.startswith(prefix):
            return True
        if module in STORAGE_MODULES and name.endswith("Storage"):
            return True
    return allowed_by_project(module, name, allowed)


def allowed_by_project(module: str, name: str, allowed: frozenset) -> bool:
    return f"{module}.{name}" in allowed or f"{module}.*" in allowed


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
                pop()
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


# -- files ---------------------------------------------------------------------------------

@dataclass
class FileScan:
    status: str                   # clean | unsafe | unscanned: <why>
    findings: list[dict] = field(default_factory=list)


def scan_file(path: str, rel: str, allowed: frozenset = frozenset()) -> FileScan:
    """Scan one pickle-named file. Never raises: what cannot be read is `unscanned`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        return FileScan(f"unscanned: cannot be read ({e.strerror or e})")
    try:
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                return FileScan("unscanned: not a regular file")
            return scan_open_file(f, info.st_size, rel, allowed)
    except OSError as e:
        return FileScan(f"unscanned: cannot be read ({e.strerror or e})")
    except Exception as e:  # the scan must never fail the seal: say so instead
        return FileScan(f"unscanned: unexpected error ({e!r})")


def scan_open_file(f, size: int, rel: str, allowed: frozenset) -> FileScan:
    if size == 0:
        return FileScan("unscanned: empty file")
    head = f.read(4)
    f.seek(0)
    walker = Walker()
    # As torch.load decides: a zip only if the file starts like one (a pickle with a zip
    # appended is loaded as the pickle, so it is walked as one).
    if head == b"PK\x03\x04":
        return scan_members(rel, zip_members(f), walker, allowed, "zip")
    if looks_like_tar(f):
        return scan_members(rel, tar_members(f), walker, allowed, "tar")
    f.seek(0)
    return judge(rel, [(None, walker.walk_stream(Stream(f, size)))], allowed,
                 require_whole=size)


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


def zip_members(f):
    """(member name, Stream | reason it cannot be read) for each `*.pkl` of a zip."""
    try:
        archive = zip_directory(f)
    except ArchiveUnreadable as e:
        yield None, str(e)
        return
    infos = [i for i in archive.infolist() if i.filename.endswith(".pkl") and not i.is_dir()]
    if not infos:
        yield None, "zip archive with no .pkl member"
    for info in infos:
        try:
            yield info.filename, member_stream(archive, info, MAX_MEMBER_BYTES)
        except LimitReached as e:
            yield info.filename, e
        except ArchiveUnreadable as e:
            yield info.filename, str(e)


def tar_members(f):
    """(member name, Stream | reason) for each file of a tar (torch's format before 0.4)."""
    try:
        archive = tarfile.open(fileobj=f, mode="r:")
        infos = [m for m in archive.getmembers() if m.isfile()]
    except (tarfile.TarError, EOFError, ValueError) as e:
        yield None, f"tar archive that cannot be read ({e})"
        return
    if not infos:
        yield None, "tar archive with no file member"
    for info in infos:
        if info.size > MAX_MEMBER_BYTES:
            yield info.name, LimitReached(f"over {MAX_MEMBER_BYTES >> 20} MiB: not read")
            continue
        yield info.name, Stream(archive.extractfile(info), info.size)


def scan_members(rel: str, members, walker: Walker, allowed: frozenset, kind: str) -> FileScan:
    walks = []
    try:
        for member, stream in members:
            if isinstance(stream, LimitReached):
                walks.append((member, PickleWalk(problems=[str(stream)], limited=True)))
            elif isinstance(stream, str):
                walks.append((member, PickleWalk(error=stream)))
            else:
                walks.append((member, walker.walk_stream(stream)))
    except (zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError) as e:
        walks.append((None, PickleWalk(error=f"{kind} archive that cannot be read ({e})")))
    return judge(rel, walks, allowed)


def judge(rel: str, walks: list[tuple[str | None, PickleWalk]], allowed: frozenset,
          require_whole: int | None = None) -> FileScan:
    """The file's status and findings from the walks of its pickle(s). `require_whole`
    (the size of a plain file) asks that a protocol 0/1 pickle be the whole file."""
    findings = []
    reasons = []
    for member, walk in walks:
        is_pickle = walk.protocol >= 2 or not walk.error
        if not walk.error and not walk.limited and require_whole is not None \
                and walk.protocol < 2 and walk.end < require_whole:
            # A protocol 0/1 pickle is alone in its file: bytes that parse as one only
            # at their start are something else (raw numbers that begin like a pickle).
            is_pickle = False
            reasons.append(f"not a pickle (only its first {walk.end} bytes parse as one)")
        findings += pickle_findings(rel, member, walk, allowed, is_pickle)
        if walk.error:
            reasons.append((f"{member}: " if member else "") + describe_failure(walk))
    if findings:
        return FileScan("unsafe", findings)
    if reasons:
        return FileScan("unscanned: " + "; ".join(reasons))
    return FileScan("clean")


def describe_failure(walk: PickleWalk) -> str:
    if walk.error.startswith(("not a pickle", "zip archive", "tar archive", "cannot be read")):
        return walk.error
    if walk.protocol >= 2:
        return f"truncated or damaged pickle ({walk.error})"
    return f"not a pickle ({walk.error})"


def pickle_findings(rel: str, member: str | None, walk: PickleWalk, allowed: frozenset,
                    is_pickle: bool) -> list[dict]:
    """One finding per distinct unsafe global (and per problem) of one pickle."""
    unsafe = [f"{module}.{name}" for module, name in walk.imported
              if not is_safe(module, name, allowed)]
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
    return findings


MISUSED = "used otherwise than rebuilt from saved state: loading it would run its code"


# -- a checkpoint directory ----------------------------------------------------------------

def scan_directory(src: str, allowed=()) -> dict:
    """The sidecar's `scan` section for the version directory `src` (docs/sidecar.md).
    `allowed`: the project's `pickle_allow` globals (`module.name` or `module.*`)."""
    allowed = frozenset(allowed)
    files, findings = {}, []
    for entry in walk_source(src)[1]:
        if entry.kind != "file":
            continue
        lower = entry.path.lower()
        if lower.endswith(SAFE_FORMAT_SUFFIXES):
            files[entry.path] = "safe format"
        elif lower.endswith(PICKLE_SUFFIXES):
            result = scan_file(entry.abs_path, entry.path, allowed)
            files[entry.path] = result.status
            findings += result.findings
    return {"status": overall_status(files, findings), "findings": findings, "files": files}


def overall_status(files: dict, findings: list) -> str:
    if findings:
        return "unsafe"
    if any(status.startswith("unscanned") for status in files.values()):
        return "unscanned"
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
    """The sidecar `warnings` of an unsafe scan, one per finding."""
    return [f"unsafe pickle: {describe_finding(f)}" + (
        "" if f.get("problem") == MISUSED else " (not on the safe list: loading it may run code)")
        for f in scan["findings"]]


class UnsafePickleError(SealRefused):
    """A project with `unsafe_pickles=refuse` was given a version whose pickles import
    globals that are not on the safe list."""

    errno = errno.EPERM

    def __init__(self, message: str, findings: list[dict]):
        super().__init__(message)
        self.findings = findings


def refuse_if_unsafe(scan: dict, policy: str, project: str, name: str) -> None:
    """Raise UnsafePickleError if the project refuses unsafe pickles and `scan` found some.
    One line: the CLI prints it as is, the mount writes it to `<version>.error`."""
    if policy != "refuse" or scan["status"] != "unsafe":
        return
    listing = "; ".join(describe_finding(f) for f in scan["findings"])
    raise UnsafePickleError(
        f"version {name} refused: unsafe pickles: {listing} (project {project} has "
        "unsafe_pickles=refuse). Replace or remove the file, allow a global you trust with "
        f"`ckptfs config set STORE {project} pickle_allow=MODULE.NAME`, or seal it with a "
        f"warning after `ckptfs config set STORE {project} unsafe_pickles=warn`",
        scan["findings"])
