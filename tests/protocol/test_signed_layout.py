"""The signed byte layout of docs/protocol.md ("Signed bytes") is what the code signs, and a
tool that shares no code with us can check it.

The layout is rebuilt here from the documented text with hashlib/json/base64/cryptography only
(never ``protocol``'s helpers), then compared with ``protocol.signing`` and handed to
``openssl pkeyutl -verify -rawin``. The vectors in ``vectors/`` use a published TEST key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from protocol.codec import canonical
from protocol.errors import Reason, VerificationError
from protocol.messages import Desired, verify_desired
from protocol.signing import Envelope, SigningKey, keyid_of, load_root_unverified, root_document, seal

VECTORS = Path(__file__).resolve().parent / "vectors"
DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"

KEYID = "f2ff044ab7ed314ce0294764781438b1"
DEVICE = "ef-test-device-1"
ISSUED, EXPIRES = 1767225600, 1767229200
DESIRED_TYPE = "application/vnd.edgefleet.desired+json"


# --- the documented layout, written from docs/protocol.md alone -------------------------------


def documented_signed_bytes(ptype: str, payload: bytes) -> bytes:
    """signed = "EFv1" SP LEN(type) SP type SP LEN(payload) SP payload; LEN in bytes, decimal."""
    t = ptype.encode("utf-8")
    return b" ".join([b"EFv1", str(len(t)).encode("ascii"), t, str(len(payload)).encode("ascii"), payload])


def documented_keyid(raw_public: bytes) -> str:
    """First 32 lowercase hex digits of SHA-256 over the raw 32-byte public key."""
    return hashlib.sha256(raw_public).hexdigest()[:32]


def documented_canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def vector(name: str) -> bytes:
    return (VECTORS / name).read_bytes()


def raw_public() -> bytes:
    pub = serialization.load_pem_public_key(vector("test_key.pub.pem"))
    assert isinstance(pub, Ed25519PublicKey)
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def private_key() -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(vector("test_key.TEST-ONLY.pem"), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    return key


def desired_envelope() -> dict:
    return json.loads(vector("desired.json"))


def flipped(data: bytes, index: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 0x01
    return bytes(out)


def vector_desired() -> Desired:
    return Desired(device=DEVICE, seq=1, issued=ISSUED, expires=EXPIRES, action="idle", bundle=None)


# --- (a) the documented layout is what protocol.signing signs --------------------------------


def test_the_documented_signed_bytes_rebuilt_from_the_envelope_are_the_vector_file():
    env = desired_envelope()
    assert env["payload_type"] == DESIRED_TYPE
    payload = base64.b64decode(env["payload"], validate=True)
    assert payload == vector("desired.payload.json")
    signed = documented_signed_bytes(env["payload_type"], payload)
    assert signed == vector("desired.signed.bin")
    assert signed.startswith(b"EFv1 38 application/vnd.edgefleet.desired+json 181 {")
    assert len(signed) == 232
    [entry] = env["signatures"]
    assert entry["keyid"] == KEYID
    assert base64.b64decode(entry["sig"], validate=True) == vector("desired.sig.bin")


def test_the_signature_is_plain_ed25519_over_the_documented_bytes_and_nothing_else():
    env = desired_envelope()
    payload = base64.b64decode(env["payload"])
    sig = vector("desired.sig.bin")
    pub = Ed25519PublicKey.from_public_bytes(raw_public())
    pub.verify(sig, documented_signed_bytes(env["payload_type"], payload))
    # Ed25519 is deterministic: the test key re-signs the documented bytes to the same 64 bytes
    assert private_key().sign(documented_signed_bytes(env["payload_type"], payload)) == sig
    for not_signed in (
        payload,  # the bare payload
        documented_signed_bytes(env["payload_type"], payload) + b"\n",
        b"DSSEv1" + documented_signed_bytes(env["payload_type"], payload)[4:],
    ):
        with pytest.raises(InvalidSignature):
            pub.verify(sig, not_signed)


def test_protocol_signing_produces_the_documented_signature_and_key_id():
    key = SigningKey.from_pem(vector("test_key.TEST-ONLY.pem"))
    payload = vector("desired.payload.json")
    entry = key.sign(DESIRED_TYPE, payload)
    assert entry == {
        "keyid": documented_keyid(raw_public()),
        "sig": base64.b64encode(vector("desired.sig.bin")).decode("ascii"),
    }
    assert key.keyid == keyid_of(key.public) == KEYID


def test_protocol_seal_reproduces_the_vector_envelopes_byte_for_byte():
    key = SigningKey.from_pem(vector("test_key.TEST-ONLY.pem"))
    assert vector_desired().seal([key]) == vector("desired.json")
    root_doc = root_document(1, 4102444800, [key], 1, [key], 1)
    assert seal("root", root_doc, [key]).to_bytes() == vector("root.json")


def test_payloads_and_envelopes_are_the_documented_canonical_json():
    for name in ("desired.json", "root.json"):
        env = json.loads(vector(name))
        assert documented_canonical(env) == vector(name)
        payload = base64.b64decode(env["payload"])
        assert documented_canonical(json.loads(payload)) == payload
    assert vector("desired.payload.json") == documented_canonical(vector_desired().signed_dict())


def test_protocol_canonical_json_follows_each_documented_rule():
    assert canonical({"b": 1, "a": {"d": 2, "c": 3}}) == b'{"a":{"c":3,"d":2},"b":1}'
    # code point order (= UTF-8 byte order): U+FFFF before U+1F600, unlike RFC 8785
    assert canonical({"\U0001f600": 1, "\uffff": 2}) == '{"\uffff":2,"\U0001f600":1}'.encode()
    assert canonical(['"\\\b\t\n\f\r', "\x01\x1f", "/\x7f\u00e9\u2028"]) == (
        b'["\\"\\\\\\b\\t\\n\\f\\r","\\u0001\\u001f","/\x7f\xc3\xa9\xe2\x80\xa8"]'
    )
    assert canonical([0.0, 0, 0.1, 1e-07, 1e16, 123456789012345678.0, -(2**63), 2**63 - 1, True, False, None]) == (
        b"[0.0,0,0.1,1e-07,1e+16,1.2345678901234568e+17,-9223372036854775808,9223372036854775807,true,false,null]"
    )
    for not_json in (float("nan"), float("inf")):
        with pytest.raises(ValueError):
            canonical({"x": not_json})
    with pytest.raises(UnicodeEncodeError):
        canonical({"x": "\ud800"})


def test_the_key_id_is_the_documented_hash_of_the_raw_public_key_in_the_root():
    raw = raw_public()
    assert documented_keyid(raw) == KEYID
    root_payload = json.loads(base64.b64decode(json.loads(vector("root.json"))["payload"]))
    assert base64.b64decode(root_payload["keys"][KEYID]["ed25519"]) == raw
    assert root_payload["roles"]["targets"] == {"keyids": [KEYID], "threshold": 1}
    assert root_payload["roles"]["root"] == {"keyids": [KEYID], "threshold": 1}
    # the root envelope is signed the same way, with payload type root
    env = json.loads(vector("root.json"))
    assert env["payload_type"] == "application/vnd.edgefleet.root+json"
    Ed25519PublicKey.from_public_bytes(raw).verify(
        base64.b64decode(env["signatures"][0]["sig"]),
        documented_signed_bytes(env["payload_type"], base64.b64decode(env["payload"])),
    )


def test_the_hex_dump_in_the_doc_is_the_vector_signed_bytes():
    text = DOC.read_text(encoding="utf-8")
    m = re.search(r"<!-- signed-bytes-hex: desired\.signed\.bin -->\n```\n(.*?)```", text, re.S)
    assert m, "docs/protocol.md lost the marked hex dump of desired.signed.bin"
    dumped = b""
    for line in m.group(1).splitlines():
        offset, rest = line.split(": ", 1)
        assert int(offset, 16) == len(dumped)
        dumped += bytes.fromhex(rest[:40].replace(" ", ""))
    assert dumped == vector("desired.signed.bin")
    for claim in (
        "application/vnd.edgefleet.desired+json",
        vector("desired.payload.json").decode(),
        raw_public().hex(),
        hashlib.sha256(raw_public()).hexdigest(),
        vector("desired.sig.bin").hex(),
        vector("desired.json").decode(),
    ):
        assert claim in text, f"docs/protocol.md does not show {claim[:60]!r}"


# --- (b) an independent openssl checks the documented bytes -----------------------------------


@pytest.fixture(scope="module")
def openssl() -> str:
    exe = shutil.which("openssl")
    if exe is None:
        pytest.skip("openssl is not installed: the independent check needs the openssl CLI (>= 3.0)")
    version = subprocess.run([exe, "version"], capture_output=True, text=True, timeout=30).stdout.strip()
    m = re.match(r"OpenSSL (\d+)\.", version)
    if not m or int(m.group(1)) < 3:
        pytest.skip(f"`openssl pkeyutl -rawin` needs OpenSSL >= 3.0, found {version!r}")
    usage = subprocess.run([exe, "pkeyutl", "-help"], capture_output=True, text=True, timeout=30)
    if "-rawin" not in usage.stdout + usage.stderr:
        pytest.skip(f"{version} has no `pkeyutl -rawin`")
    return exe


def openssl_verify(exe: str, signed: Path, sig: Path, pub: Path = VECTORS / "test_key.pub.pem"):
    return subprocess.run(
        [exe, "pkeyutl", "-verify", "-rawin", "-pubin", "-inkey", str(pub), "-sigfile", str(sig), "-in", str(signed)],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_an_independent_openssl_verifies_the_documented_signed_bytes(openssl):
    done = openssl_verify(openssl, VECTORS / "desired.signed.bin", VECTORS / "desired.sig.bin")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Signature Verified Successfully" in done.stdout


@pytest.mark.parametrize(
    "index, where",
    [
        (0, "prefix EFv1"),
        (5, "length of the type"),
        (20, "payload type"),
        (48, "length of the payload"),
        (231, "last payload byte"),
    ],
)
def test_openssl_rejects_the_signed_bytes_with_one_flipped_byte(openssl, tmp_path, index, where):
    signed = vector("desired.signed.bin")
    (tmp_path / "signed.bin").write_bytes(flipped(signed, index))
    done = openssl_verify(openssl, tmp_path / "signed.bin", VECTORS / "desired.sig.bin")
    assert done.returncode != 0, f"openssl accepted a flipped byte in the {where}"
    assert "Signature Verification Failure" in done.stdout + done.stderr


def test_openssl_rejects_the_signature_with_one_flipped_byte(openssl, tmp_path):
    (tmp_path / "sig.bin").write_bytes(flipped(vector("desired.sig.bin"), 17))
    done = openssl_verify(openssl, VECTORS / "desired.signed.bin", tmp_path / "sig.bin")
    assert done.returncode != 0


def test_openssl_derives_the_documented_key_id_from_the_test_key(openssl):
    der = subprocess.run(
        [openssl, "pkey", "-pubin", "-in", str(VECTORS / "test_key.pub.pem"), "-outform", "DER"],
        capture_output=True,
        timeout=30,
        check=True,
    ).stdout
    # SubjectPublicKeyInfo for Ed25519: the 12-byte prefix the doc gives, then the raw key
    assert der[:12] == bytes.fromhex("302a300506032b6570032100") and len(der) == 44
    assert documented_keyid(der[12:]) == KEYID
    pub_of_private = subprocess.run(
        [openssl, "pkey", "-in", str(VECTORS / "test_key.TEST-ONLY.pem"), "-pubout"],
        capture_output=True,
        timeout=30,
        check=True,
    ).stdout
    assert pub_of_private == vector("test_key.pub.pem")


def test_the_documented_by_hand_commands_verify_the_vector(openssl, tmp_path):
    for tool in ("bash", "jq", "base64", "sha256sum", "wc", "cut"):
        if shutil.which(tool) is None:
            pytest.skip(f"the by-hand commands in docs/protocol.md need {tool}")
    text = DOC.read_text(encoding="utf-8")
    m = re.search(r"<!-- verify-by-hand -->\n```sh\n(.*?)```", text, re.S)
    assert m, "docs/protocol.md lost the marked by-hand verification commands"
    for name in ("desired.json", "root.json"):
        shutil.copy(VECTORS / name, tmp_path / name)
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", m.group(1)], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.split() == [KEYID, "Signature", "Verified", "Successfully"]
    assert (tmp_path / "signed.bin").read_bytes() == vector("desired.signed.bin")
    assert (tmp_path / "sig.bin").read_bytes() == vector("desired.sig.bin")


# --- (c) protocol's verification accepts the vector, and not one flipped byte -----------------


def vector_root():
    return load_root_unverified(vector("root.json"))


def reenveloped(ptype: str, payload: bytes, sig: bytes) -> bytes:
    return documented_canonical(
        {
            "payload": base64.b64encode(payload).decode(),
            "payload_type": ptype,
            "signatures": [{"keyid": KEYID, "sig": base64.b64encode(sig).decode()}],
        }
    )


def test_protocol_verification_accepts_the_vector():
    root = vector_root()
    assert (root.version, root.expires) == (1, 4102444800)
    env = Envelope.parse(vector("desired.json"))
    assert root.verify(env, "targets", "desired") == vector("desired.payload.json")
    desired = verify_desired(vector("desired.json"), root, DEVICE, trusted_seq=0, now=ISSUED)
    assert (desired.device, desired.seq, desired.action, desired.expires) == (DEVICE, 1, "idle", EXPIRES)
    # the rebuilt envelope (documented canonical JSON) is the vector itself
    assert reenveloped(DESIRED_TYPE, vector("desired.payload.json"), vector("desired.sig.bin")) == vector(
        "desired.json"
    )


@pytest.mark.parametrize("index", [0, 1, 90, 180])
def test_protocol_verification_rejects_the_vector_with_one_flipped_payload_byte(index):
    payload = flipped(vector("desired.payload.json"), index)
    bad = reenveloped(DESIRED_TYPE, payload, vector("desired.sig.bin"))
    with pytest.raises(VerificationError) as err:
        verify_desired(bad, vector_root(), DEVICE, trusted_seq=0, now=ISSUED)
    assert err.value.reason is Reason.BAD_SIGNATURE


@pytest.mark.parametrize("index", [0, 31, 32, 63])
def test_protocol_verification_rejects_the_vector_with_one_flipped_signature_byte(index):
    bad = reenveloped(DESIRED_TYPE, vector("desired.payload.json"), flipped(vector("desired.sig.bin"), index))
    with pytest.raises(VerificationError) as err:
        verify_desired(bad, vector_root(), DEVICE, trusted_seq=0, now=ISSUED)
    assert err.value.reason is Reason.BAD_SIGNATURE


def test_a_payload_type_changed_by_one_byte_is_not_covered_by_the_signature():
    changed = DESIRED_TYPE.replace("desired", "desirec")
    env = Envelope.parse(reenveloped(changed, vector("desired.payload.json"), vector("desired.sig.bin")))
    report = vector_root().check(env, "targets")  # counts signatures without comparing the kind
    assert not report.ok and report.bad_keyids == (KEYID,)
    assert report.reason is Reason.BAD_SIGNATURE


def test_the_vector_is_valid_before_its_expiry_and_refused_from_it_on():
    root = vector_root()
    assert verify_desired(vector("desired.json"), root, DEVICE, 0, now=EXPIRES - 1).seq == 1
    for now in (EXPIRES, EXPIRES + 1):
        with pytest.raises(VerificationError) as err:
            verify_desired(vector("desired.json"), root, DEVICE, 0, now=now)
        assert err.value.reason is Reason.EXPIRED


def malleated_signature() -> bytes:
    """The vector's signature with the group order L added to S: the same point equation, but
    non-canonical; the doc says verification rejects S >= L, so there is no second valid form."""
    order = 2**252 + 27742317777372353535851937790883648493
    sig = vector("desired.sig.bin")
    s = int.from_bytes(sig[32:], "little")
    assert s < order and s + order < 2**256
    return sig[:32] + (s + order).to_bytes(32, "little")


def test_protocol_refuses_the_vector_signature_with_s_plus_the_group_order():
    bad = reenveloped(DESIRED_TYPE, vector("desired.payload.json"), malleated_signature())
    with pytest.raises(VerificationError) as err:
        verify_desired(bad, vector_root(), DEVICE, trusted_seq=0, now=ISSUED)
    assert err.value.reason is Reason.BAD_SIGNATURE


def test_openssl_refuses_the_vector_signature_with_s_plus_the_group_order(openssl, tmp_path):
    (tmp_path / "sig.bin").write_bytes(malleated_signature())
    done = openssl_verify(openssl, VECTORS / "desired.signed.bin", tmp_path / "sig.bin")
    assert done.returncode != 0
