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
  setting `signing` (events.py applies them), so `rebuild-index` restores it.
A configured key that cannot be used fails the seal: ckptfs never seals unsigned instead.
The keys and signatures themselves are in ed25519.py, imported only where needed (the
`cryptography` package takes a while to import, and most commands never sign).
"""
import os
from dataclasses import dataclass, field

from .backend import Backend
from .config import SigningSettings, StoreConfig
from .errors import NotFoundError, SigningKeyError
from .events import SIGNING_SETTING, key_set, key_unset
from .names import ALL_PROJECTS

DEFAULT_KEY_FILE = os.path.join("keys", "signing.pem")


@dataclass
class SignatureReport:
    """What `verify --signatures` found, by version name."""
    valid: list = field(default_factory=list)
    unsigned: list = field(default_factory=list)
    invalid: list = field(default_factory=list)       # (version, why)
    unknown_key: list = field(default_factory=list)   # (version, key id)

    @property
    def ok(self) -> bool:
        return not self.invalid and not self.unknown_key


class Signing:
    """The signing key of the store at `store_path`: its journaled history (index),
    the private key file ckptfs.toml names (`config`, kept in step), key changes (admin
    of `*`, checked with `access`, journaled through `committer`), and signatures."""

    def __init__(self, index, committer, access, config: StoreConfig, store_path: str,
                 backend: Backend):
        self.index = index
        self.committer = committer
        self.access = access
        self.config = config
        self.path = store_path
        self.backend = backend  # where ckptfs.toml is kept

    def signing_state(self) -> dict:
        """{"current": key id or None, "keys": {key id: {...}}} from the journaled events."""
        with self.index.read() as txn:
            return self.index.get_setting(txn, ALL_PROJECTS, SIGNING_SETTING) or \
                {"current": None, "keys": {}}

    def signing_key_file(self) -> str | None:
        """The private key file ckptfs.toml names now (read afresh: another process, a
        `ckptfs key set`, may have changed it while this store is open)."""
        signing = StoreConfig.load(self.backend).signing
        return signing.key_file if signing else None

    def generate_signing_key(self, path: str | None = None, actor: dict | None = None) -> dict:
        """Create a new Ed25519 key (default STORE/keys/signing.pem) and sign with it.
        Needs admin of `*` (enforced), as every signing key change."""
        self.access.authorize(actor, ALL_PROJECTS, "admin", "change the signing key")
        if path is None:
            path = os.path.join(self.path, DEFAULT_KEY_FILE)
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        from .ed25519 import generate_key_file
        generate_key_file(os.path.abspath(path))
        return self.set_signing_key(path, actor)

    def set_signing_key(self, path: str, actor: dict | None = None) -> dict:
        """Sign every version sealed from now on with the private key in `path`: record
        the path in ckptfs.toml and journal its public key (`key.set`). Returns
        {"key_id", "key_file", "changed"} (not changed: that key was already set)."""
        self.access.authorize(actor, ALL_PROJECTS, "admin", "change the signing key")
        from .ed25519 import ALGORITHM, key_id_of, load_private_key, raw_public_key
        path = os.path.abspath(path)
        try:
            key = load_private_key(path)
        except FileNotFoundError:
            raise SigningKeyError(f"signing key file {path} does not exist (make a new key "
                                  "with `ckptfs key generate`)") from None
        key_id = key_id_of(key)

        def event():
            config = StoreConfig.load(self.backend)
            config.signing = SigningSettings(key_file=path)
            config.save(self.backend)
            self.config.signing = config.signing
            if self.signing_state()["current"] == key_id:
                return None  # the same key, perhaps moved: nothing to journal
            return key_set(ALGORITHM, key_id, raw_public_key(key).hex())
        entry = self.committer.commit_event(event, actor)
        return {"key_id": key_id, "key_file": path, "changed": entry is not None}

    def unset_signing_key(self, actor: dict | None = None) -> str:
        """Stop signing new versions (journaled as `key.unset`); returns the key id."""
        self.access.authorize(actor, ALL_PROJECTS, "admin", "change the signing key")

        def event():
            current = self.signing_state()["current"]
            if current is None:
                raise NotFoundError(f"store {self.path} has no signing key configured")
            config = StoreConfig.load(self.backend)
            config.signing = None
            config.save(self.backend)
            self.config.signing = None
            return key_unset(current)
        return self.committer.commit_event(event, actor)["key_id"]

    def current_signing_key(self):
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
        from .ed25519 import key_id_of, load_private_key
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
        if key is None:
            return None
        from .ed25519 import sign_version
        return sign_version(key, project, run, version, digest)

    @staticmethod
    def carried_signature(metadata: dict | None, project: str, run: str, version: str,
                          digest: str) -> dict | None:
        """The signature a version brings from the store it was copied or exported from
        (its `imported_from`), when it signs this same name and digest: the version
        keeps it where this store signs nothing of its own, and `verify --signatures`
        checks it like any other (with --public-key, or a journaled key of its id)."""
        origin = (metadata or {}).get("imported_from")
        if not isinstance(origin, dict) or origin.get("partial"):
            return None
        same = (origin.get("project"), origin.get("run"), origin.get("version"),
                origin.get("digest")) == (project, run, version, digest)
        signature = origin.get("signature")
        return signature if same and isinstance(signature, dict) else None

    @staticmethod
    def check_version_signature(record: dict, digest: str, keys: dict,
                                trusted: list | None,
                                report: SignatureReport) -> None:
        """File `record` (a version, whose files hash to `digest` now) under valid,
        unsigned, invalid or unknown key. With `trusted` public keys (verify
        --public-key), the signature must be one of theirs, whatever key id it names:
        an id is only a label, and whoever can rewrite the store can rewrite it and the
        journaled public keys too. Without, the journaled key of its id checks it."""
        from .ed25519 import ALGORITHM, public_key_from_hex, signature_matches
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
            candidates = [public_key_from_hex(known["public_key"])]
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
