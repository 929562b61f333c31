"""Ed25519 keys, signed envelopes and the trust root.

Envelope (DSSE-like; the payload bytes are signed and shipped unchanged)::

    {"payload_type": "application/vnd.edgefleet.<kind>+json",
     "payload": "<base64 of canonical JSON>",
     "signatures": [{"keyid": "<hex>", "sig": "<base64>"}]}

The signature covers ``PAE(payload_type, payload)`` so a signature over one kind of document
can never be replayed as another kind.

Trust root (TUF-shaped, payload type ``root``)::

    {"_type": "root", "version": N, "expires": unix_s,
     "keys": {keyid: {"ed25519": base64 raw public key}},
     "roles": {"root": {"keyids": [...], "threshold": k},
               "targets": {"keyids": [...], "threshold": k}}}

Rules enforced here (pure functions, no clock reads: ``now`` is passed in):

* a role's threshold counts each *distinct* trusted keyid once; unknown keyids and bad
  signatures are ignored for counting, then reported if the threshold is not met;
* ``verify_*`` raise :class:`VerificationError`; ``check_*`` return a :class:`SignatureReport`;
* root rotation (:func:`rotate_root`): the new root must be exactly version N+1 and carry a
  threshold of signatures from the *old* root role and from the *new* root role; an expired
  intermediate root is allowed while walking, the final one must not be expired;
* a rotation that changes the ``targets`` role (:func:`targets_rotated`) tells the device to
  forget what it learnt from documents signed by the old targets keys: the highest desired
  ``seq`` and ``issued`` it accepted. That is how a fleet recovers from a compromised online
  key that fast-forwarded them (python-tuf deletes its trusted timestamp and snapshot for the
  same reason): the hub's next documents, signed by the new key, count again.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field as dc_field
from typing import TYPE_CHECKING, Any

from .codec import canonical, field, load_object, nonneg_int
from .ed25519 import PublicKey
from .errors import BadPayload, Reason, VerificationError

if TYPE_CHECKING:  # imported where keys are made or signed with: a device only verifies (protocol.ed25519)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PAYLOAD_PREFIX = "application/vnd.edgefleet."


def payload_type(kind: str) -> str:
    return f"{PAYLOAD_PREFIX}{kind}+json"


def _pae(ptype: str, payload: bytes) -> bytes:
    t = ptype.encode()
    return b"EFv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def _b64d(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise BadPayload(what, f"{value[:40]!r} is not valid base64") from None


def _raw(public: Ed25519PublicKey | PublicKey) -> bytes:
    if isinstance(public, PublicKey):
        return public.raw
    from cryptography.hazmat.primitives import serialization

    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def keyid_of(public: Ed25519PublicKey | PublicKey) -> str:
    return hashlib.sha256(_raw(public)).hexdigest()[:32]


@dataclass(frozen=True)
class SigningKey:
    """A private Ed25519 key with its keyid."""

    private: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> SigningKey:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        return cls(Ed25519PrivateKey.generate())

    @property
    def keyid(self) -> str:
        return keyid_of(self.private.public_key())

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    def public_b64(self) -> str:
        return base64.b64encode(_raw(self.public)).decode()

    def to_pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self.private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    @classmethod
    def from_pem(cls, data: bytes, what: str = "signing key") -> SigningKey:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise BadPayload(what, f"not a PEM private key ({exc})") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise BadPayload(what, f"expected an Ed25519 key, got {type(key).__name__}")
        return cls(key)

    def sign(self, ptype: str, payload: bytes) -> dict[str, str]:
        sig = self.private.sign(_pae(ptype, payload))
        return {"keyid": self.keyid, "sig": base64.b64encode(sig).decode()}


@dataclass(frozen=True)
class Envelope:
    payload_type: str
    payload: bytes
    signatures: tuple[dict[str, str], ...]

    def to_bytes(self) -> bytes:
        return canonical(
            {
                "payload_type": self.payload_type,
                "payload": base64.b64encode(self.payload).decode(),
                "signatures": list(self.signatures),
            }
        )

    @classmethod
    def parse(cls, data: bytes, what: str = "envelope") -> Envelope:
        obj = load_object(data, what)
        ptype = field(obj, "payload_type", str, what)
        payload = _b64d(field(obj, "payload", str, what), what)
        sigs = field(obj, "signatures", list, what)
        clean = []
        for s in sigs:
            if not isinstance(s, dict) or not isinstance(s.get("keyid"), str) or not isinstance(s.get("sig"), str):
                raise BadPayload(what, f"signature entry {str(s)[:60]!r} needs keyid and sig")
            clean.append({"keyid": s["keyid"], "sig": s["sig"]})
        return cls(ptype, payload, tuple(clean))

    def add_signature(self, key: SigningKey) -> Envelope:
        others = tuple(s for s in self.signatures if s["keyid"] != key.keyid)
        return Envelope(self.payload_type, self.payload, others + (key.sign(self.payload_type, self.payload),))


def seal(kind: str, signed: dict[str, Any], keys: Iterable[SigningKey]) -> Envelope:
    """Canonicalise ``signed`` and sign it with every key in ``keys`` (may be none)."""
    env = Envelope(payload_type(kind), canonical(signed), ())
    for key in keys:
        env = env.add_signature(key)
    return env


@dataclass(frozen=True)
class Role:
    keyids: tuple[str, ...]
    threshold: int


@dataclass(frozen=True)
class SignatureReport:
    """What :func:`check_signatures` found: for dashboards, never a bare bool."""

    valid_keyids: tuple[str, ...]
    unknown_keyids: tuple[str, ...]
    bad_keyids: tuple[str, ...]
    threshold: int

    @property
    def ok(self) -> bool:
        return len(self.valid_keyids) >= self.threshold

    @property
    def reason(self) -> Reason:
        if self.ok:
            return Reason.OK
        if self.bad_keyids:
            return Reason.BAD_SIGNATURE
        if self.unknown_keyids and not self.valid_keyids:
            return Reason.UNKNOWN_KEY
        return Reason.THRESHOLD_NOT_MET

    def describe(self) -> str:
        return (
            f"{len(self.valid_keyids)} valid of threshold {self.threshold}"
            f"; unknown keys {list(self.unknown_keyids)}; bad signatures {list(self.bad_keyids)}"
        )


def check_signatures(env: Envelope, keys: dict[str, PublicKey], role: Role) -> SignatureReport:
    valid: list[str] = []
    unknown: list[str] = []
    bad: list[str] = []
    msg = _pae(env.payload_type, env.payload)
    for s in env.signatures:
        kid = s["keyid"]
        if kid not in role.keyids or kid not in keys:
            unknown.append(kid)
            continue
        if kid in valid:
            continue  # a keyid counts once, however often it is listed
        try:
            ok = keys[kid].verify(_b64d(s["sig"], "signature"), msg)
        except BadPayload:
            ok = False
        if not ok:
            bad.append(kid)
            continue
        valid.append(kid)
    return SignatureReport(tuple(valid), tuple(unknown), tuple(bad), role.threshold)


@dataclass(frozen=True)
class Root:
    """The trust anchor pinned on every device."""

    version: int
    expires: int
    keys: dict[str, PublicKey] = dc_field(hash=False, compare=False)
    roles: dict[str, Role] = dc_field(hash=False, compare=False)
    raw: bytes = b""  # the envelope bytes this root was read from, to persist unchanged

    def role(self, name: str) -> Role:
        if name not in self.roles:
            raise VerificationError(Reason.UNKNOWN_KEY, f"trust root has no role {name!r}")
        return self.roles[name]

    def check(self, env: Envelope, role: str) -> SignatureReport:
        return check_signatures(env, self.keys, self.role(role))

    def verify(self, env: Envelope, role: str, kind: str) -> bytes:
        """Verify ``env`` is a ``kind`` document signed by a threshold of ``role``; return payload."""
        if env.payload_type != payload_type(kind):
            raise VerificationError(
                Reason.MALFORMED, f"expected payload type {payload_type(kind)!r}, got {env.payload_type!r}"
            )
        report = self.check(env, role)
        if not report.ok:
            raise VerificationError(report.reason, f"{kind} signed for role {role}: {report.describe()}")
        return env.payload


def root_document(
    version: int,
    expires: int,
    root_keys: Iterable[SigningKey | Ed25519PublicKey | PublicKey],
    root_threshold: int,
    targets_keys: Iterable[SigningKey | Ed25519PublicKey | PublicKey],
    targets_threshold: int = 1,
) -> dict[str, Any]:
    def pub(k: SigningKey | Ed25519PublicKey | PublicKey) -> Ed25519PublicKey | PublicKey:
        return k.public if isinstance(k, SigningKey) else k

    rk = [pub(k) for k in root_keys]
    tk = [pub(k) for k in targets_keys]
    keys = {}
    for k in rk + tk:
        keys[keyid_of(k)] = {"ed25519": base64.b64encode(_raw(k)).decode()}
    if not 1 <= root_threshold <= len(rk):
        raise BadPayload("root", f"root threshold {root_threshold} must be 1..{len(rk)}")
    if not 1 <= targets_threshold <= len(tk):
        raise BadPayload("root", f"targets threshold {targets_threshold} must be 1..{len(tk)}")
    return {
        "_type": "root",
        "version": version,
        "expires": expires,
        "keys": keys,
        "roles": {
            "root": {"keyids": sorted(keyid_of(k) for k in rk), "threshold": root_threshold},
            "targets": {"keyids": sorted(keyid_of(k) for k in tk), "threshold": targets_threshold},
        },
    }


def parse_root_payload(payload: bytes, raw: bytes = b"") -> Root:
    what = "root"
    obj = load_object(payload, what)
    if obj.get("_type") != "root":
        raise BadPayload(what, f"_type must be 'root', got {obj.get('_type')!r}")
    version = nonneg_int(obj, "version", what)
    expires = nonneg_int(obj, "expires", what)
    keys: dict[str, PublicKey] = {}
    for kid, spec in field(obj, "keys", dict, what).items():
        if not isinstance(spec, dict) or not isinstance(spec.get("ed25519"), str):
            raise BadPayload(what, f"key {kid!r} needs an 'ed25519' base64 value")
        try:
            pub = PublicKey(_b64d(spec["ed25519"], what))
        except ValueError:
            raise BadPayload(what, f"key {kid!r} is not a 32-byte Ed25519 public key") from None
        if keyid_of(pub) != kid:
            raise BadPayload(what, f"keyid {kid!r} does not match its key ({keyid_of(pub)})")
        keys[kid] = pub
    roles: dict[str, Role] = {}
    for name, spec in field(obj, "roles", dict, what).items():
        if not isinstance(spec, dict):
            raise BadPayload(what, f"role {name!r} must be an object")
        kids = field(spec, "keyids", list, f"root role {name}")
        threshold = nonneg_int(spec, "threshold", f"root role {name}")
        if threshold < 1 or threshold > len(kids):
            raise BadPayload(what, f"role {name!r} threshold {threshold} must be 1..{len(kids)}")
        roles[name] = Role(tuple(str(k) for k in kids), threshold)
    for needed in ("root", "targets"):
        if needed not in roles:
            raise BadPayload(what, f"missing role {needed!r}")
    return Root(version, expires, keys, roles, raw)


def load_root_unverified(env_bytes: bytes) -> Root:
    """Parse a root envelope and check it is signed by its own root role (self-consistency).

    Used once, at provisioning, to read the root that will be pinned.
    """
    env = Envelope.parse(env_bytes, "root envelope")
    if env.payload_type != payload_type("root"):
        raise BadPayload("root envelope", f"payload type {env.payload_type!r} is not a root")
    root = parse_root_payload(env.payload, env_bytes)
    root.verify(env, "root", "root")
    return root


def rotate_root(trusted: Root, new_env_bytes: bytes, now: int) -> Root:
    """Accept ``new_env_bytes`` as the next root after ``trusted`` or raise.

    New root must be version ``trusted.version + 1`` and signed by a threshold of the old root
    role and a threshold of its own root role. Equal version is reported as a replay.
    """
    env = Envelope.parse(new_env_bytes, "root envelope")
    trusted.verify(env, "root", "root")  # old threshold, before we parse anything from it
    new = parse_root_payload(env.payload, new_env_bytes)
    if new.version <= trusted.version:
        raise VerificationError(
            Reason.REPLAYED if new.version == trusted.version else Reason.DOWNGRADE,
            f"root version must be {trusted.version + 1}, got {new.version}",
        )
    if new.version != trusted.version + 1:
        raise VerificationError(
            Reason.DOWNGRADE, f"root version must be exactly {trusted.version + 1}, got {new.version}"
        )
    new.verify(env, "root", "root")  # new threshold
    if new.expires <= now:
        raise VerificationError(Reason.EXPIRED, f"root v{new.version} expired at {new.expires}, now {now}")
    return new


def targets_rotated(old: Root, new: Root) -> bool:
    """True if ``new`` names other targets keys or another threshold than ``old``."""
    a, b = old.role("targets"), new.role("targets")
    return set(a.keyids) != set(b.keyids) or a.threshold != b.threshold
