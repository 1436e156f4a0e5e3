"""Ed25519 signatures of sealed versions (docs/encryption.md, "Signed versions").

With a signing key configured (`ckptfs key generate` / `ckptfs key set`), every seal signs

    b"ckptfs.version-signature/1\\n" + b"PROJECT/RUN/VERSION\\n" + digest (hex) + b"\\n"

under the journal lock and records `signature` {algorithm, key_id, value (base64)} in the
`version.sealed` event and the version's catalog document (so its sidecar shows it). The
digest covers every file's path, size and SHA-256, so a valid signature vouches for the
version's bytes. `ckptfs verify --signatures` checks them all.

Where things are kept:
- the private key: a PEM file outside the journal and index; ckptfs.toml `[signing]
  key_file` names it (a local setting, not history);
- the public keys: `key.set` journal events {algorithm, key_id, public_key (hex)}, and
  `key.unset` {key_id} when signing stops; the index keeps their sum as the store-wide
  setting `signing` (`apply_key_event`), so `rebuild-index` restores it.
A configured key that cannot be used fails the seal: ckptfs never seals unsigned instead.
"""
import base64
import binascii
import hashlib
import os
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (Ed25519PrivateKey,
                                                               Ed25519PublicKey)

from .config import SigningSettings, StoreConfig
from .errors import NotFoundError, SigningKeyError, StoreError

ALGORITHM = "ed25519"
MESSAGE_LABEL = b"ckptfs.version-signature/1\n"
SETTING_PROJECT = "*"   # the index keeps store-wide settings under project `*`
SETTING_KIND = "signing"
DEFAULT_KEY_FILE = os.path.join("keys", "signing.pem")


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
    try:
        with open(path, "rb") as f:
            return f.read(1 << 20)
    except FileNotFoundError:
        raise
    except IsADirectoryError:
        raise SigningKeyError(f"{what} {path} is a directory, not a PEM file") from None
    except PermissionError:
        raise SigningKeyError(f"{what} {path} cannot be read: permission denied") from None
    except OSError as e:
        raise SigningKeyError(f"{what} {path} cannot be read: {e.strerror}") from None


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


def signature_matches(signature: dict, public_key: Ed25519PublicKey, project: str, run: str,
                      version: str, digest: str) -> bool:
    try:
        value = base64.b64decode(signature["value"], validate=True)
        public_key.verify(value, signed_message(project, run, version, digest))
        return True
    except (InvalidSignature, KeyError, TypeError, ValueError, binascii.Error):
        return False


# -- the journaled key history, in the index --------------------------------------------------
def apply_key_event(index, txn, entry: dict) -> None:
    """Reflect a `key.set` / `key.unset` journal entry in the index's `signing` setting:
    {"current": key id or null, "keys": {key id: {algorithm, public_key, set_at, seq}}}."""
    state = index.get_setting(txn, SETTING_PROJECT, SETTING_KIND) or {"current": None, "keys": {}}
    if entry["type"] == "key.set":
        state["keys"].setdefault(entry["key_id"], {
            "algorithm": entry["algorithm"], "public_key": entry["public_key"],
            "set_at": entry["time"], "seq": entry["seq"]})
        state["current"] = entry["key_id"]
    elif entry["type"] == "key.unset":
        state["current"] = None
    index.put_setting(txn, SETTING_PROJECT, SETTING_KIND, state)


@dataclass
class SignatureReport:
    """What `verify --signatures` found, by version name."""
    valid: list = field(default_factory=list)
    unsigned: list = field(default_factory=list)
    invalid: list = field(default_factory=list)       # (version, why)
    unknown_key: list = field(default_factory=list)   # (version, key id)
    trusted_key_ids: list = field(default_factory=list)  # of the --public-key(s) given

    @property
    def ok(self) -> bool:
        return not self.invalid and not self.unknown_key


