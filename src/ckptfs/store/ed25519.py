"""Ed25519 keys and signatures, with the `cryptography` package (imported only by what
signs or checks: most commands never need it). The store-level logic is in signing.py.
"""
import base64
import binascii
import hashlib
import os

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (Ed25519PrivateKey,
                                                               Ed25519PublicKey)

from .errors import SigningKeyError, StoreError, read_key_material

ALGORITHM = "ed25519"
MESSAGE_LABEL = b"ckptfs.version-signature/1\n"


# -- keys ---------------------------------------------------------------------------------
def raw_public_key(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id_of(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """First 16 hex digits of the SHA-256 of the raw 32-byte public key."""
    return hashlib.sha256(raw_public_key(key)).hexdigest()[:16]


def public_key_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.PEM,
                               serialization.PublicFormat.SubjectPublicKeyInfo)


def generate_key_file(path: str) -> Ed25519PrivateKey:
    """A new private key in `path` (PEM, PKCS#8, mode 0600; refused if `path` exists),
    and its public key in `path`.pub (to keep off the store, for verify --public-key)."""
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise StoreError(f"cannot create signing key {path}: directory {directory} does "
                         "not exist (create it first)")
    if os.path.lexists(path):
        raise StoreError(f"{path} already exists: use it with `ckptfs key set STORE {path}`, "
                         "or choose another --key-file")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    _write_new_file(path, pem, 0o600)
    public_path = path + ".pub"
    if os.path.lexists(public_path):
        os.unlink(public_path)  # a stale public key beside a new private key would mislead
    _write_new_file(public_path, public_key_pem(key), 0o644)
    return key


def _write_new_file(path: str, data: bytes, mode: int):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _read_pem(path: str, what: str) -> bytes:
    return read_key_material(path, what, SigningKeyError, 1 << 20)


def load_private_key(path: str) -> Ed25519PrivateKey:
    """The Ed25519 private key in PEM file `path` (FileNotFoundError if it is missing)."""
    pem = _read_pem(path, "signing key file")
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:  # encrypted with a passphrase
        raise SigningKeyError(f"signing key file {path} is protected by a passphrase: ckptfs "
                              "signs unattended (at every seal) and needs a key without one; "
                              "protect the file by its permissions instead") from None
    except (ValueError, binascii.Error):
        raise SigningKeyError(f"signing key file {path} is not a PEM private key (make one "
                              "with `ckptfs key generate`)") from None
    except Exception as e:  # e.g. UnsupportedAlgorithm
        raise SigningKeyError(f"signing key file {path} cannot be loaded: {e}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"signing key file {path} does not hold an Ed25519 key (it holds "
                              f"{type(key).__name__}): make one with `ckptfs key generate`")
    return key


def load_public_key(path: str) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file holding it (or its private key)."""
    try:
        pem = _read_pem(path, "public key file")
    except FileNotFoundError:
        raise StoreError(f"public key file {path} does not exist") from None
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, binascii.Error):
        try:
            key = serialization.load_pem_private_key(pem, password=None).public_key()
        except (TypeError, ValueError, binascii.Error):
            raise StoreError(f"{path} is not a PEM public key (the `.pub` file `ckptfs key "
                             "generate` wrote, or `openssl pkey -pubout` of the key)") from None
    except Exception as e:
        raise StoreError(f"public key file {path} cannot be loaded: {e}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise StoreError(f"{path} does not hold an Ed25519 public key (it holds "
                         f"{type(key).__name__})")
    return key


# -- signatures -----------------------------------------------------------------------------
def signed_message(project: str, run: str, version: str, digest: str) -> bytes:
    name = f"{project}/{run}/{version}".encode("utf-8", "surrogateescape")
    return MESSAGE_LABEL + name + b"\n" + digest.encode("ascii") + b"\n"


def sign_version(key: Ed25519PrivateKey, project: str, run: str, version: str,
                 digest: str) -> dict:
    value = key.sign(signed_message(project, run, version, digest))
    return {"algorithm": ALGORITHM, "key_id": key_id_of(key),
            "value": base64.b64encode(value).decode("ascii")}


def public_key_from_hex(text: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(bytes.fromhex(text))


def signature_matches(signature: dict, public_key: Ed25519PublicKey, project: str, run: str,
                      version: str, digest: str) -> bool:
    try:
        value = base64.b64decode(signature["value"], validate=True)
        public_key.verify(value, signed_message(project, run, version, digest))
        return True
    except (InvalidSignature, KeyError, TypeError, ValueError, binascii.Error):
        return False
