"""Ed25519 signatures of sealed versions: `ckptfs key generate/set/show/unset`, the
signature in the journal, the catalog and the sidecar (also through a real mount), and
`ckptfs verify --signatures`, which must catch a rewritten signature even when the
journal's hash chain was rewritten to match."""
import base64
import hashlib
import json
import os
import subprocess
import tomllib
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ckptfs.store.journal import GENESIS, encode_entry, entry_hash
from tests.helpers.cli import run_cli_checked, run_cli_many
from tests.helpers.samples import make_checkpoint
from tests.helpers.signing import (
    SIGNED_LABEL,
    check_signature,
    err,
    journal,
    out,
    public_key_of,
)
from tests.helpers.stores import copy_store


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    """A store with p/r/v0 sealed before any key, then `ckptfs key generate`, then p/r/v1
    and p/r/v2 imported (signed). Tests that change it use a copy."""
    root = tmp_path_factory.mktemp("signed")
    store = str(root / "store")
    srcs = [make_checkpoint(root / "src" / f"v{i}", step=100 * (i + 1)) for i in range(3)]
    run_cli_checked("init", store)
    run_cli_checked("import", store, srcs[0], "p/r/v0")
    generated = out(run_cli_checked("key", "generate", store))
    run_cli_checked("import", store, srcs[1], "p/r/v1")
    run_cli_checked("import", store, srcs[2], "p/r/v2")
    key_file = os.path.join(store, "keys", "signing.pem")
    return SimpleNamespace(root=root, store=store, srcs=srcs, key_file=key_file,
                           public_file=key_file + ".pub", generated=generated)


def rewrite_journal(store: str, change):
    """Apply `change(entries)` and write the journal back with a valid hash chain, as
    someone who can write to the store could."""
    entries = journal(store)
    change(entries)
    prev, lines = GENESIS, []
    for entry in entries:
        entry["prev"] = prev
        line = encode_entry(entry)
        prev = entry_hash(line)
        lines.append(line + b"\n")
    with open(os.path.join(store, "journal", "journal.jsonl"), "wb") as f:
        f.writelines(lines)


def sealed_event(entries: list[dict], version: str) -> dict:
    return next(e for e in entries if e["type"] == "version.sealed" and e["version"] == version)


def raw_public(key) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def openssl_ed25519_key(path: str):
    proc = subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", path],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_key_generate_writes_a_private_key_and_journals_its_public_key(signed):
    assert os.stat(signed.key_file).st_mode & 0o777 == 0o600
    public = public_key_of(signed.public_file)
    key_id = hashlib.sha256(raw_public(public)).hexdigest()[:16]
    assert f"generated Ed25519 key {key_id}: private key {signed.key_file} (mode 0600)" \
        in signed.generated
    with open(os.path.join(signed.store, "ckptfs.toml"), "rb") as f:
        assert tomllib.load(f)["signing"] == {"key_file": signed.key_file}
    key_set = [e for e in journal(signed.store) if e["type"] == "key.set"]
    assert [(e["algorithm"], e["key_id"], e["public_key"]) for e in key_set] == \
        [("ed25519", key_id, raw_public(public).hex())]
    shown = out(run_cli_checked("key", "show", signed.store))
    assert f"signing: key {key_id}, private key file {signed.key_file}" in shown
    assert f"{key_id}  ed25519  " in shown and raw_public(public).hex() in shown
    pem = run_cli_checked("key", "show", signed.store, "--pem").stdout
    assert pem == open(signed.public_file, "rb").read()


def test_each_seal_after_the_key_is_signed_in_journal_catalog_and_sidecar(signed):
    public = public_key_of(signed.public_file)
    key_id = hashlib.sha256(raw_public(public)).hexdigest()[:16]
    entries = journal(signed.store)
    assert "signature" not in sealed_event(entries, "v0")  # sealed before the key
    for version in ("v1", "v2"):
        event = sealed_event(entries, version)
        signature = event["signature"]
        assert signature["algorithm"] == "ed25519" and signature["key_id"] == key_id
        assert check_signature(signature, public, f"p/r/{version}", event["digest"])
        assert not check_signature(signature, public, "p/r/v0", event["digest"])
    v0, v1 = (json.loads(out(p)) for p in run_cli_many(("show", signed.store, "p/r/v0"),
                                                        ("show", signed.store, "p/r/v1")))
    assert v0["signature"] is None
    assert v1["signature"] == sealed_event(entries, "v1")["signature"]
    assert list(v1)[list(v1).index("digest") + 1] == "signature"
    audit = out(run_cli_checked("audit", signed.store))
    assert f"key.set            signing key {key_id}" in audit
    assert f"signed by key {key_id}" in audit


def test_verify_signatures_counts_signed_and_unsigned_versions(signed, tmp_path):
    plain, sigs, trusted = run_cli_many(
        ("verify", signed.store), ("verify", "--signatures", signed.store),
        ("verify", "--signatures", signed.store, "--public-key", signed.public_file))
    assert "signatures" not in out(plain)  # without --signatures, verify is unchanged
    assert "ok: " in out(sigs)
    assert "signatures: 2 signed and valid, 1 unsigned, 0 invalid, 0 by an unknown key" in out(sigs)
    assert "unsigned: p/r/v0" in out(sigs)
    assert "2 signed and valid, 1 unsigned, 0 invalid" in out(trusted)
    # Another key's public key: every signed version is reported invalid.
    other = str(tmp_path / "other.pem")
    openssl_ed25519_key(other)
    wrong = run_cli_checked("verify", "--signatures", signed.store, "--public-key", other, rc=3)
    assert "0 signed and valid, 1 unsigned, 2 invalid" in out(wrong)
    assert "invalid signature: p/r/v1: " in out(wrong) and "invalid signature: p/r/v2: " in out(wrong)
    assert "verify found 2 invalid signature(s)" in err(wrong)
    usage = run_cli_checked("verify", signed.store, "--public-key", other, rc=2)
    assert "--public-key goes with --signatures" in err(usage)


