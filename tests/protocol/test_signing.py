"""Trust root and envelopes: each test is an attack the rules must stop."""

from __future__ import annotations

import time

import pytest

from protocol.errors import BadPayload, Reason, VerificationError
from protocol.signing import Envelope, SigningKey, load_root_unverified, root_document, rotate_root, seal

NOW = 1_800_000_000


def make_root(version: int = 1, keys=None, threshold: int = 2, targets=None, signers=None, expires: int = NOW + 3600):
    keys = keys or [SigningKey.generate() for _ in range(3)]
    targets = targets or [SigningKey.generate()]
    doc = root_document(version, expires, keys, threshold, targets)
    raw = seal("root", doc, signers if signers is not None else keys[:threshold]).to_bytes()
    return keys, targets, raw


def test_manifest_signed_by_targets_key_verifies():
    _, targets, raw = make_root()
    root = load_root_unverified(raw)
    env = seal("manifest", {"a": 1}, targets)
    assert root.verify(env, "targets", "manifest") == env.payload


def test_signature_by_unknown_key_is_rejected_as_unknown_key():
    _, _, raw = make_root()
    root = load_root_unverified(raw)
    env = seal("manifest", {"a": 1}, [SigningKey.generate()])
    with pytest.raises(VerificationError) as err:
        root.verify(env, "targets", "manifest")
    assert err.value.reason is Reason.UNKNOWN_KEY


def test_tampered_payload_is_rejected_as_bad_signature():
    _, targets, raw = make_root()
    root = load_root_unverified(raw)
    env = seal("manifest", {"a": 1}, targets)
    forged = Envelope(env.payload_type, env.payload.replace(b"1", b"2"), env.signatures)
    with pytest.raises(VerificationError) as err:
        root.verify(forged, "targets", "manifest")
    assert err.value.reason is Reason.BAD_SIGNATURE


def test_signature_cannot_be_replayed_as_another_document_kind():
    _, targets, raw = make_root()
    root = load_root_unverified(raw)
    env = seal("manifest", {"a": 1}, targets)
    as_desired = Envelope("application/vnd.edgefleet.desired+json", env.payload, env.signatures)
    with pytest.raises(VerificationError):
        root.verify(as_desired, "targets", "desired")


def test_same_key_listed_twice_counts_once_toward_threshold():
    keys, _, raw = make_root()
    root = load_root_unverified(raw)
    env = seal("root", {"x": 1}, [keys[0]])
    doubled = Envelope(env.payload_type, env.payload, env.signatures * 2)
    report = root.check(doubled, "root")
    assert report.valid_keyids == (keys[0].keyid,)
    assert not report.ok and report.reason is Reason.THRESHOLD_NOT_MET


def test_root_not_signed_by_its_own_threshold_is_refused_at_provisioning():
    keys = [SigningKey.generate() for _ in range(3)]
    _, _, raw = make_root(keys=keys, signers=keys[:1])
    with pytest.raises(VerificationError) as err:
        load_root_unverified(raw)
    assert err.value.reason is Reason.THRESHOLD_NOT_MET


def test_root_rotation_signed_by_old_and_new_thresholds_is_accepted():
    old_keys, targets, raw = make_root()
    root = load_root_unverified(raw)
    new_keys = [SigningKey.generate() for _ in range(3)]
    new_doc = root_document(2, NOW + 7200, new_keys, 2, targets)
    new_raw = seal("root", new_doc, old_keys[:2] + new_keys[:2]).to_bytes()
    assert rotate_root(root, new_raw, NOW).version == 2


@pytest.mark.parametrize(
    "case,old_signers,new_signers,version,reason",
    [
        ("not signed by old threshold", 1, 2, 2, Reason.THRESHOLD_NOT_MET),
        ("not signed by new threshold", 2, 1, 2, Reason.THRESHOLD_NOT_MET),
        ("skips a version", 2, 2, 3, Reason.DOWNGRADE),
        ("same version replayed", 2, 2, 1, Reason.REPLAYED),
    ],
)
def test_root_rotation_rejections(case, old_signers, new_signers, version, reason):
    old_keys, targets, raw = make_root()
    root = load_root_unverified(raw)
    new_keys = [SigningKey.generate() for _ in range(3)]
    doc = root_document(version, NOW + 7200, new_keys, 2, targets)
    new_raw = seal("root", doc, old_keys[:old_signers] + new_keys[:new_signers]).to_bytes()
    with pytest.raises(VerificationError) as err:
        rotate_root(root, new_raw, NOW)
    assert err.value.reason is reason, case


def test_expired_new_root_is_rejected():
    old_keys, targets, raw = make_root()
    root = load_root_unverified(raw)
    new_keys = [SigningKey.generate() for _ in range(3)]
    doc = root_document(2, NOW - 1, new_keys, 2, targets)
    new_raw = seal("root", doc, old_keys[:2] + new_keys[:2]).to_bytes()
    with pytest.raises(VerificationError) as err:
        rotate_root(root, new_raw, NOW)
    assert err.value.reason is Reason.EXPIRED


@pytest.mark.parametrize(
    "data,needle",
    [
        (b"not json", "not valid JSON"),
        (b"[]", "expected a JSON object"),
        (b'{"payload_type": "x", "payload": "!!", "signatures": []}', "not valid base64"),
        (b'{"payload_type": "x", "payload": "", "signatures": [1]}', "needs keyid and sig"),
        (b'{"payload": "", "signatures": []}', "missing field 'payload_type'"),
    ],
)
def test_malformed_envelope_gives_one_clear_error(data, needle):
    with pytest.raises(BadPayload) as err:
        Envelope.parse(data)
    assert needle in str(err.value)


def test_signing_key_round_trips_through_pem():
    key = SigningKey.generate()
    again = SigningKey.from_pem(key.to_pem())
    assert again.keyid == key.keyid
    with pytest.raises(BadPayload, match="not a PEM private key"):
        SigningKey.from_pem(b"garbage")


def test_root_document_rejects_impossible_threshold():
    with pytest.raises(BadPayload, match="threshold 4"):
        root_document(1, int(time.time()), [SigningKey.generate()] * 3, 4, [SigningKey.generate()])


def test_only_a_rotation_that_changes_the_targets_role_resets_what_its_documents_taught():
    from protocol.signing import targets_rotated

    rks = [SigningKey.generate() for _ in range(2)]
    tk, tk2 = SigningKey.generate(), SigningKey.generate()

    def root(version: int, targets: list[SigningKey], threshold: int = 1, root_keys=rks):
        raw = seal("root", root_document(version, NOW + 3600, root_keys, 1, targets, threshold), root_keys).to_bytes()
        return load_root_unverified(raw)

    v1 = root(1, [tk])
    assert not targets_rotated(v1, root(2, [tk], root_keys=[SigningKey.generate()]))  # new root keys only
    assert targets_rotated(v1, root(2, [tk2]))
    assert targets_rotated(v1, root(2, [tk, tk2]))
    assert targets_rotated(root(1, [tk, tk2]), root(2, [tk, tk2], threshold=2))
