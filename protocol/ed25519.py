"""Ed25519 public keys that verify without importing pyca/cryptography when they can.

Why: verifying is all a device does with keys, and importing ``cryptography`` maps its Rust
module with its own statically linked OpenSSL: ~9 MB more resident in the agent for good
(issue 16 part 7, docs/agent.md "Footprint"). The OpenSSL that Python's own ``ssl`` and
``hashlib`` load (``libcrypto``, already mapped by the MQTT client's TLS support) verifies Ed25519
too (OpenSSL >= 1.1.1): :class:`PublicKey` calls it through ctypes, and falls back to
``cryptography`` where that library is not there or cannot do it (no OpenSSL found, LibreSSL,
or a build without Ed25519). Both are OpenSSL's ``ED25519_verify``; tests check them against
each other and against RFC 8032's vectors.

The backend is chosen once, on first use, and only after it passes a known-answer check (an
RFC 8032 signature verifies, the same one with a flipped bit does not), so a libcrypto with
unexpected behaviour can only make us fall back, never accept a bad signature.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from dataclasses import dataclass
from typing import Any

RAW_LEN = 32
SIG_LEN = 64
_NID_ED25519 = 1087  # OpenSSL's EVP_PKEY_ED25519 (obj_mac.h), stable since 1.1.1

# RFC 8032 section 7.1, TEST 2 (one-byte message)
_KAT_PUB = bytes.fromhex("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c")
_KAT_MSG = bytes.fromhex("72")
_KAT_SIG = bytes.fromhex(
    "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
    "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"
)


class _LibCrypto:
    """Ed25519 verify through the process's OpenSSL ``libcrypto`` (ctypes)."""

    def __init__(self, lib: Any) -> None:
        p, sz = ctypes.c_void_p, ctypes.c_size_t
        self.lib = lib
        lib.EVP_PKEY_new_raw_public_key.restype = p
        lib.EVP_PKEY_new_raw_public_key.argtypes = [ctypes.c_int, p, ctypes.c_char_p, sz]
        lib.EVP_PKEY_free.argtypes = [p]
        lib.EVP_MD_CTX_new.restype = p
        lib.EVP_MD_CTX_free.argtypes = [p]
        lib.EVP_DigestVerifyInit.argtypes = [p, p, p, p, p]
        lib.EVP_DigestVerify.argtypes = [p, ctypes.c_char_p, sz, ctypes.c_char_p, sz]
        lib.ERR_clear_error.argtypes = []

    def verify(self, raw: bytes, sig: bytes, msg: bytes) -> bool:
        lib = self.lib
        pkey = lib.EVP_PKEY_new_raw_public_key(_NID_ED25519, None, raw, len(raw))
        if not pkey:
            lib.ERR_clear_error()
            return False
        ctx = lib.EVP_MD_CTX_new()
        try:
            if not ctx or lib.EVP_DigestVerifyInit(ctx, None, None, None, pkey) != 1:
                return False
            return bool(lib.EVP_DigestVerify(ctx, sig, len(sig), msg, len(msg)) == 1)
        finally:
            if ctx:
                lib.EVP_MD_CTX_free(ctx)
            lib.EVP_PKEY_free(pkey)
            lib.ERR_clear_error()  # a failed verify leaves an error on this thread's queue


class _Cryptography:
    """Ed25519 verify through pyca/cryptography (imported on first use)."""

    def verify(self, raw: bytes, sig: bytes, msg: bytes) -> bool:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        try:
            Ed25519PublicKey.from_public_bytes(raw).verify(sig, msg)
        except (InvalidSignature, ValueError):
            return False
        return True


_backend: _LibCrypto | _Cryptography | None = None


def _known_answer_ok(b: _LibCrypto | _Cryptography) -> bool:
    bad = bytes([_KAT_SIG[0] ^ 1]) + _KAT_SIG[1:]
    return b.verify(_KAT_PUB, _KAT_SIG, _KAT_MSG) and not b.verify(_KAT_PUB, bad, _KAT_MSG)


def _libcrypto() -> _LibCrypto | None:
    if sys.platform == "win32":
        return None
    import ssl  # noqa: F401 - loads the libcrypto Python itself uses, so we add no second one

    name = ctypes.util.find_library("crypto")
    if name is None:
        return None
    try:
        b = _LibCrypto(ctypes.CDLL(name))
        return b if _known_answer_ok(b) else None
    except (OSError, AttributeError):  # not found, or an OpenSSL/LibreSSL without these calls
        return None


def backend() -> str:
    """Which library verifies: ``"libcrypto"`` or ``"cryptography"`` (chosen on first use)."""
    return type(_choose()).__name__.lstrip("_").lower()


def _choose() -> _LibCrypto | _Cryptography:
    global _backend
    if _backend is None:
        _backend = _libcrypto() or _Cryptography()
    return _backend


@dataclass(frozen=True)
class PublicKey:
    """A raw 32-byte Ed25519 public key. ValueError if ``raw`` is not 32 bytes."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != RAW_LEN:
            raise ValueError(f"an Ed25519 public key is {RAW_LEN} bytes, got {len(self.raw)}")

    def verify(self, sig: bytes, msg: bytes) -> bool:
        """True iff ``sig`` is this key's Ed25519 signature over ``msg``."""
        return len(sig) == SIG_LEN and _choose().verify(self.raw, sig, msg)
