"""Reading a pickle's opcodes without unpickling it: what scan.py (which globals would a
load import?) and pickled.py (what plain values does it hold?) both need.

A pickle is a program for a small stack machine. `Stream` reads its bytes forward,
`read_argument` reads the argument of one opcode (keeping strings up to MAX_KEPT bytes,
skipping longer arguments without holding them in memory), `string_value` decodes a
string constant as the unpickler would, `named_global`/`stacked_global` the names a
global opcode imports. `zip_directory` and `member_stream` open the members of a torch
zip (`torch.save` since 1.6) within a size limit. Nothing here imports or calls what a
pickle names.
"""
import _compat_pickle
import codecs
import io
import pickletools
import zipfile
import zlib

MAX_KEPT = 4096                  # longest string constant (or name) kept; longer ones skipped
READ_CHUNK = 1 << 16

PROTO = 0x80
PICKLE_HIGHEST = 5


class Malformed(Exception):
    """The bytes stop being a pickle here: the unpickler would fail at this point too."""


class LimitReached(Exception):
    """The pickle is too large to walk within the limits."""


class Stream:
    """A pickle's bytes read forward: exact small reads, lines kept up to MAX_KEPT bytes,
    long arguments skipped without being held in memory."""

    def __init__(self, f, size: int):
        self.f, self.size = f, size

    @property
    def offset(self) -> int:
        return self.f.tell()

    def read(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise Malformed(f"the bytes end inside an opcode (offset {self.offset})")
        return data

    def skip(self, n: int) -> None:
        if self.offset + n > self.size:
            raise Malformed(f"an argument of {n} bytes runs past the end (offset {self.offset})")
        if self.f.seekable():
            self.f.seek(n, io.SEEK_CUR)
            return
        while n:
            n -= len(self.read(min(n, READ_CHUNK)))

    def line(self) -> tuple[bytes, bool]:
        """The next line without its newline: (its first MAX_KEPT bytes, whether that is all)."""
        kept = self.f.readline(MAX_KEPT + 1)
        if kept.endswith(b"\n"):
            return kept[:-1], True
        if len(kept) <= MAX_KEPT:  # the bytes end inside the line: the C unpickler fails
            if not kept:           # here, the pure-Python one takes the line less its last
                raise Malformed(f"the bytes end before a line argument (offset {self.offset})")
            return kept[:-1], True  # byte (and fails on the next read): do as it does
        rest = kept
        while not rest.endswith(b"\n"):  # too long to keep: read on to its end
            rest = self.f.readline(READ_CHUNK)
            if not rest:
                raise Malformed(f"the bytes end inside a line argument (offset {self.offset})")
        return kept[:MAX_KEPT], False

    def starts_pickle(self) -> bool:
        """Do the next bytes begin a pickle of protocol 2 or later (PROTO 2..5)?"""
        head = self.f.read(2)
        self.f.seek(-len(head), io.SEEK_CUR)
        return len(head) == 2 and head[0] == PROTO and 2 <= head[1] <= PICKLE_HIGHEST


OPCODES = {ord(op.code): op for op in pickletools.opcodes}


def stack_effect(op) -> tuple[bool, int, int]:
    """(pops down to a MARK?, values popped besides, values pushed) of an opcode."""
    before = op.stack_before
    if pickletools.markobject in before:
        return True, before.index(pickletools.markobject), len(op.stack_after)
    return False, len(before), len(op.stack_after)


EFFECTS = {op.name: stack_effect(op) for op in OPCODES.values()}
LENGTH_PREFIX = {pickletools.TAKEN_FROM_ARGUMENT1: (1, False),
                 pickletools.TAKEN_FROM_ARGUMENT4: (4, True),
                 pickletools.TAKEN_FROM_ARGUMENT4U: (4, False),
                 pickletools.TAKEN_FROM_ARGUMENT8U: (8, False)}
STRING_OPS = frozenset({"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE",
                        "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8"})
MEMO_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
MEMO_GETS = frozenset({"GET", "BINGET", "LONG_BINGET"})
INT_ARG_OPS = MEMO_PUTS | MEMO_GETS | {"PROTO", "EXT1", "EXT2", "EXT4"}


def next_opcode(stream: Stream):
    """The next opcode (a pickletools.OpcodeInfo). Malformed at the end of the bytes (a
    pickle ends with STOP) or on a byte that is no opcode."""
    code = stream.f.read(1)
    if not code:
        raise Malformed(f"the bytes end before the pickle's STOP (offset {stream.offset})")
    op = OPCODES.get(code[0])
    if op is None:
        raise Malformed(f"byte 0x{code[0]:02x} at offset {stream.offset - 1} "
                        "is not a pickle opcode")
    return op


class Skipped:
    """An argument too long to keep: read past, not held. `length` in bytes (None for a
    line argument, whose length is not counted)."""

    def __init__(self, length: int | None):
        self.length = length


def read_argument(stream: Stream, op, keep=STRING_OPS):
    """The argument of `op`: bytes (or a (bytes, bytes) pair for GLOBAL and INST), an
    int for memo, protocol and extension opcodes, Skipped for a long one, or None.
    Length-prefixed arguments are kept (up to MAX_KEPT bytes) only for opcodes in `keep`."""
    arg = op.arg
    if arg is None:
        return None
    if arg.n >= 0:
        data = stream.read(arg.n)
        if op.name in INT_ARG_OPS:
            return int.from_bytes(data, "little", signed=op.name == "EXT4")
        return data
    if arg.n == pickletools.UP_TO_NEWLINE:
        if op.name in ("GLOBAL", "INST"):
            return stream.line(), stream.line()
        text, whole = stream.line()
        if op.name in MEMO_PUTS | MEMO_GETS:
            return memo_index(text)
        return text if whole else Skipped(None)
    width, signed = LENGTH_PREFIX[arg.n]
    length = int.from_bytes(stream.read(width), "little", signed=signed)
    if length < 0:
        raise Malformed(f"{op.name} has a negative length (offset {stream.offset})")
    if op.name in keep and length <= MAX_KEPT:
        return stream.read(length)
    stream.skip(length)
    return Skipped(length)


def memo_index(text: bytes) -> int:
    try:
        index = int(text)
    except ValueError:
        raise Malformed(f"memo index {text[:20]!r} is not a number") from None
    if index < 0:
        raise Malformed("negative memo index")
    return index


def string_value(name: str, data) -> str | None:
    """The str a string opcode pushes, or None if it was too long to keep or cannot be
    decoded (the unpickler would fail on undecodable bytes; a reader then only knows
    it is not a name it has seen)."""
    if isinstance(data, Skipped):
        return None
    try:
        if name == "STRING":  # protocol 0: a quoted Python 2 literal
            if len(data) < 2 or data[0] != data[-1] or data[:1] not in (b"'", b'"'):
                raise Malformed("a STRING argument is not quoted")
            return codecs.escape_decode(data[1:-1])[0].decode("latin-1")
        if name == "UNICODE":
            return data.decode("raw-unicode-escape")
        if name in ("BINSTRING", "SHORT_BINSTRING"):
            return data.decode("latin-1")
        return data.decode("utf-8", "surrogatepass")
    except (UnicodeDecodeError, ValueError):
        return None


def importable(text: str) -> bool:
    return all(part.isidentifier() for part in text.split("."))


def named_global(module_line: tuple[bytes, bool], name_line: tuple[bytes, bool],
                 protocol: int) -> tuple[str, str]:
    """GLOBAL and INST: the names as the unpickler decodes and maps them."""
    try:
        module, name = module_line[0].decode("utf-8"), name_line[0].decode("utf-8")
    except UnicodeDecodeError:
        raise Malformed("a GLOBAL names a module that is not UTF-8") from None
    if not (module_line[1] and name_line[1]):  # too long to be a real name: a finding
        return module + ("…" if not module_line[1] else ""), name + "…"
    if not (importable(module) and importable(name)):
        raise Malformed(f"GLOBAL {module!r} {name!r} names nothing importable")
    return compat_name(module, name, protocol)


def stacked_global(module: str, name: str) -> tuple[str, str]:
    """STACK_GLOBAL of two string constants: module and name."""
    if not (importable(module) and importable(name)):
        raise Malformed(f"STACK_GLOBAL {module[:80]!r} {name[:80]!r} names nothing importable")
    return module, name


def compat_name(module: str, name: str, protocol: int) -> tuple[str, str]:
    """Python 2 names (`__builtin__.set`, `copy_reg._reconstructor`) as the unpickler of a
    protocol 0-2 pickle maps them to Python 3's."""
    if protocol < 3:
        if (module, name) in _compat_pickle.NAME_MAPPING:
            return _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    return module, name


# -- zip archives ----------------------------------------------------------------------------

class ArchiveUnreadable(Exception):
    """A zip (or one of its members) that cannot be read; the message says why."""


ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError)
MEMBER_ERRORS = (zipfile.BadZipFile, NotImplementedError, RuntimeError, EOFError, zlib.error,
                 ValueError)


def zip_directory(f) -> zipfile.ZipFile:
    """The zip archive in file object `f`, its central directory read (nothing else)."""
    try:
        return zipfile.ZipFile(f)
    except ZIP_ERRORS as e:
        raise ArchiveUnreadable(f"zip archive whose directory cannot be read ({e})") from None


def member_stream(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> Stream:
    """A Stream over one member, refused (LimitReached) if it says it is over `limit`
    bytes: the central directory's size is checked before a byte is decompressed."""
    if info.file_size > limit:
        raise LimitReached(f"over {limit >> 20} MiB: not read")
    try:
        return Stream(archive.open(info), info.file_size)
    except MEMBER_ERRORS as e:
        raise ArchiveUnreadable(f"cannot be read ({e})") from None
