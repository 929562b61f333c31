"""protocol.ed25519: the libcrypto (ctypes) verifier agrees with pyca/cryptography and RFC 8032,
and the agent's verify path never imports cryptography."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import ed25519

# RFC 8032 section 7.1: TEST 1 (empty message) and TEST 3 (two bytes)
RFC8032 = [
    (
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
        "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac"
        "18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
]

BACKENDS = [ed25519._Cryptography()]
if ed25519._libcrypto() is not None:
    BACKENDS.append(ed25519._libcrypto())  # type: ignore[arg-type]


@pytest.mark.parametrize("b", BACKENDS, ids=lambda b: type(b).__name__)
@pytest.mark.parametrize("pub,msg,sig", RFC8032)
def test_rfc8032_vectors_verify_and_any_flipped_bit_fails(b: object, pub: str, msg: str, sig: str) -> None:
    raw, m, s = bytes.fromhex(pub), bytes.fromhex(msg), bytes.fromhex(sig)
    assert b.verify(raw, s, m)  # type: ignore[attr-defined]
    for i in (0, 31, 32, 63):
        assert not b.verify(raw, s[:i] + bytes([s[i] ^ 0x40]) + s[i + 1 :], m)  # type: ignore[attr-defined]
    assert not b.verify(raw, s, m + b"x")  # type: ignore[attr-defined]
    assert not b.verify(bytes([raw[0] ^ 1]) + raw[1:], s, m)  # type: ignore[attr-defined]


def test_libcrypto_and_cryptography_agree_on_random_keys_and_forgeries() -> None:
    lib = ed25519._libcrypto()
    if lib is None:
        pytest.skip("no usable libcrypto here: cryptography verifies (the fallback)")
    ref = ed25519._Cryptography()
    for n in range(40):
        key = Ed25519PrivateKey.generate()
        raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        msg = os.urandom(n * 7)
        sig = key.sign(msg)
        cases = [
            (sig, msg),
            (sig, msg + b"\0"),
            (sig[:32] + os.urandom(32), msg),
            (os.urandom(64), msg),
            (sig[:63], msg),
            (sig + b"\0", msg),
            (b"\xff" * 64, msg),  # S >= L: non-canonical
        ]
        for s, m in cases:
            assert lib.verify(raw, s, m) == ref.verify(raw, s, m), (n, s.hex(), m.hex())
    # a 32-byte string that is not a curve point: both refuse, neither raises
    bad_point = bytes.fromhex("02" + "00" * 31)
    assert lib.verify(bad_point, sig, msg) is False and ref.verify(bad_point, sig, msg) is False


def test_public_key_refuses_a_wrong_length_and_checks_signature_length() -> None:
    with pytest.raises(ValueError, match="32 bytes, got 31"):
        ed25519.PublicKey(b"\0" * 31)
    pub, msg, sig = (bytes.fromhex(x) for x in RFC8032[1])
    key = ed25519.PublicKey(pub)
    assert key.verify(sig, msg)
    assert not key.verify(sig[:-1], msg) and not key.verify(sig + b"\0", msg)


def test_loading_a_root_and_verifying_a_manifest_imports_no_cryptography(tmp_path: object) -> None:
    """The agent's side (parse the pinned root, check a signed document) runs without it: the
    ~9 MB it maps stay out of the device process (docs/agent.md Footprint)."""
    from protocol.signing import Envelope, SigningKey, root_document, seal

    rk, tk = SigningKey.generate(), SigningKey.generate()
    root = seal("root", root_document(1, 2**40, [rk], 1, [tk]), [rk]).to_bytes()
    doc = seal("manifest", {"name": "m"}, [tk]).to_bytes()
    env = Envelope.parse(doc)
    forged = Envelope(env.payload_type, b'{"name":"n"}', env.signatures).to_bytes()  # same signature, other bytes
    code = (
        "import sys\n"
        "from protocol.signing import Envelope, load_root_unverified\n"
        "from protocol.errors import ProtocolError\n"
        f"root = load_root_unverified({root!r})\n"
        f"assert root.verify(Envelope.parse({doc!r}), 'targets', 'manifest')\n"
        "try:\n"
        f"    root.verify(Envelope.parse({forged!r}), 'targets', 'manifest')\n"
        "    raise SystemExit('forged signature accepted')\n"
        "except ProtocolError:\n"
        "    pass\n"
        "from protocol import ed25519\n"
        "print(ed25519.backend(), 'cryptography' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    if out[0] == "cryptography":
        pytest.skip("no usable libcrypto here: the fallback imports cryptography, as it must")
    assert out == ["libcrypto", "False"]
