"""Pickle scanning at seal (meta/scan.py): real pickles made with the stdlib `pickle` in
every protocol, torch's zip, legacy and tar layouts built by hand (torch is not
installed), files that are not pickles, damaged and huge ones; then through a real
mount and the real CLI: a checkpoint whose optimizer.pt calls os.system is sealed with
`scan.status` unsafe under `unsafe_pickles=warn`, and kept in the inbox with the finding
in its `.error` file under `refuse` until the file is replaced.

Nothing here ever loads a pickle it made: creating one whose __reduce__ names os.system
does not run it. The only unpickling is the recording one in
test_walk_sees_every_global_the_unpickler_would_import, whose find_class hands back a
harmless stand-in instead of importing anything."""
import argparse
import collections
import datetime
import io
import os
import pickle
import tarfile
import time
import zipfile

import numpy as np
import pytest

from ckptfs.meta import scan
from ckptfs.meta.scan import (
    Stream,
    Walker,
    compat_name,
    scan_directory,
    scan_file,
    scan_warnings,
)
from tests.helpers import scan as helpers
from tests.helpers.pickles import (
    break_directory,
    patch_zip,
    torch_zip,
    without_directory,
    zip_bytes,
)
from tests.helpers.samples import make_checkpoint, make_hf_checkpoint
from tests.helpers.scan import (
    CallsOsSystem,
    evil_state,
    scanned,
    training_args,
    write,
    zip_variants,
)

fake_torch = helpers.fake_torch  # a fixture (tests/helpers/scan.py)
trainer_classes = helpers.trainer_classes  # a fixture (tests/helpers/scan.py)


PROTOCOLS = range(0, pickle.HIGHEST_PROTOCOL + 1)


def globals_of(finding_list) -> list:
    return [f["global"] for f in finding_list]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_os_system_is_found_in_every_protocol(tmp_path, protocol):
    data = pickle.dumps(CallsOsSystem(), protocol=protocol)
    result = scanned(tmp_path, data)
    # os.system is posix.system: the pickle names the module that defines it
    assert result.status == "unsafe"
    assert result.findings == [{"file": "x.pkl", "pickle": None, "global": "posix.system"}]
    nested = scanned(tmp_path, evil_state(protocol))
    assert (nested.status, globals_of(nested.findings)) == ("unsafe", ["posix.system"])


def test_hand_written_protocol_0_globals_and_python_2_names(tmp_path):
    hand = b"cos\nsystem\n(S'echo pwned'\ntR."
    assert globals_of(scanned(tmp_path, hand).findings) == ["os.system"]
    # Python 2 names are mapped as the unpickler maps them (__builtin__ -> builtins)
    py2 = b"c__builtin__\neval\n(S'1+1'\ntR."
    assert globals_of(scanned(tmp_path, py2).findings) == ["builtins.eval"]
    assert scanned(tmp_path, b"c__builtin__\nset\n((lp0\nI1\natp1\nRp2\n.").status == "clean"
    inst = b"(S'echo'\nisubprocess\ncall\np0\n."  # INST: import and call in one opcode
    assert globals_of(scanned(tmp_path, inst).findings) == ["subprocess.call"]


DATA_ONLY = {
    "ndarray": np.arange(12, dtype=np.float32).reshape(3, 4),
    "dtype": np.dtype([("a", "<f4"), ("b", "<i8")]),
    "scalar": np.float64(2.5),
    "rng": np.random.default_rng(0),
    "legacy_rng_state": np.random.RandomState(0).get_state(),
    "ordered": collections.OrderedDict(b=1, a=2),
    "defaultdict": collections.defaultdict(list, {"k": [1]}),
    "counter": collections.Counter("hello"),
    "containers": [{1, 2}, frozenset({3}), slice(1, 9, 2), range(5), 1 + 2j, bytearray(b"x"),
                   b"bytes", (1, "two", 3.0), None, True],
    "time": datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
    "delta": datetime.timedelta(days=1),
    "namespace": argparse.Namespace(lr=0.1, epochs=3),
}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_data_only_pickles_are_clean(tmp_path, protocol):
    result = scanned(tmp_path, pickle.dumps(DATA_ONLY, protocol=protocol))
    assert (result.status, result.findings) == ("clean", [])


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_torch_state_dict_pickle_is_clean_and_names_torch_globals(tmp_path, fake_torch, protocol):
    data = fake_torch.dumps(fake_torch.state_dict(), protocol)
    walk = Walker().walk_stream(Stream(io.BytesIO(data), len(data)))
    assert set(walk.imported) == {("collections", "OrderedDict"), ("torch", "FloatStorage"),
                                  ("torch._utils", "_rebuild_tensor_v2")}
    assert scanned(tmp_path, data, "model.pt").status == "clean"
    mixed = fake_torch.dumps({"model": fake_torch.state_dict(), "x": CallsOsSystem()}, protocol)
    assert globals_of(scanned(tmp_path, mixed, "model.pt").findings) == ["posix.system"]