class SigningMixin:
    """Signing operations of `Store` (it provides `path`, `config`, `index`, `journal`,
    `_commit_catalog_event`)."""

    def signing_state(self) -> dict:
        """{"current": key id or None, "keys": {key id: {...}}} from the journaled events."""
        with self.index.read() as txn:
            return self.index.get_setting(txn, SETTING_PROJECT, SETTING_KIND) or \
                {"current": None, "keys": {}}

    def signing_key_file(self) -> str | None:
        """The private key file ckptfs.toml names now (read afresh: another process, a
        `ckptfs key set`, may have changed it while this store is open)."""
        signing = StoreConfig.load(self.path).signing
        return signing.key_file if signing else None

    def generate_signing_key(self, path: str | None = None, actor: dict | None = None) -> dict:
        """Create a new Ed25519 key (default STORE/keys/signing.pem) and sign with it."""
        if path is None:
            path = os.path.join(self.path, DEFAULT_KEY_FILE)
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        generate_key_file(os.path.abspath(path))
        return self.set_signing_key(path, actor)

    def set_signing_key(self, path: str, actor: dict | None = None) -> dict:
        """Sign every version sealed from now on with the private key in `path`: record
        the path in ckptfs.toml and journal its public key (`key.set`). Returns
        {"key_id", "key_file", "changed"} (not changed: that key was already set)."""
        path = os.path.abspath(path)
        try:
            key = load_private_key(path)
        except FileNotFoundError:
            raise SigningKeyError(f"signing key file {path} does not exist (make a new key "
                                  "with `ckptfs key generate`)") from None
        key_id = key_id_of(key)

        def event():
            config = StoreConfig.load(self.path)
            config.signing = SigningSettings(key_file=path)
            config.save(self.path)
            self.config.signing = config.signing
            if self.signing_state()["current"] == key_id:
                return None  # the same key, perhaps moved: nothing to journal
            return {"type": "key.set", "algorithm": ALGORITHM, "key_id": key_id,
                    "public_key": raw_public_key(key).hex()}
        entry = self._commit_catalog_event(event, actor)
        return {"key_id": key_id, "key_file": path, "changed": entry is not None}

    def unset_signing_key(self, actor: dict | None = None) -> str:
        """Stop signing new versions (journaled as `key.unset`); returns the key id."""
        def event():
            current = self.signing_state()["current"]
            if current is None:
                raise NotFoundError(f"store {self.path} has no signing key configured")
            config = StoreConfig.load(self.path)
            config.signing = None
            config.save(self.path)
            self.config.signing = None
            return {"type": "key.unset", "key_id": current}
        return self._commit_catalog_event(event, actor)["key_id"]

    def current_signing_key(self) -> Ed25519PrivateKey | None:
        """The key seals are signed with now, or None when signing is off. SigningKeyError
        if a key is configured but cannot be used: the seal must fail, not go unsigned."""
        current = self.signing_state()["current"]
        if current is None:
            return None
        hint = ("restore it, configure another key with `ckptfs key set STORE PATH`, or stop "
                "signing with `ckptfs key unset STORE`")
        path = self.signing_key_file()
        if path is None:
            raise SigningKeyError(f"store {self.path} signs its versions (key {current}), but "
                                  f"its ckptfs.toml names no [signing] key_file: {hint}")
        try:
            key = load_private_key(path)
        except FileNotFoundError:
            raise SigningKeyError(f"signing key file {path} is missing, and store {self.path} "
                                  f"signs every version it seals (key {current}): {hint}") from None
        if key_id_of(key) != current:
            raise SigningKeyError(f"signing key file {path} holds key {key_id_of(key)}, but "
                                  f"store {self.path} signs with key {current}: run `ckptfs key "
                                  "set STORE PATH` to switch keys")
        return key

    def seal_signature(self, project: str, run: str, version: str, digest: str) -> dict | None:
        """The `signature` of a version being sealed (None when signing is off)."""
        key = self.current_signing_key()
        return sign_version(key, project, run, version, digest) if key is not None else None

    @staticmethod
    def check_version_signature(record: dict, digest: str, keys: dict,
                                trusted: list[Ed25519PublicKey] | None,
                                report: SignatureReport) -> None:
        """File `record` (a version, whose files hash to `digest` now) under valid,
        unsigned, invalid or unknown key. With `trusted` public keys (verify
        --public-key), the signature must be one of theirs, whatever key id it names:
        an id is only a label, and whoever can rewrite the store can rewrite it and the
        journaled public keys too. Without, the journaled key of its id checks it."""
        name = f"{record['project']}/{record['run']}/{record['version']}"
        signature = record.get("signature")
        if not signature:
            report.unsigned.append(name)
            return
        if not isinstance(signature, dict) or signature.get("algorithm") != ALGORITHM:
            report.invalid.append((name, "the signature is malformed or of an unknown algorithm"))
            return
        candidates = trusted
        if candidates is None:
            known = keys.get(signature.get("key_id"))
            if known is None:
                report.unknown_key.append((name, str(signature.get("key_id"))))
                return
            candidates = [Ed25519PublicKey.from_public_bytes(bytes.fromhex(known["public_key"]))]
        p, r, v = record["project"], record["run"], record["version"]
        if not any(signature_matches(signature, key, p, r, v, record["digest"])
                   for key in candidates):
            whose = "the given public key(s)" if trusted is not None else \
                f"key {signature.get('key_id')}"
            report.invalid.append((name, f"the signature is not one of {whose} over the "
                                         "version's name and digest"))
        elif digest != record["digest"]:
            report.invalid.append((name, "the signed digest differs from the digest of the "
                                         "version's files now"))
        else:
            report.valid.append(name)
