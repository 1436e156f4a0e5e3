"""Encryption at rest: pack records sealed with AES-256-GCM (docs/encryption.md).

A store made with `ckptfs init --encrypt --key-file PATH` encrypts the payload of every
record it writes (chunks and manifests) with a 256-bit key kept in PATH, outside
ckptfs.toml. On disk a record's payload becomes

    nonce (12 random bytes) || AES-256-GCM ciphertext of the encoded payload || tag (16)

with bit 0 of the record header's flags set. The associated data binds the ciphertext
to what the header says about it, its kind, codec, raw length and id, but not to its
pack or offset, so a garbage collection can copy a record into a new pack without the
key. Compression comes first (ciphertext does not compress); the xxh3 checksum of the
record covers the stored, encrypted bytes, so damage is caught before decryption.

The key file is text: comment lines (#) and one line of 64 hex digits. ckptfs.toml
records its path and `key_check`, a keyed BLAKE3 of a fixed label that tells the right
key from a wrong one without revealing anything about it.
"""
import dataclasses
import hmac
import os
import struct
from datetime import datetime, timezone

import blake3
from .errors import EncryptionKeyError, IntegrityError, read_key_material
from .pack import FLAG_ENCRYPTED, KIND_MANIFEST, Record

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
OVERHEAD = NONCE_BYTES + TAG_BYTES   # bytes an encrypted payload adds
ENV_KEY_FILE = "CKPTFS_KEY_FILE"
# Both the cipher key and the key check are derived from the key file's key, each with
# its own BLAKE3 context, so neither tells anything about the other.
CIPHER_CONTEXT = "ckptfs 1 pack record encryption (AES-256-GCM)"
CHECK_CONTEXT = "ckptfs 1 encryption key check"
AD_LABEL = b"ckptfs.record/1\0"
AD_FIELDS = struct.Struct("<BBI")   # kind, codec, raw_len (then the 32-byte id)


def key_check(key: bytes) -> str:
    return blake3.blake3(key, derive_key_context=CHECK_CONTEXT).hexdigest()


def create_key_file(path: str) -> bytes:
    """Write a new random key to `path` (which must not exist), mode 0600."""
    key = os.urandom(KEY_BYTES)
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    text = (f"# ckptfs encryption key (AES-256-GCM), created {created}.\n"
            "# Keep it secret, and keep a copy somewhere safe: without it the store's data\n"
            "# cannot be read by anyone, ckptfs included.\n"
            f"{key.hex()}\n")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    return key


def read_key_file(path: str) -> bytes:
    """The key in `path`. FileNotFoundError if it is missing (the caller says what to
    do); EncryptionKeyError if it cannot be read or is not a key file."""
    data = read_key_material(path, "key file", EncryptionKeyError, 64 * 1024)
    lines = [line.strip() for line in data.decode("ascii", "replace").splitlines()]
    keys = [line for line in lines if line and not line.startswith("#")]
    try:
        if len(keys) != 1 or len(keys[0]) != 2 * KEY_BYTES:
            raise ValueError
        return bytes.fromhex(keys[0])
    except ValueError:
        raise EncryptionKeyError(
            f"key file {path} is not a ckptfs key file: it must hold one line of "
            f"{2 * KEY_BYTES} hex digits (a {8 * KEY_BYTES}-bit key), as `ckptfs init "
            "--encrypt` writes it") from None


def obtain_key_file(path: str) -> tuple[str, bytes]:
    """(absolute path, key) for `ckptfs init --encrypt`: the key in `path` if it exists,
    else a new one written there. Its directory must exist (no surprise directories)."""
    path = os.path.abspath(path)
    try:
        return path, read_key_file(path)
    except FileNotFoundError:
        pass
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise EncryptionKeyError(f"cannot create key file {path}: directory {directory} does "
                                 "not exist (create it first, ideally on another disk than "
                                 "the store)")
    try:
        return path, create_key_file(path)
    except PermissionError:
        raise EncryptionKeyError(f"cannot create key file {path}: permission denied") from None


def open_store_key(store_path: str, key_file: str, expected_check: str) -> "RecordCipher":
    """The cipher of an encrypted store, from its key file, or from the file
    CKPTFS_KEY_FILE names when set (a key moved elsewhere)."""
    from_env = os.environ.get(ENV_KEY_FILE) or None
    path = from_env or key_file
    try:
        key = read_key_file(path)
    except FileNotFoundError:
        if from_env:
            raise EncryptionKeyError(
                f"store {store_path} is encrypted and its key file {path} (named by "
                f"{ENV_KEY_FILE}) is missing: set {ENV_KEY_FILE} to where the key file is, "
                f"or unset it to use {key_file} (the path in ckptfs.toml)") from None
        raise EncryptionKeyError(
            f"store {store_path} is encrypted and its key file {path} is missing: put the "
            f"key file back there, or if it was moved, set {ENV_KEY_FILE} to its new path "
            "(without its key the store cannot be read)") from None
    if not hmac.compare_digest(key_check(key), expected_check):
        via = f" (named by {ENV_KEY_FILE})" if from_env else ""
        raise EncryptionKeyError(
            f"key file {path}{via} does not hold the key of store {store_path}: use the key "
            "file the store was created with")
    return RecordCipher(key)


def associated_data(kind: int, codec: int, raw_len: int, record_id: bytes) -> bytes:
    return AD_LABEL + AD_FIELDS.pack(kind, codec, raw_len) + record_id


class RecordCipher:
    """Encrypts and decrypts record payloads. Thread-safe (AESGCM keeps no state between
    calls, and releases the GIL while it works)."""

    def __init__(self, key: bytes):
        # Imported here: only an encrypted store needs it, and it takes a while to load.
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        self._aead = AESGCM(blake3.blake3(key, derive_key_context=CIPHER_CONTEXT).digest())
        self._invalid_tag = InvalidTag

    def encrypt(self, kind: int, codec: int, raw_len: int, record_id: bytes, payload) -> bytes:
        # Random 96-bit nonces: safe for far more records than a store will hold (the
        # bound is about 2^32 records per key, 4 PiB of 1 MiB chunks).
        nonce = os.urandom(NONCE_BYTES)
        ad = associated_data(kind, codec, raw_len, record_id)
        return nonce + self._aead.encrypt(nonce, payload, ad)

    def decrypt(self, record: Record, pack_id: int) -> Record:
        """The record with its payload decrypted; IntegrityError if it fails to
        authenticate (altered, or written under another key)."""
        payload = record.payload
        what = "manifest" if record.kind == KIND_MANIFEST else "chunk"
        name = f"pack {pack_id:08x}: {what} {record.record_id.hex()[:16]}"
        if len(payload) < OVERHEAD:
            raise IntegrityError(f"{name}: encrypted payload is truncated", pack_id=pack_id,
                                 chunk_id=record.record_id)
        ad = associated_data(record.kind, record.codec, record.raw_len, record.record_id)
        try:
            plain = self._aead.decrypt(payload[:NONCE_BYTES], payload[NONCE_BYTES:], ad)
        except self._invalid_tag:
            raise IntegrityError(f"{name} failed authentication (AES-GCM): it was altered "
                                 "or encrypted under another key", pack_id=pack_id,
                                 chunk_id=record.record_id) from None
        return dataclasses.replace(record, payload=plain, flags=record.flags & ~FLAG_ENCRYPTED)