def test_stack_global_names_come_from_the_memo(tmp_path):
    # protocol 4 writes the module name "posix" once, then fetches it from the memo for
    # the second global: the walk must follow the memo to name it
    data = pickle.dumps([os.system, os.getcwd, os.system], protocol=4)
    assert b"getcwd" in data and data.count(b"posix") == 1
    assert globals_of(scanned(tmp_path, data).findings) == ["posix.system", "posix.getcwd"]


def test_a_name_computed_on_the_stack_is_a_finding(tmp_path):
    # builtins.str("posix") makes the module name at load time: no constant names it
    computed = (b"\x80\x04\x8c\x08builtins\x8c\x03str\x93\x8c\x05posix\x85R"
                b"\x8c\x06system\x93\x8c\x02ls\x85R.")
    result = scanned(tmp_path, computed)
    assert result.status == "unsafe"
    assert globals_of(result.findings) == ["<computed>.system"]


def test_torch_zip_members_are_walked(tmp_path, fake_torch):
    clean = torch_zip(tmp_path / "clean.pt", {"archive/data.pkl": fake_torch.dumps(
        fake_torch.state_dict())})
    assert scan_file(clean, "clean.pt").status == "clean"
    evil = torch_zip(tmp_path / "evil.pt", {"archive/data.pkl": fake_torch.dumps({}),
                                            "archive/constants.pkl": evil_state()})
    result = scan_file(evil, "evil.pt")
    assert result.status == "unsafe"
    assert result.findings == [{"file": "evil.pt", "pickle": "archive/constants.pkl",
                                "global": "posix.system"}]
    without = torch_zip(tmp_path / "none.pt", {})
    assert scan_file(without, "none.pt").status == "not a pickle (zip archive with no pickle member)"
    cut = torch_zip(tmp_path / "cut.pt", {"archive/data.pkl": pickle.dumps({"a": 1}, 2)[:-3]})
    assert scan_file(cut, "cut.pt").status.startswith(
        "unscanned: archive/data.pkl: truncated or damaged pickle (the bytes end ")


def test_a_pickle_with_a_zip_appended_is_walked_as_the_pickle(tmp_path):
    # torch.load decides by the first bytes: this loads the pickle, not the zip
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({}, protocol=2))
    result = scanned(tmp_path, evil_state() + buffer.getvalue(), "polyglot.pt")
    assert globals_of(result.findings) == ["posix.system"]


def test_legacy_torch_format_every_pickle_before_the_raw_data(tmp_path):
    # torch.save before 1.6: magic number, protocol, sys info, the object, storage keys,
    # then raw tensor bytes; the payload sits in the fourth pickle
    pickles = [pickle.dumps(0x1950A86A20F9469CFC6C, 2), pickle.dumps(1001, 2),
               pickle.dumps({"little_endian": True}, 2), evil_state(), pickle.dumps(["0"], 2)]
    raw = np.random.default_rng(1).standard_normal(256, dtype=np.float32).tobytes()
    result = scanned(tmp_path, b"".join(pickles) + raw, "legacy.pt")
    assert globals_of(result.findings) == ["posix.system"]
    pickles[3] = pickle.dumps({"w": [1.0, 2.0]}, 2)
    assert scanned(tmp_path, b"".join(pickles) + raw, "legacy.pt").status == "clean"


