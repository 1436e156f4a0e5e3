"""What the test_signing.py files of several levels (cli, mount) share."""
import base64
import json
import os

from cryptography.hazmat.primitives import serialization

SIGNED_LABEL = b"ckptfs.version-signature/1\n"


def err(proc) -> str:
    return proc.stderr.decode(errors="replace")


def out(proc) -> str:
    return proc.stdout.decode(errors="replace")


def journal(store: str) -> list[dict]:
    with open(os.path.join(store, "journal", "journal.jsonl")) as f:
        return [json.loads(line) for line in f]


def public_key_of(pem_path: str):
    with open(pem_path, "rb") as f:
        return serialization.load_pem_public_key(f.read())


def check_signature(signature: dict, public_key, ref: str, digest: str) -> bool:
    """The signature checked here, independently of ckptfs's own code."""
    message = SIGNED_LABEL + ref.encode() + b"\n" + digest.encode() + b"\n"
    try:
        public_key.verify(base64.b64decode(signature["value"]), message)
        return True
    except Exception:
        return False
