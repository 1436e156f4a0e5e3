"""Seals through a real mount are signed, and a missing signing key fails the seal in
words, sealing nothing unsigned. Signatures and the CLI: tests/cli/test_signing.py."""
import json
import os
import subprocess

from tests.helpers.cli import run_cli_checked
from tests.helpers.samples import make_checkpoint
from tests.helpers.signing import check_signature, err, journal, out, public_key_of


def test_seals_through_the_mount_are_signed_and_a_missing_key_fails_the_seal(tmp_path, mount):
    store = str(tmp_path / "store")
    run_cli_checked("init", store)
    keys = tmp_path / "keys"
    keys.mkdir()
    key_file = str(keys / "signing.pem")
    run_cli_checked("key", "generate", store, "--key-file", key_file)
    key_id = next(e for e in journal(store) if e["type"] == "key.set")["key_id"]
    src = make_checkpoint(tmp_path / "src" / "v1", step=100)
    mnt = mount(store, "--seal-after", "60")
    os.makedirs(f"{mnt}/inbox/p/r")
    # The key file goes missing: the seal fails and says why, nothing is sealed unsigned.
    os.rename(key_file, str(tmp_path / "away.pem"))
    assert subprocess.run(["cp", "-r", src, f"{mnt}/inbox/p/r/v1"]).returncode == 0
    failed = run_cli_checked("seal", store, "p/r/v1", "--timeout", "30", rc=1)
    message = f"signing key file {key_file} is missing"
    assert message in err(failed)
    with open(f"{mnt}/inbox/p/r/v1.error") as f:
        error_text = f.read()
    assert message in error_text and f"(key {key_id})" in error_text
    assert "ckptfs key set" in error_text and not os.path.exists(f"{mnt}/projects/p")
    imported = run_cli_checked("import", store, src, "p/r/direct", rc=1)
    assert message in err(imported)
    # Back in place: the next seal is signed, and the sidecar shows it.
    os.rename(str(tmp_path / "away.pem"), key_file)
    run_cli_checked("seal", store, "p/r/v1", "--timeout", "30")
    with open(f"{mnt}/projects/p/r/v1.json") as f:
        text = f.read()
    sidecar = json.loads(text)
    assert sidecar["signature"]["key_id"] == key_id and sidecar["signature"]["algorithm"] == "ed25519"
    assert f'"key_id": "{key_id}"' in text  # greppable as written
    public = public_key_of(key_file + ".pub")
    assert check_signature(sidecar["signature"], public, "p/r/v1", sidecar["digest"])
    verify = run_cli_checked("verify", "--signatures", store, "--public-key", key_file + ".pub")
    assert "1 signed and valid, 0 unsigned, 0 invalid, 0 by an unknown key" in out(verify)