def test_legacy_tar_format_members_are_walked(tmp_path):
    path = tmp_path / "old.pt"
    with tarfile.open(path, "w") as archive:
        for name, payload in (("sys_info", pickle.dumps({}, 2)), ("pickle", evil_state())):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    result = scan_file(str(path), "old.pt")
    assert result.findings == [{"file": "old.pt", "pickle": "pickle", "global": "posix.system"}]


def test_files_that_are_not_pickles_are_listed_with_the_reason(tmp_path):
    raw = make_checkpoint(tmp_path / "ck")  # its optimizer.pt is raw float32 bytes
    status = scan_file(os.path.join(raw, "optimizer.pt"), "optimizer.pt").status
    assert status.startswith("not a pickle (byte 0x")
    assert status.endswith(" is not a pickle opcode)")
    assert scanned(tmp_path, b"").status == "not a pickle (empty file)"
    # pickle.load would load the start: what follows is unknown, so it is not `clean`
    assert scanned(tmp_path, b"NNNN.and then text").status == \
        "unscanned: only its first 5 bytes parse as a pickle"
    for seed in range(200):  # random numbers never pass for a pickle, nor for an unsafe one
        rng = np.random.default_rng(seed)
        noise = rng.standard_normal(300, dtype=np.float32).tobytes() if seed % 2 else \
            rng.integers(0, 256, 1200, dtype=np.uint8).tobytes()
        status = scanned(tmp_path, noise, "noise.bin").status
        assert status.startswith("not a pickle ("), (seed, status)


def test_truncated_pickles(tmp_path):
    clean = pickle.dumps({"w": list(range(100))}, protocol=4)
    status = scanned(tmp_path, clean[:-20]).status
    assert status.startswith("unscanned: truncated or damaged pickle (the bytes end ")
    # what an unpickler would import before the cut still counts
    evil = pickle.dumps(CallsOsSystem(), protocol=4)
    cut = evil[:evil.index(b"R") + 1]
    assert globals_of(scanned(tmp_path, cut).findings) == ["posix.system"]
    damaged = pickle.dumps([1, 2, 3], protocol=2)[:-1] + b"\xff"
    assert scanned(tmp_path, damaged).status == \
        "unscanned: truncated or damaged pickle (byte 0xff at offset 13 is not a pickle opcode)"


def test_huge_files_are_not_read_whole(tmp_path):
    # sparse files: 8 GiB of bytes inside one argument, and 8 GiB of zeros
    big = tmp_path / "big.pkl"
    with open(big, "wb") as f:
        size = 8 << 30
        f.write(b"\x80\x04\x8e" + size.to_bytes(8, "little"))
        f.seek(size, os.SEEK_CUR)
        f.write(b".")
    zeros = tmp_path / "zeros.bin"
    with open(zeros, "wb") as f:
        f.truncate(8 << 30)
    started = time.monotonic()
    assert scan_file(str(big), "big.pkl").status == "clean"
    assert scan_file(str(zeros), "zeros.bin").status == \
        "not a pickle (byte 0x00 at offset 0 is not a pickle opcode)"
    assert time.monotonic() - started < 2


def test_a_pickle_over_the_opcode_limit_is_a_finding(tmp_path, monkeypatch):
    monkeypatch.setattr(scan, "MAX_OPCODES", 1000)
    result = scanned(tmp_path, pickle.dumps(list(range(5000)), protocol=2))
    assert result.status == "unsafe"
    assert result.findings == [{"file": "x.pkl", "pickle": None, "global": None,
                                "problem": "over 1,000 opcodes: not walked to the end"}]


def test_strings_past_the_budget_are_not_kept_and_cannot_hide_a_global(tmp_path, monkeypatch):
    # 2,000,000 kept strings of 4 KiB would hold 8 GiB: past the budget they are unknown
    monkeypatch.setattr(scan, "MAX_KEPT_BYTES", 10_000)
    filler = pickle.dumps([str(i) * 1000 for i in range(20)], protocol=4)[:-1] + b"0"  # POP
    assert scanned(tmp_path, filler + b"N.").status == "clean"  # None: STOP needs a value
    evil = pickle.dumps(os.system, protocol=4)[2:]  # STACK_GLOBAL of 'posix', 'system'
    result = scanned(tmp_path, filler + evil)
    assert globals_of(result.findings) == ["<computed>.<computed>"]


