"""`ckptfs export` and `ckptfs import` of an export: real stores, the real `ckptfs`
command, and the tools a recipient would use (sha256sum -c, tar -xf, diff -r).

Most tests share one source store (module scope) and export from it; each import goes
into a store of its own.
"""
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from types import SimpleNamespace

import pytest

from ckptfs.meta.seal import archive_directory
from ckptfs.store import Store
from ckptfs.store.manifest import version_digest
from tests.helpers import export as helpers
from tests.helpers.cli import run_cli_many
from tests.helpers.export import ck
from tests.helpers.samples import make_hf_checkpoint, tree_snapshot

source = helpers.source  # a fixture (tests/helpers/export.py)
target = helpers.target  # a fixture (tests/helpers/export.py)


def out(proc) -> str:
    return proc.stdout.decode()


def err(proc) -> str:
    return proc.stderr.decode(errors="replace")


def sha256sum_check(directory) -> subprocess.CompletedProcess:
    """What a recipient runs: `cd DIR && sha256sum -c SHA256SUMS`."""
    return subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=directory,
                          capture_output=True, text=True, errors="replace")


def show(store, ref) -> dict:
    return json.loads(out(ck("show", store, ref)))


def sums_of_files(directory, version) -> list[str]:
    """The lines of SHA256SUMS for the files (the sidecar's left out)."""
    with open(os.path.join(directory, "SHA256SUMS")) as f:
        return [line for line in f if line.split("  ", 1)[1].startswith(f"{version}/")]


# -- export ---------------------------------------------------------------------------------
def test_export_to_a_directory_verifies_with_sha256sum(source, tmp_path):
    dest = tmp_path / "exported"
    proc = ck("export", source.store, "p/r/v1", dest)
    assert out(proc).startswith(f"exported p/r/v1 to {dest}: 6 files, ")
    assert sorted(os.listdir(dest)) == ["SHA256SUMS", "v1", "v1.json"]
    check = sha256sum_check(dest)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.count(": OK\n") == 7  # the six files and the sidecar
    # the files as they were: content, modes, mtimes to the nanosecond, the symlink
    assert tree_snapshot(dest / "v1") == tree_snapshot(source.v1)
    sidecar = json.loads((dest / "v1.json").read_text())
    export = sidecar.pop("export")
    assert sidecar == show(source.store, "p/r/v1"), "the sidecar is not the one the store shows"
    assert export["store"] == source.store and export["partial"] is False
    assert sorted(export["files"]) == sorted(f["path"] for f in sidecar["files"])
    assert export["symlinks"] == ["latest.safetensors"]


@pytest.mark.parametrize("name", ["x.tar", "x.tgz"])
def test_export_to_a_tar_unpacks_into_one_directory_that_verifies(source, tmp_path, name):
    ck("export", source.store, "p/r/v1", tmp_path / name)
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    subprocess.run(["tar", "-xf", tmp_path / name], cwd=unpacked, check=True)
    assert os.listdir(unpacked) == ["x"], "the tar must hold one top directory named after it"
    check = sha256sum_check(unpacked / "x")
    assert check.returncode == 0, check.stdout + check.stderr
    assert tree_snapshot(unpacked / "x" / "v1") == tree_snapshot(source.v1)
    assert [n for n in os.listdir(tmp_path) if n.endswith(".partial")] == []


def test_partial_export_holds_only_the_matching_files(source, tmp_path, target):
    dest = tmp_path / "jsons"
    proc = ck("export", source.store, "nlp/run/step-200", dest, "--files", "*.json")
    assert "partial export" in out(proc)
    assert sha256sum_check(dest).returncode == 0
    jsons = sorted(n for n in os.listdir(source.step200) if n.endswith(".json"))
    assert sorted(os.listdir(dest / "step-200")) == jsons
    export = json.loads((dest / "step-200.json").read_text())["export"]
    assert export["partial"] is True and sorted(export["files"]) == jsons

    proc = ck("import", target, dest, "nlp/run/step-200")
    assert f"from a partial export of nlp/run/step-200 ({len(jsons)} of 9 files; unsigned" in out(proc)
    doc = show(target, "nlp/run/step-200")
    assert doc["imported_from"]["partial"] is True
    assert doc["metrics"]["eval_loss"] == 0.4
    assert any("partial export" in w for w in doc["warnings"])
    assert doc["digest"] != doc["imported_from"]["digest"]


