"""The pickle scan through the real CLI: `unsafe_pickles=refuse` refuses an import in one
line, also what could not be scanned; `pickle_allow` rules (risky ones need --force, and a
forced one seals as `allowed`, not `clean`). The scan itself: tests/unit/test_scan.py.

Nothing here ever loads a pickle it made: creating one whose __reduce__ names os.system
does not run it."""
import os

import numpy as np
import pytest

from ckptfs.meta.scan import UnsafePickleError
from ckptfs.meta.seal import archive_directory
from ckptfs.meta.sidecar import sidecar_of as sidecar_of_version
from ckptfs.store import Store
from tests.helpers.cli import run_cli_checked
from tests.helpers.pickles import patch_zip, zip_bytes
from tests.helpers.samples import make_checkpoint, make_hf_checkpoint
from tests.helpers.scan import evil_checkpoint, write
from tests.helpers.stores import new_store


def test_refuse_also_refuses_what_could_not_be_scanned(tmp_path):
    store = new_store(tmp_path)
    run_cli_checked("config", "set", store, "p", "unsafe_pickles=refuse")
    src = make_hf_checkpoint(tmp_path / "src", 10)
    ciphertext = np.random.default_rng(4).integers(0, 256, 400, dtype=np.uint8).tobytes()
    write(os.path.join(src, "optimizer.pt"),
          patch_zip(zip_bytes({"optimizer/data.pkl": ciphertext}), flags=0x1))
    proc = run_cli_checked("import", store, src, "p/r/v1", rc=1)
    error = proc.stderr.decode()
    assert error.count("\n") == 1 and error.startswith(
        "ckptfs: error: version p/r/v1 refused: files that may hold pickles could not be "
        "scanned to the end: optimizer.pt: optimizer/data.pkl: encrypted member (it may hold "
        "a pickle) (project p has unsafe_pickles=refuse). "), error
    with Store.open(store) as s:
        assert s.version_record("p", "r", "v1") is None
    # under warn it is sealed, and says so
    run_cli_checked("config", "set", store, "p", "unsafe_pickles=warn")
    run_cli_checked("import", store, src, "p/r/v1")
    with Store.open(store) as s:
        assert sidecar_of_version(s, "p", "r", "v1")["scan"]["status"] == "unscanned"


RISKY_RULES = ["builtins.*", "builtins.eval", "builtins.getattr", "os.*", "posix.system",
               "subprocess.Popen", "torch.*", "torch.load", "__builtin__.*", "runpy._run_code",
               "os.path.*", "os.path.join", "codecs.open"]


def test_risky_allow_rules_need_force(tmp_path):
    store = new_store(tmp_path)
    for rule in RISKY_RULES:
        proc = run_cli_checked("config", "set", store, "p", f"pickle_allow=mylib.Config,{rule}",
                               rc=1)
        error = proc.stderr.decode()
        assert error.count("\n") == 1 and error.startswith(
            f"ckptfs: error: pickle_allow rule {rule!r} admits globals that run code when a "
            "pickle is loaded ("), error
    with Store.open(store) as s:
        assert "pickle_allow" not in s.project_settings("p")
    run_cli_checked("config", "set", "--force", store, "p", "pickle_allow=" + ",".join(RISKY_RULES))
    with Store.open(store) as s:
        assert s.project_settings("p")["pickle_allow"] == RISKY_RULES


def test_harmless_and_malformed_allow_rules(tmp_path):
    store = new_store(tmp_path)
    run_cli_checked("config", "set", store, "p",
                    "pickle_allow=mylib.Config,mylib.enums.*,builtins.set")
    for rule in ("<computed>.*", "mylib.*.x", "os system.x"):
        proc = run_cli_checked("config", "set", "--force", store, "p", f"pickle_allow={rule}",
                               rc=1)
        assert proc.stderr.decode() == \
            f"ckptfs: error: pickle_allow rule {rule!r} is not MODULE.NAME or MODULE.*\n"


