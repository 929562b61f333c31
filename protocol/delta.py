"""Delta updates: a bundle archive sent as a patch against the device's active bundle.

The **reference** a delta is made against is the base bundle's artifacts, concatenated in the
base manifest's order (:func:`reference`): never its manifest envelope, which the hub may sign
again after a key rotation (same digest, other bytes). A device holds exactly these bytes in its
active slot, each already checked against the base's signed hashes.

A **delta** (algorithm ``zstd-patch-1``) is one zstd frame of the *target archive* compressed
with the reference as a raw-content dictionary, level 19, checksummed, with a window covering
reference and target (:func:`window_log`): ``zstd --patch-from`` in library form (ADR 0014 says
why this and not bsdiff or an int8-aware diff). The hub makes it (``hub.deltas``), the agent
applies it (``agent.delta``), both with the ``zstandard`` package, which this package does not
import (it depends on the standard library and cryptography only). Applying reads at most
the signed archive size; the result is worth nothing until the caller has checked it against the
target's signed chunk hashes and archive sha256, and staged it through the same signature and
per-file hash checks as a full download.

On the wire a delta is described by :class:`DeltaRef`, inside the signed desired document
(``"delta"``): the base bundle digest, the algorithm, and the delta's own chunk plan (size,
sha256, chunk hashes), so every delta chunk is checked before it is written. Its chunks are
retained on ``ef/v1/bundle/{target archive}/delta/{base digest}/chunk/{i}``, once per
(base, target), fanned out to every device on that base.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field as dc_field
from typing import Any

from .bundle import Artifact, ChunkPlan, Manifest
from .codec import extra_fields, field, nonneg_int
from .errors import BadPayload, Reason, VerificationError
from .topics import check_digest

ALGO = "zstd-patch-1"
ALGOS = (ALGO,)
LEVEL = 19  # measured in ADR 0014: the hub builds a delta once per (base, target)
_KNOWN = {"base", "algo", "size", "sha256", "chunk_size", "chunks"}


@dataclass(frozen=True)
class DeltaRef:
    """Where a device finds the delta from bundle ``base`` to the desired bundle, and its hashes."""

    base: str  # digest of the bundle the delta is made against
    algo: str
    plan: ChunkPlan  # the delta's bytes, cut for transfer
    extra: dict[str, Any] = dc_field(default_factory=dict, hash=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        doc = dict(self.extra)
        doc.update(
            {
                "base": self.base,
                "algo": self.algo,
                "size": self.plan.size,
                "sha256": self.plan.sha256,
                "chunk_size": self.plan.chunk_size,
                "chunks": list(self.plan.chunks),
            }
        )
        return doc

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> DeltaRef:
        what = "delta reference"
        algo = field(obj, "algo", str, what)
        size = nonneg_int(obj, "size", what)
        chunk_size = nonneg_int(obj, "chunk_size", what)
        if chunk_size < 1024:
            raise BadPayload(what, f"chunk_size {chunk_size} is below 1024")
        chunks = field(obj, "chunks", list, what)
        if size == 0 or len(chunks) != -(-size // chunk_size):
            raise BadPayload(what, f"{len(chunks)} chunk hashes for {size} bytes at {chunk_size}")
        for c in chunks:
            check_digest(c)
        plan = ChunkPlan(size, check_digest(field(obj, "sha256", str, what)), chunk_size, tuple(chunks))
        # an unknown algorithm is kept, not refused: the agent falls back to full chunks for it
        return cls(check_digest(field(obj, "base", str, what)), algo, plan, extra_fields(obj, _KNOWN))


def reference(manifest: Manifest, read: Callable[[Artifact], bytes]) -> bytes:
    """The bytes a delta against this bundle is made against: its artifacts in manifest order.

    ``read`` returns one artifact's bytes; each is checked against the signed size and hash here,
    so a device whose active slot was damaged refuses (MISSING_ARTIFACT / HASH_MISMATCH) rather
    than patching from the wrong bytes."""
    from .bundle import sha256_hex

    parts = []
    for a in manifest.artifacts:
        data = read(a)
        if len(data) != a.size or sha256_hex(data) != a.sha256:
            raise VerificationError(Reason.HASH_MISMATCH, f"base artifact {a.name} differs from its signed hash")
        parts.append(data)
    return b"".join(parts)


def window_log(n: int) -> int:
    """A zstd window that covers the reference and the target (zstd's --patch-from does the same)."""
    return max(10, min(31, (max(1, n) - 1).bit_length()))