def test_a_rewritten_signature_is_caught_even_with_the_chain_rewritten(signed, tmp_path):
    store = copy_store(signed.store, tmp_path / "copy")
    attacker = Ed25519PrivateKey.generate()
    attacker_raw = raw_public(attacker.public_key())
    attacker_id = hashlib.sha256(attacker_raw).hexdigest()[:16]

    def tamper(entries):
        v1 = sealed_event(entries, "v1")  # a signature altered
        value = bytearray(base64.b64decode(v1["signature"]["value"]))
        value[0] ^= 1
        v1["signature"]["value"] = base64.b64encode(bytes(value)).decode()
        v2 = sealed_event(entries, "v2")  # signed by a key the journal never set
        v2["signature"]["key_id"] = "00112233aabbccdd"
        v0 = sealed_event(entries, "v0")  # re-signed by someone else, whose key is journaled
        message = SIGNED_LABEL + b"p/r/v0\n" + v0["digest"].encode() + b"\n"
        v0["signature"] = {"algorithm": "ed25519", "key_id": attacker_id,
                           "value": base64.b64encode(attacker.sign(message)).decode()}
        entries.insert(1, {**next(e for e in entries if e["type"] == "key.set"),
                           "key_id": attacker_id, "public_key": attacker_raw.hex()})
        for seq, entry in enumerate(entries, 1):
            entry["seq"] = seq
    rewrite_journal(store, tamper)
    run_cli_checked("rebuild-index", store)
    assert "journal ok" in out(run_cli_checked("audit", "verify", store))  # the chain cannot tell
    report = run_cli_checked("verify", "--signatures", store, rc=3)
    text = out(report)
    assert "ok: " in text  # the data itself is intact
    assert "signatures: 1 signed and valid, 0 unsigned, 1 invalid, 1 by an unknown key" in text
    assert "invalid signature: p/r/v1: " in text
    assert "unknown key: p/r/v2: signed by key 00112233aabbccdd" in text
    # The journaled keys are the store's word; the public key kept outside is not.
    trusted = out(run_cli_checked("verify", "--signatures", store, "--public-key",
                                  signed.public_file, rc=3))
    assert "1 signed and valid, 0 unsigned, 2 invalid, 0 by an unknown key" in trusted
    assert "invalid signature: p/r/v0: " in trusted and "invalid signature: p/r/v1: " in trusted


def test_key_set_unset_and_rebuild_index_keep_the_key_history(signed, tmp_path):
    store = copy_store(signed.store, tmp_path / "copy")
    first_id = next(e for e in journal(store) if e["type"] == "key.set")["key_id"]
    own = str(tmp_path / "own.pem")
    openssl_ed25519_key(own)
    set_out = out(run_cli_checked("key", "set", store, own))
    own_id = [e for e in journal(store) if e["type"] == "key.set"][-1]["key_id"]
    assert set_out == f"signing with key {own_id} ({own})\n" and own_id != first_id
    again = out(run_cli_checked("key", "set", store, own))
    assert "was already the signing key" in again
    assert len([e for e in journal(store) if e["type"] == "key.set"]) == 2  # not journaled twice
    run_cli_checked("import", store, signed.srcs[0], "p/r/v3")
    assert sealed_event(journal(store), "v3")["signature"]["key_id"] == own_id
    assert "signing stopped" in out(run_cli_checked("key", "unset", store))
    assert journal(store)[-1]["type"] == "key.unset" and journal(store)[-1]["key_id"] == own_id
    run_cli_checked("import", store, signed.srcs[1], "p/r/v4")
    assert "signature" not in sealed_event(journal(store), "v4")
    nothing = run_cli_checked("key", "unset", store, rc=1)
    assert "has no signing key configured" in err(nothing)
    run_cli_checked("rebuild-index", store)
    shown, verify = run_cli_many(("key", "show", store), ("verify", "--signatures", store))
    assert out(shown).startswith("signing: off")
    assert first_id in out(shown) and own_id in out(shown)  # every key ever set
    assert "3 signed and valid, 2 unsigned, 0 invalid, 0 by an unknown key" in out(verify)
    # What is not an Ed25519 private key is refused with a reason.
    (tmp_path / "junk.pem").write_text("hello\n")
    subprocess.run(["openssl", "genpkey", "-algorithm", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-out", tmp_path / "ec.pem"], check=True,
                   capture_output=True)
    for path, why in ((tmp_path / "junk.pem", "is not a PEM private key"),
                      (tmp_path / "ec.pem", "does not hold an Ed25519 key"),
                      (tmp_path / "none.pem", "does not exist")):
        assert why in err(run_cli_checked("key", "set", store, path, rc=1))
    exists = run_cli_checked("key", "generate", store, rc=1)  # keys/signing.pem is there
    assert "already exists" in err(exists)