def test_a_forced_risky_rule_seals_as_allowed_not_clean(tmp_path):
    store = new_store(tmp_path)
    src = make_hf_checkpoint(tmp_path / "src", 10)
    write(os.path.join(src, "extra.pkl"), b"c__builtin__\neval\n(S'1+1'\ntR.")
    run_cli_checked("config", "set", "--force", store, "p", "pickle_allow=builtins.*",
                    "unsafe_pickles=refuse")
    run_cli_checked("import", store, src, "p/r/v1")
    with Store.open(store) as s:
        doc = sidecar_of_version(s, "p", "r", "v1")
    assert doc["scan"]["status"] == "allowed"
    assert doc["scan"]["files"]["extra.pkl"] == "allowed"
    assert doc["scan"]["allowed"] == [{"file": "extra.pkl", "pickle": None,
                                       "global": "builtins.eval"}]
    assert doc["warnings"] == [
        "allowed pickle: extra.pkl imports builtins.eval (admitted by the project's "
        "pickle_allow: loading it may run code)"]
    # a computed name is never admitted by a rule
    write(os.path.join(src, "extra.pkl"), b"\x80\x04\x8c\x08builtins\x8c\x03str\x93\x8c"
          b"\x05posix\x85R\x8c\x06system\x93\x8c\x02ls\x85R.")
    run_cli_checked("import", store, src, "p/r/v2", rc=1)


def journal_bytes(store: str) -> bytes:
    with open(os.path.join(store, "journal", "journal.jsonl"), "rb") as f:
        return f.read()


def test_import_refuses_an_unsafe_version_in_one_line(tmp_path):
    store = new_store(tmp_path)
    src = evil_checkpoint(tmp_path / "src")
    proc = run_cli_checked("config", "set", store, "p", "unsafe_pickles=maybe", rc=1)
    assert proc.stderr.decode() == \
        "ckptfs: error: setting 'unsafe_pickles' must be 'warn' or 'refuse', not 'maybe'\n"
    run_cli_checked("config", "set", store, "p", "unsafe_pickles=refuse")
    before = journal_bytes(store)
    proc = run_cli_checked("import", store, src, "p/r/v1", rc=1)
    error = proc.stderr.decode()
    assert error.count("\n") == 1 and error.startswith(
        "ckptfs: error: version p/r/v1 refused: unsafe pickles: optimizer.pt "
        "[optimizer/data.pkl] imports posix.system (project p has unsafe_pickles=refuse). ")
    assert journal_bytes(store) == before, "a refused version was journaled"
    with Store.open(store) as s:
        assert s.version_record("p", "r", "v1") is None
    # a global the project trusts is no finding; a risky one needs --force, and shows
    proc = run_cli_checked("config", "set", store, "p", "pickle_allow=posix.system", rc=1)
    assert proc.stderr.decode() == (
        "ckptfs: error: pickle_allow rule 'posix.system' admits globals that run code when a "
        "pickle is loaded (posix.system): name the exact globals you trust, or repeat with "
        "--force to take the risk (versions using them then scan as 'allowed')\n")
    run_cli_checked("config", "set", "--force", store, "p", "pickle_allow=posix.system")
    run_cli_checked("import", store, src, "p/r/v1")
    with Store.open(store) as s:  # the same ingest path, from Python
        assert sidecar_of_version(s, "p", "r", "v1")["scan"]["status"] == "allowed"
        s.update_project_settings("p", {}, unset=["pickle_allow"])
        with pytest.raises(UnsafePickleError) as refused:
            archive_directory(s, src, "p", "r", "v2")
        assert refused.value.findings == [{"file": "optimizer.pt", "pickle": "optimizer/data.pkl",
                                           "global": "posix.system"}]
        archive_directory(s, make_checkpoint(tmp_path / "raw"), "p", "r", "v3")
        doc = sidecar_of_version(s, "p", "r", "v3")
    # raw bytes named optimizer.pt hold no pickle: nothing to refuse
    assert doc["scan"]["status"] == "clean"
    assert doc["scan"]["files"]["optimizer.pt"].startswith("not a pickle (")