def test_export_refuses_what_it_cannot_do_cleanly(source, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("keep me")
    (tmp_path / "there.tar").write_text("keep me too")
    unknown, not_empty, tar_exists, no_match = run_cli_many(
        ("export", source.store, "p/r/nope", tmp_path / "a"),
        ("export", source.store, "p/r/v1", tmp_path / "full"),
        ("export", source.store, "p/r/v1", tmp_path / "there.tar"),
        ("export", source.store, "p/r/v1", tmp_path / "b", "--files", "*.bin"), rc=1)
    assert "no version p/r/nope in the store" in err(unknown)
    assert "exists and is not empty" in err(not_empty)
    assert "there.tar exists" in err(tar_exists)
    assert "matches '*.bin'" in err(no_match)
    assert sorted(os.listdir(tmp_path)) == ["full", "there.tar"]
    assert (tmp_path / "full" / "mine.txt").read_text() == "keep me"
    assert (tmp_path / "there.tar").read_text() == "keep me too"


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs: an export of p/r/v1 (about 600 KB) cannot fit."""
    path = tmp_path / "small"
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", path],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield path
    subprocess.run(["umount", path], check=True)


def test_a_full_or_read_only_disk_leaves_no_partial_export(source, small_disk):
    for dest in (small_disk / "v1.tar", small_disk / "v1"):
        proc = ck("export", source.store, "p/r/v1", dest, rc=1)
        assert "no space left" in err(proc) and "removed" in err(proc)
        assert os.listdir(small_disk) == []
    subprocess.run(["mount", "-o", "remount,ro", small_disk], check=True)
    for dest in (small_disk / "v1.tar", small_disk / "v1"):
        proc = ck("export", source.store, "p/r/v1", dest, rc=1)
        assert f"cannot write {dest}: read-only file system" in err(proc)


# -- import ---------------------------------------------------------------------------------
def test_import_of_a_tar_keeps_files_metrics_lineage_and_origin(source, tmp_path, target):
    ck("export", source.store, "nlp/run/step-100", tmp_path / "step-100")
    ck("export", source.store, "nlp/run/step-200", tmp_path / "step-200.tar")
    first = ck("import", target, tmp_path / "step-100", "nlp/run/step-100")
    # into a run of its own: its parent stays the one it had, not this run's newest
    second = ck("import", target, tmp_path / "step-200.tar", "nlp/copy/step-200")
    for proc in (first, second):
        assert "(files match its sidecar's digest; unsigned" in out(proc)
    ck("get", target, "nlp/copy/step-200", tmp_path / "restored")
    diff = subprocess.run(["diff", "-r", source.step200, tmp_path / "restored"],
                          capture_output=True, text=True)
    assert diff.returncode == 0, diff.stdout

    original = show(source.store, "nlp/run/step-200")
    doc = show(target, "nlp/copy/step-200")
    assert doc["digest"] == original["digest"]
    for key in ("metrics", "step", "epoch", "lineage", "provenance"):
        assert doc[key] == original[key], key
    assert doc["lineage"]["parent"] == {"project": "nlp", "run": "run", "version": "step-100",
                                        "source": "previous"}
    origin = doc["imported_from"]
    assert {k: origin[k] for k in ("store", "project", "run", "version", "digest", "sealed_at",
                                   "partial")} == {
        "store": source.store, "project": "nlp", "run": "run", "version": "step-200",
        "digest": original["digest"], "sealed_at": original["sealed_at"], "partial": False}
    assert origin["exported_at"] > original["sealed_at"]
    assert "production" in origin["aliases"] and "production" not in doc["tags"]
    assert doc["warnings"] == []  # the parent is here now

    base = show(target, "nlp/run/step-100")
    assert base["tags"] == ["candidate", "latest"] and base["notes"] == "warmup fixed"
    assert base["lineage"]["data"] == {"name": "wiki", "version": "v3"}
    assert os.listdir(os.path.join(target, "spool")) == [], "the unpacked tar was left behind"


def test_round_trip_gives_the_same_sha256sums(source, tmp_path, target):
    ck("export", source.store, "p/r/v1", tmp_path / "first.tar")
    ck("import", target, tmp_path / "first.tar", "p/r/v1")
    ck("export", target, "p/r/v1", tmp_path / "second")
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    subprocess.run(["tar", "-xf", tmp_path / "first.tar"], cwd=unpacked, check=True)
    assert sums_of_files(tmp_path / "second", "v1") == sums_of_files(unpacked / "first", "v1")
    assert tree_snapshot(tmp_path / "second" / "v1") == tree_snapshot(source.v1)


def test_a_damaged_export_is_refused_and_nothing_imported(source, tmp_path, target):
    dest = tmp_path / "exported"
    ck("export", source.store, "p/r/v1", dest)
    model = dest / "v1" / "model.safetensors"
    data = bytearray(model.read_bytes())
    data[1000] ^= 0x01
    model.write_bytes(bytes(data))
    check = sha256sum_check(dest)
    assert check.returncode == 1 and "v1/model.safetensors: FAILED" in check.stdout
    proc = ck("import", target, dest, "p/r/v1", rc=3)
    assert "v1/model.safetensors: SHA-256 does not match SHA256SUMS" in err(proc)
    assert "nothing was imported" in err(proc)

    model.unlink()  # a missing file
    proc = ck("import", target, dest, "p/r/v1", rc=3)
    assert "v1/model.safetensors is missing" in err(proc)

    (dest / "SHA256SUMS").unlink()  # an export that did not finish
    proc = ck("import", target, dest, "p/r/v1", rc=1)
    assert "did not finish" in err(proc)
    assert out(ck("ls", target)) == ""


def test_a_file_added_to_an_export_is_refused(source, tmp_path, target):
    dest = tmp_path / "exported"
    ck("export", source.store, "p/r/v1", dest)
    (dest / "v1" / "extra.bin").write_bytes(b"not exported")
    proc = ck("import", target, dest, "p/r/v1", rc=3)
    assert "v1/extra.bin is not listed in SHA256SUMS" in err(proc)
    assert out(ck("ls", target)) == ""


def evil_tar(path, *members):
    """A tar holding `members`: (name, data) for files, (name, "->", target) for symlinks."""
    with tarfile.open(path, "w") as tar:
        top = tarfile.TarInfo("x")
        top.type = tarfile.DIRTYPE
        tar.addfile(top)
        for name, *rest in members:
            info = tarfile.TarInfo(name)
            if rest[0] == "->":
                info.type, info.linkname = tarfile.SYMTYPE, rest[1]
                tar.addfile(info)
            else:
                info.size = len(rest[0])
                tar.addfile(info, io.BytesIO(rest[0]))
    return path


def test_a_tar_that_reaches_outside_is_refused(tmp_path, target):
    outside = tmp_path / "outside"
    outside.mkdir()
    tars = [
        evil_tar(tmp_path / "dotdot.tar", ("x/../../outside/planted", b"owned")),
        evil_tar(tmp_path / "absolute.tar", (str(outside / "planted"), b"owned")),
        evil_tar(tmp_path / "link.tar", ("x/v/out", "->", str(outside)),
                 ("x/v/out/planted", b"owned")),
        evil_tar(tmp_path / "uplink.tar", ("x/v/up", "->", "../../outside")),
        evil_tar(tmp_path / "through.tar", ("x/v/here", "->", "."), ("x/v/here/f", b"x")),
    ]
    procs = run_cli_many(*[("import", target, t, f"p/r/v{i}") for i, t in enumerate(tars)], rc=1)
    for proc, why in zip(procs, ("'..' component", "absolute path", "outside the export",
                                 "outside the export", "inside a symlink")):
        assert "refused" in err(proc) and why in err(proc), err(proc)
    assert os.listdir(outside) == []
    assert os.listdir(os.path.join(target, "spool")) == []
    assert out(ck("ls", target)) == ""


def test_names_that_need_escaping_survive_sha256sum_and_the_round_trip(tmp_path, target):
    src = tmp_path / "odd"
    src.mkdir()
    for name in ("new\nline", "back\\slash", "sp ace", "caf\xe9", os.fsdecode(b"\xff\xfe")):
        (src / name).write_bytes(os.fsencode(name))
    with Store.open(target) as store:
        archive_directory(store, str(src), "p", "r", "odd")
    ck("export", target, "p/r/odd", tmp_path / "odd.tar")
    subprocess.run(["tar", "-xf", "odd.tar"], cwd=tmp_path, check=True)
    check = sha256sum_check(tmp_path / "odd")
    assert check.returncode == 0 and check.stdout.count(": OK") == 6, check.stdout
    proc = ck("import", target, tmp_path / "odd.tar", "p/r/again")
    assert "(files match its sidecar's digest; unsigned" in out(proc)


# -- forged exports: what import does not take on the sidecar's word -----------------------
def rewrite_sidecar_and_sums(dest, version, edit):
    """What a forger does: change the sidecar (`edit(doc)`) and its line in SHA256SUMS,
    so that `sha256sum -c` still passes."""
    path = os.path.join(dest, f"{version}.json")
    with open(path) as f:
        doc = json.load(f)
    edit(doc)
    data = json.dumps(doc, indent=2).encode()
    with open(path, "wb") as f:
        f.write(data)
    rewrite_sums_line(dest, f"{version}.json", data)


def rewrite_sums_line(dest, rel, data: bytes):
    sums = os.path.join(dest, "SHA256SUMS")
    with open(sums) as f:
        lines = [line for line in f if line.split("  ", 1)[1] != f"{rel}\n"]
    lines.append(f"{hashlib.sha256(data).hexdigest()}  {rel}\n")
    with open(sums, "w") as f:
        f.writelines(lines)


def forge_eval_loss_everywhere(dest, version, eval_loss: float):
    """A consistent forgery: trainer_state.json, the sidecar (metrics, file record,
    digest) and SHA256SUMS all rewritten together."""
    state_path = os.path.join(dest, version, "trainer_state.json")
    with open(state_path) as f:
        state = json.load(f)
    state["log_history"][-1]["eval_loss"] = eval_loss
    data = json.dumps(state).encode()
    with open(state_path, "wb") as f:
        f.write(data)
    rewrite_sums_line(dest, f"{version}/trainer_state.json", data)

    def edit(doc):
        doc["metrics"]["eval_loss"] = eval_loss
        for record in doc["files"]:
            if record["path"] == "trainer_state.json":
                record.update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
        doc["digest"] = version_digest([dict(f, type="file") for f in doc["files"]] +
                                       [dict(s, type="symlink") for s in doc["symlinks"]])
    rewrite_sidecar_and_sums(dest, version, edit)


def test_a_sidecar_whose_metrics_the_files_contradict_is_refused(source, tmp_path, target):
    dest = tmp_path / "forged"
    ck("export", source.store, "nlp/run/step-200", dest)

    def better_loss(doc):
        doc["metrics"]["eval_loss"] = 0.01
        doc["step"] = 9999
    rewrite_sidecar_and_sums(dest, "step-200", better_loss)
    assert sha256sum_check(dest).returncode == 0, "the forgery must pass sha256sum -c"
    proc = ck("import", target, dest, "nlp/run/step-200", rc=3)
    message = err(proc)
    assert len(message.strip().splitlines()) == 1, message
    assert "its sidecar disagrees with its files" in message
    assert "metrics.eval_loss is 0.01 in the sidecar but 0.4 in the files" in message
    assert "step is 9999 in the sidecar but 200 in the files" in message
    assert "--trust-sidecar" in message and "nothing was imported" in message
    assert out(ck("ls", target)) == ""

    proc = ck("import", "--trust-sidecar", target, dest, "nlp/run/step-200")
    assert "sidecar trusted despite 2 disagreement(s)" in out(proc)
    doc = show(target, "nlp/run/step-200")
    assert doc["metrics"]["eval_loss"] == 0.01 and doc["step"] == 9999
    checks = doc["imported_from"]["checks"]
    assert checks["trusted_sidecar"] is True and checks["signature"] == "unsigned"
    assert "metrics.eval_loss is 0.01 in the sidecar but 0.4 in the files" in checks["disagreements"]
    assert any(w.startswith("imported with --trust-sidecar: metrics.eval_loss")
               for w in doc["warnings"])


def test_an_unsigned_consistent_forgery_is_not_called_the_original(source, tmp_path, target):
    dest = tmp_path / "forged"
    ck("export", source.store, "nlp/run/step-200", dest)
    forge_eval_loss_everywhere(dest, "step-200", 0.01)
    assert sha256sum_check(dest).returncode == 0
    proc = ck("import", target, dest, "nlp/run/step-200")
    assert "digest matches the original" not in out(proc)
    assert "unsigned: nothing proves which store it came from" in out(proc)
    assert show(target, "nlp/run/step-200")["imported_from"]["checks"]["signature"] == "unsigned"


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    """A store that signs its versions (`ckptfs key generate`), with nlp/run/step-200
    exported to a directory."""
    root = tmp_path_factory.mktemp("signed")
    store = str(root / "store")
    ck("init", store)
    ck("key", "generate", store)
    src = make_hf_checkpoint(root / "src" / "step-200", step=200, eval_loss=0.4)
    ck("import", store, src, "nlp/run/step-200")
    ck("export", store, "nlp/run/step-200", root / "export")
    public_key = os.path.join(store, "keys", "signing.pem.pub")
    key_id = show(store, "nlp/run/step-200")["signature"]["key_id"]
    return SimpleNamespace(root=root, store=store, export=root / "export",
                           public_key=public_key, key_id=key_id)


def copy_export(signed, tmp_path):
    dest = tmp_path / "copy"
    shutil.copytree(signed.export, dest, symlinks=True)
    return dest


def test_a_signed_export_is_verified_with_the_given_public_key(signed, target):
    proc = ck("import", "--public-key", signed.public_key, target, signed.export,
              "nlp/run/step-200")
    assert f"signature by key {signed.key_id} verified" in out(proc)
    checks = show(target, "nlp/run/step-200")["imported_from"]["checks"]
    assert checks == {"signature": "valid", "signature_key_id": signed.key_id}


def test_a_signed_partial_export_is_verified_through_its_sidecars_file_list(
        signed, tmp_path, target):
    dest = tmp_path / "jsons"
    ck("export", signed.store, "nlp/run/step-200", dest, "--files", "*.json")
    proc = ck("import", "--public-key", signed.public_key, target, dest, "nlp/run/step-200")
    assert f"signature by key {signed.key_id} verified" in out(proc)
    # a file record of a file that was left out, changed: the signed digest no longer holds
    def edit(doc):
        record = next(f for f in doc["files"] if f["path"] == "model.safetensors")
        record["sha256"] = "0" * 64
    rewrite_sidecar_and_sums(dest, "step-200", edit)
    proc = ck("import", "--public-key", signed.public_key, target, dest, "nlp/run/again",
              rc=3)
    assert "the file list in its sidecar does not give the digest it records" in err(proc)


def test_a_forged_signed_export_is_refused(signed, tmp_path, target):
    dest = copy_export(signed, tmp_path)
    forge_eval_loss_everywhere(dest, "step-200", 0.01)
    proc = ck("import", "--public-key", signed.public_key, target, dest, "nlp/run/step-200",
              rc=3)
    assert "its signature is not one of the given public key(s)" in err(proc)
    assert "nothing was imported" in err(proc)
    # the store it came from knows the key: there no --public-key is needed to catch it
    proc = ck("import", signed.store, dest, "nlp/copy/step-200", rc=3)
    assert f"its signature is not one of key {signed.key_id} (known here)" in err(proc)
    assert out(ck("ls", target)) == "" and out(ck("ls", signed.store, "nlp")) == "run\n"
    # without a key to check it with, the signature is reported as not checked
    proc = ck("import", target, dest, "nlp/run/step-200")
    assert f"signed by key {signed.key_id}, not checked" in out(proc)


def test_a_signature_by_another_key_or_none_is_refused(signed, source, tmp_path, target):
    other = tmp_path / "other.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", other], check=True)
    subprocess.run(["openssl", "pkey", "-in", other, "-pubout", "-out", f"{other}.pub"],
                   check=True)
    proc = ck("import", "--public-key", f"{other}.pub", target, signed.export,
              "nlp/run/step-200", rc=3)
    assert "its signature is not one of the given public key(s)" in err(proc)
    unsigned = tmp_path / "unsigned"
    ck("export", source.store, "nlp/run/step-200", unsigned)
    proc = ck("import", "--public-key", signed.public_key, target, unsigned,
              "nlp/run/step-200", rc=3)
    assert "it is not signed, but --public-key asks for a signature" in err(proc)
    assert out(ck("ls", target)) == ""
