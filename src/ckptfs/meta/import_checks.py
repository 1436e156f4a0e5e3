"""What `ckptfs import` of an export does not take on the sidecar's word (docs/export.md,
"What import checks").

SHA256SUMS and the sidecar sit beside the files and anyone can rewrite them together, so
matching them proves only that the export is self-consistent. Two more checks:

- **the files' own claims**: `step`, `epoch` and `metrics` are read again from the files
  the way a seal reads them (trainer_state.json, *_results.json, ckptfs.json…); where the
  files give a value and the sidecar records another, the sidecar disagrees with them.
- **the signature** (when the store that exported it signs its versions): checked over
  the original's name and the digest of the files, with the public keys given
  (`--public-key`) or, failing those, the key of that id this store has journaled.
  Without either key, a signature cannot be told from a forged one: it is reported as
  not checked.
"""
import math
from dataclasses import dataclass, field

from ckptfs.store.manifest import version_digest

from .extract import extract_facts
from .seal import deep_merge
from .user import read_user_metadata

CHECKED_FIELDS = ("step", "epoch")


@dataclass
class ImportChecks:
    """The outcome of the checks, recorded in the imported version's `imported_from`."""
    signature: str = "unsigned"   # valid | unchecked | unsigned
    key_id: str | None = None
    disagreements: list[str] = field(default_factory=list)
    trusted_sidecar: bool = False

    def record(self) -> dict:
        doc = {"signature": self.signature, "signature_key_id": self.key_id}
        if self.trusted_sidecar:
            doc["trusted_sidecar"] = True
            doc["disagreements"] = list(self.disagreements)
        return doc

    def describe(self) -> str:
        """For the summary line of `ckptfs import`."""
        if self.signature == "valid":
            return f"signature by key {self.key_id} verified"
        if self.signature == "unchecked":
            return (f"signed by key {self.key_id}, not checked: no --public-key given and the "
                    "key is unknown here")
        return "unsigned: nothing proves which store it came from"


# -- the files' own claims --------------------------------------------------------------
def claims_of_files(version_dir: str) -> dict:
    """`step`, `epoch` and `metrics` as a seal would read them from the files (the facts
    extracted from known files, then the directory's own ckptfs.json on top)."""
    facts, _warnings = extract_facts(version_dir)
    user, _warnings = read_user_metadata(version_dir)
    merged = deep_merge(facts, user)
    claims = {name: merged[name] for name in CHECKED_FIELDS if merged.get(name) is not None}
    claims["metrics"] = dict(merged.get("metrics") or {})
    return claims


def disagreements(sidecar: dict, claims: dict) -> list[str]:
    """Each field the files give a value for and the sidecar records differently."""
    found = []
    for name in CHECKED_FIELDS:
        if name in claims and not _same_number(sidecar.get(name), claims[name]):
            found.append(_disagreement(name, sidecar.get(name), claims[name]))
    recorded = sidecar.get("metrics") if isinstance(sidecar.get("metrics"), dict) else {}
    for name, value in sorted(claims["metrics"].items()):
        if not _same_number(recorded.get(name), value):
            found.append(_disagreement(f"metrics.{name}", recorded.get(name), value))
    return found


def _same_number(recorded, derived) -> bool:
    if isinstance(recorded, bool) or not isinstance(recorded, (int, float)):
        return False
    return math.isclose(recorded, derived, rel_tol=1e-12, abs_tol=0.0)


def _disagreement(name: str, recorded, derived) -> str:
    shown = "nothing" if recorded is None else repr(recorded)
    return f"{name} is {shown} in the sidecar but {derived!r} in the files"


# -- the signature --------------------------------------------------------------------------
class SignatureProblem(Exception):
    """A signature that does not verify, or one that was asked for and is missing."""


def check_signature(sidecar: dict, trusted_keys: list | None, known_keys: dict) -> ImportChecks:
    """Check the sidecar's signature over its name and digest (the caller has checked that
    the files give that digest). `trusted_keys`: public keys the user gave; `known_keys`:
    this store's journaled keys by id. Raises SignatureProblem."""
    signature = sidecar.get("signature")
    if not signature:
        if trusted_keys:
            raise SignatureProblem("it is not signed, but --public-key asks for a signature")
        return ImportChecks()
    if not isinstance(signature, dict) or signature.get("algorithm") != "ed25519":
        raise SignatureProblem("its signature is malformed or of an unknown algorithm")
    key_id = str(signature.get("key_id"))
    from ckptfs.store import ed25519
    candidates = trusted_keys
    if not candidates:
        known = known_keys.get(key_id)
        if known is None:
            return ImportChecks("unchecked", key_id)
        candidates = [ed25519.public_key_from_hex(known["public_key"])]
    _check_sidecar_digest(sidecar)
    name = (sidecar["project"], sidecar["run"], sidecar["version"])
    if not any(ed25519.signature_matches(signature, key, *name, sidecar["digest"])
               for key in candidates):
        whose = "the given public key(s)" if trusted_keys else f"key {key_id} (known here)"
        raise SignatureProblem(f"its signature is not one of {whose} over "
                               f"{'/'.join(name)} and its digest")
    return ImportChecks("valid", key_id)


def _check_sidecar_digest(sidecar: dict):
    """The signed digest must be that of the file list the sidecar records (which the
    exported files were checked against): for a partial export, the only link between
    the signature and the files that are there."""
    entries = [{"path": f["path"], "type": "file", "size": f["size"], "sha256": f["sha256"]}
               for f in sidecar["files"]]
    entries += [{"path": s["path"], "type": "symlink", "target": s["target"]}
                for s in sidecar["symlinks"]]
    if version_digest(entries) != sidecar["digest"]:
        raise SignatureProblem("the file list in its sidecar does not give the digest it "
                               "records (and signs)")