class RecordingUnpickler(pickle._Unpickler):
    """The pure-Python unpickler, with every import recorded and replaced by a stand-in
    that accepts any call: what a real load would import, with nothing run."""

    class StandIn:
        def __new__(cls, *args, **kwargs):
            return object.__new__(cls)

        def __init__(self, *args, **kwargs):
            pass

        def __setstate__(self, state):
            pass

    def __init__(self, data: bytes):
        super().__init__(io.BytesIO(data))
        self.imported = set()

    def find_class(self, module, name):
        module, name = compat_name(module, name, self.proto)
        if not (scan.importable(module) and scan.importable(name)):
            raise pickle.UnpicklingError("no such module")  # as the import would
        self.imported.add((module, name))
        return self.StandIn

    def persistent_load(self, pid):
        return pid


def test_walk_sees_every_global_the_unpickler_would_import(fake_torch):
    """Damaged pickles (bytes flipped, cut short) must not hide from the walk a global the
    unpickler would still reach: the walk stops only where the unpickler stops."""
    bases = [evil_state(p) for p in (0, 2, 4, 5)] + \
            [pickle.dumps(DATA_ONLY, protocol=p) for p in (1, 3, 5)] + \
            [fake_torch.dumps({"m": fake_torch.state_dict(2), "x": CallsOsSystem()}, 4),
             b"cos\nsystem\n(S'echo pwned'\ntR."]
    rng = np.random.default_rng(6)
    checked = 0
    for base in bases:
        variants = [base[:cut] for cut in range(1, len(base), max(1, len(base) // 15))]
        for _ in range(40):
            mutated = bytearray(base)
            for position in rng.integers(0, len(base), 2):
                mutated[position] = rng.integers(0, 256)
            variants.append(bytes(mutated))
        for data in variants:
            unpickler = RecordingUnpickler(data)
            try:
                unpickler.load()
            except Exception:
                pass
            walk = Walker().walk_stream(Stream(io.BytesIO(data), len(data)))
            missed = unpickler.imported - set(walk.imported)
            assert not missed or walk.unreadable, (data, missed)
            checked += 1
    assert checked > 500


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_training_arguments_rebuilt_from_state_are_clean(tmp_path, fake_torch, trainer_classes,
                                                         protocol):
    path = torch_zip(tmp_path / "training_args.bin", {"training_args/data.pkl": pickle.dumps(
        training_args(trainer_classes), protocol)})
    assert scan_file(path, "training_args.bin") == scan.FileScan("clean")


TRAINING_ARGUMENTS = b"ctransformers.training_args\nTrainingArguments\n"


CALLED = "used otherwise than rebuilt from saved state: loading it would run its code"


@pytest.mark.parametrize("pickled", [
    b"\x80\x02" + TRAINING_ARGUMENTS + b"X\x03\x00\x00\x00out\x85R.",  # REDUCE: __init__
    b"\x80\x02" + TRAINING_ARGUMENTS + b"X\x03\x00\x00\x00out\x85\x81.",  # NEWOBJ, arguments
    b"(S'out'\nitransformers.training_args\nTrainingArguments\n.",  # INST
    b"(" + TRAINING_ARGUMENTS + b"S'out'\no.",  # OBJ
    b"ccopy_reg\n_reconstructor\n(" + TRAINING_ARGUMENTS + TRAINING_ARGUMENTS + b"NtR.",
    b"\x80\x02" + TRAINING_ARGUMENTS + b")\x81" + TRAINING_ARGUMENTS + b"b.",  # BUILD with it
], ids=["reduce", "newobj-args", "inst", "obj", "reconstructor", "build-argument"])
def test_training_arguments_called_are_unsafe(tmp_path, pickled):
    result = scanned(tmp_path, pickled, "training_args.bin")
    assert result.findings == [{"file": "training_args.bin", "pickle": None, "global":
                                "transformers.training_args.TrainingArguments", "problem": CALLED}]
    assert scan_warnings({"findings": result.findings}) == [
        "unsafe pickle: training_args.bin imports transformers.training_args.TrainingArguments, "
        + CALLED]
    allowed = frozenset({"transformers.training_args.TrainingArguments"})
    assert scan_file(str(tmp_path / "training_args.bin"), "training_args.bin", allowed).status \
        == "clean"


def test_scan_of_a_directory(tmp_path, fake_torch):
    ck = make_hf_checkpoint(tmp_path / "ck", 10)
    torch_zip(os.path.join(ck, "optimizer.pt"), {"optimizer/data.pkl": evil_state()})
    write(os.path.join(ck, "extra.pickle"), pickle.dumps(DATA_ONLY, 4))
    os.makedirs(os.path.join(ck, "sub"))
    write(os.path.join(ck, "sub", "raw.bin"), b"\x00" * 100)
    os.symlink("optimizer.pt", os.path.join(ck, "link.pt"))  # the target is scanned, once
    result = scan_directory(ck)
    assert result == {
        "status": "unsafe",
        "findings": [{"file": "optimizer.pt", "pickle": "optimizer/data.pkl",
                      "global": "posix.system"}],
        "files": {"extra.pickle": "clean", "model.safetensors": "safe format",
                  "optimizer.pt": "unsafe", "rng_state.pth": "clean", "scheduler.pt": "clean",
                  "sub/raw.bin": "not a pickle (byte 0x00 at offset 0 is not a "
                                 "pickle opcode)"}}
    # a risky global the project admits (a rule set with --force) is listed, not clean
    for rule in ("posix.system", "posix.*"):
        admitted = scan_directory(ck, [rule])
        assert (admitted["status"], admitted["findings"]) == ("allowed", [])
        assert admitted["allowed"] == [{"file": "optimizer.pt", "pickle": "optimizer/data.pkl",
                                        "global": "posix.system"}]
        assert admitted["files"]["optimizer.pt"] == "allowed"
        assert scan_warnings(admitted) == [
            "allowed pickle: optimizer.pt [optimizer/data.pkl] imports posix.system (admitted "
            "by the project's pickle_allow: loading it may run code)"]


@pytest.mark.parametrize("variant", list(zip_variants(b"")))
def test_zip_flags_crc_and_directory_cannot_hide_a_pickle(tmp_path, variant):
    evil = write(tmp_path / "model.pt", zip_variants(evil_state())[variant])
    result = scan_file(evil, "model.pt")
    assert result.findings == [{"file": "model.pt", "pickle": "archive/data.pkl",
                                "global": "posix.system"}], result.status
    # read whatever the flags say, a clean one is clean: nothing is left unread, but for
    # a member flagged encrypted whose plain bytes are no pickle (ciphertext, maybe)
    clean = write(tmp_path / "clean.pt", zip_variants(pickle.dumps(DATA_ONLY, 2))[variant])
    assert scan_file(clean, "clean.pt").status == (
        "unscanned: archive/byteorder: encrypted member (it may hold a pickle)"
        if "encrypted" in variant else "clean")


def test_real_torch_files_without_their_directory_are_still_read(tmp_path):
    """torch.save writes stored members whose sizes follow them (in a data descriptor):
    with the central directory gone, the walk finds each member's end by its descriptor."""
    torch = pytest.importorskip("torch")
    weights = {f"layer.{i}.weight": torch.zeros(64, 32) for i in range(4)}
    torch.save(weights, tmp_path / "clean.pt")
    torch.save({"model": weights, "hook": CallsOsSystem()}, tmp_path / "evil.pt")
    for damage in (break_directory, without_directory):
        for name in ("clean.pt", "evil.pt"):
            data = damage((tmp_path / name).read_bytes())
            result = scanned(tmp_path, data, f"damaged-{name}")
            expected = [] if name == "clean.pt" else ["posix.system"]
            assert (globals_of(result.findings), result.status) == \
                (expected, "unsafe" if expected else "clean"), (damage.__name__, name)


def test_members_inflate_within_one_budget_per_file(tmp_path, monkeypatch):
    """Many members that each inflate to the member limit: past the file's budget the
    rest are findings (what they import is unknown), not hours of inflating."""
    monkeypatch.setattr(scan, "MAX_MEMBER_BYTES", 60_000)
    monkeypatch.setattr(scan, "MAX_INFLATED_BYTES", 100_000)
    big = pickle.dumps([b"\0" * 50_000], protocol=4)
    data = zip_bytes({f"archive/{i}.pkl": big for i in range(4)}, zipfile.ZIP_DEFLATED)
    result = scanned(tmp_path, data, "model.pt")
    assert result.status == "unsafe"
    # the first inflates (50 kB), the second would pass the 100 kB: it and the rest are not
    assert [(f["pickle"], f["problem"]) for f in result.findings] == [
        (f"archive/{i}.pkl", "past the 0 MiB this file's members may inflate to: not read")
        for i in (1, 2, 3)]


def test_an_encrypted_member_that_is_no_plain_pickle_is_unscanned(tmp_path):
    ciphertext = np.random.default_rng(3).integers(0, 256, 400, dtype=np.uint8).tobytes()
    for name in ("archive/data.pkl", "archive/blob"):
        data = patch_zip(zip_bytes({name: ciphertext}), flags=0x1)
        status = scanned(tmp_path, data, "model.pt").status
        assert status.startswith("unscanned: ") and "encrypted member" in status, status
    # a compression method the scan does not read could hide anything
    lzma = zip_bytes({"archive/data.pkl": evil_state()}, zipfile.ZIP_LZMA)
    status = scanned(tmp_path, lzma, "model.pt").status
    assert status == ("unscanned: archive/data.pkl: cannot be read (compression method 14 is "
                      "not read by the scan)")


def object_array(*values) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


def test_pickles_are_found_by_content_whatever_the_name(tmp_path):
    version = tmp_path / "v"
    (version / "sub").mkdir(parents=True)
    write(version / "weights.dat", evil_state(4))
    write(version / "notes.txt", b"cos\nsystem\n(S'echo pwned'\ntR.")  # protocol 0, whole
    write(version / "model.zip", zip_bytes({"archive/data.pkl": evil_state()}))
    write(version / "model.safetensors", evil_state(2))  # named safe, holds a pickle
    write(version / "model.joblib", evil_state(4))
    np.save(version / "objects.npy", object_array(CallsOsSystem(), 1), allow_pickle=True)
    os.rename(version / "objects.npy", version / "sub" / "objects.cache")
    np.savez(version / "arrays.npz", ok=np.zeros(3), bad=object_array(CallsOsSystem()))
    np.save(version / "floats.npy", np.arange(4, dtype=np.float32))
    np.save(version / "plain-objects.npy", object_array({"lr": 0.1}, [1, 2]),
            allow_pickle=True)
    write(version / "README.md", b"# cat\ndog\nnot a pickle")
    write(version / "raw.dat", np.random.default_rng(0).standard_normal(64).tobytes())
    # text that begins like a protocol 0 pickle: a GLOBAL line pair, INT lines
    write(version / "names.txt", b"cat\ndog\nbird\n")
    write(version / "train.log", b"INFO step 1 loss 2.5\n" * 3000)
    write(version / "numbers.log", b"I1\nI2\n" * 3000)  # INT opcodes, never a STOP
    result = scan_directory(str(version))
    assert result["status"] == "unsafe"
    assert sorted((f["file"], f["pickle"], f["global"]) for f in result["findings"]) == [
        ("arrays.npz", "bad.npy", "posix.system"),
        ("model.joblib", None, "posix.system"),
        ("model.safetensors", None, "posix.system"),
        ("model.zip", "archive/data.pkl", "posix.system"),
        ("notes.txt", None, "os.system"),
        ("sub/objects.cache", None, "posix.system"),
        ("weights.dat", None, "posix.system")]
    assert result["files"]["floats.npy"] == "not a pickle (numpy array of float32)"
    assert result["files"]["plain-objects.npy"] == "clean"
    assert not {"README.md", "raw.dat", "names.txt", "train.log", "numbers.log"} & \
        set(result["files"])
    # the same bytes named like a pickle: listed, and what they would import is found
    write(version / "names.pkl", b"cat\ndog\nbird\n")
    write(version / "train.pkl", b"INFO step 1 loss 2.5\n" * 3000)
    files = scan_directory(str(version))["files"]
    assert files["names.pkl"] == "unsafe"
    assert files["train.pkl"] == ("not a pickle (INT argument b'NFO step 1 loss 2.5' is not "
                                  "a number (before offset 21))")


def test_a_pickle_that_stops_early_is_unscanned_whatever_its_name(tmp_path):
    """joblib writes raw array bytes inside its pickle stream, and its unpickler reads on
    after them: a stream that begins as a pickle and stops being one must not pass as
    clean, nor as not a pickle, under any name."""
    stream = pickle.dumps({"coef": [0.5]}, protocol=4)[:-1]  # the STOP is not reached
    joblib_like = stream + np.arange(8, dtype=np.float64).tobytes() + evil_state(4)
    for name in ("model.joblib", "model.sav", "weights"):
        version = tmp_path / name.replace(".", "-")
        version.mkdir()
        write(version / name, joblib_like)
        result = scan_directory(str(version))
        assert result["status"] == "unscanned", (name, result)
        assert result["files"][name].startswith("unscanned: truncated or damaged pickle (")


def test_compressed_pickles_are_inflated_and_walked(tmp_path):
    """joblib's compress= and pandas' `.pkl.gz` wrap a whole pickle in gzip, bz2, xz or
    zlib: the pickle inside is walked (`pickle` names the compression)."""
    import bz2
    import gzip
    import lzma
    import zlib
    version = tmp_path / "v"
    version.mkdir()
    wrappers = {"model.pkl.gz": gzip.compress, "model.pkl.bz2": bz2.compress,
                "model.pkl.xz": lzma.compress, "model.joblib": zlib.compress}
    for name, compress in wrappers.items():
        write(version / name, compress(evil_state(4)))
    write(version / "clean.gz", gzip.compress(pickle.dumps(DATA_ONLY, 4)))
    write(version / "logs.gz", gzip.compress(b"INFO step 1\n" * 100))
    write(version / "cut.gz", gzip.compress(evil_state(4))[:-30])
    result = scan_directory(str(version))
    assert sorted((f["file"], f["pickle"], f["global"]) for f in result["findings"]) == [
        ("model.joblib", "<zlib>", "posix.system"), ("model.pkl.bz2", "<bzip2>", "posix.system"),
        ("model.pkl.gz", "<gzip>", "posix.system"), ("model.pkl.xz", "<xz>", "posix.system")]
    assert result["files"]["clean.gz"] == "clean"
    assert "logs.gz" not in result["files"]
    # cut short: never clean, whatever it holds
    assert result["files"]["cut.gz"].startswith(
        "unscanned: <gzip>: its data cannot be inflated (Compressed file ended")


def test_a_truncated_object_npy_is_unscanned_not_clean(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, object_array({"lr": 0.1}), allow_pickle=True)
    write(path, path.read_bytes()[:-3])
    assert scan_file(str(path), "x.npy").status.startswith(
        "unscanned: truncated or damaged pickle (")
    write(path, b"\x93NUMPY\x01\x00\x10\x00{'descr': os.sy}\n")  # no literal: never run
    assert scan_file(str(path), "x.npy").status.startswith(
        "unscanned: numpy header that cannot be read (")


def test_a_module_rule_admits_the_module_globals_not_attributes_of_its_classes(tmp_path):
    # STACK_GLOBAL 'pathlib' 'Path.write_text': a method reached through a trusted class
    method = (b"\x80\x04\x8c\x07pathlib\x8c\x0fPath.write_text\x93\x8c\x01x\x8c\x01y"
              b"\x86R.")
    path = write(tmp_path / "x.pkl", method)
    assert globals_of(scan_file(path, "x.pkl", frozenset({"pathlib.*"})).findings) == \
        ["pathlib.Path.write_text"]
    # named exactly, it is admitted, and listed: a method called with the pickle's arguments
    exact = scan_file(path, "x.pkl", frozenset({"pathlib.Path.write_text"}))
    assert (exact.status, exact.findings) == ("allowed", [])
    assert exact.allowed == [{"file": "x.pkl", "pickle": None,
                              "global": "pathlib.Path.write_text"}]
