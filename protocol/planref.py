"""A bundle's chunk plan by reference: published once per archive, named by hash per device.

A desired document names the chunks of the archive a device must fetch: one SHA-256 per 64 KiB,
~4.4 kB of hex for a 4 MB bundle, in every device's signed document. At 1,000 devices those
lists were 1.6 bundle copies of hub egress (docs/scale.md). An agent that announces
:data:`FEATURE` in its inventory gets instead ``"plan": <sha256 of the plan message>`` in the
bundle reference (``BundleRef.plan_ref``) and reads the list once from

    ef/v1/bundle/{archive sha256}/plan   hub -> agents, retained

The plan message is canonical JSON (``{"v": 1, "sha256", "size", "chunk_size", "chunks"}``);
it is not signed itself: the agent hashes the payload bytes it received and accepts them only if
they are the hash the *signed* document names (:func:`resolve`), so a broker or a device that
could publish on the topic can delay an install, never change a byte of it. Then each chunk is
checked against its hash before it is written, as with an inline plan. Agents that did not
announce the feature keep the inline list.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

from .bundle import ChunkPlan
from .codec import canonical, field, load_object
from .errors import BadPayload, Reason, VerificationError

FEATURE = "chunk_plan_ref"  # in Inventory.features: this agent reads chunk plans by reference
MAX_PLAN_BYTES = 8 * 1024 * 1024  # 100,000 chunk hashes (the fetch request's own bound) fit


def plan_bytes(plan: ChunkPlan) -> bytes:
    """The plan message for ``plan``: the same bytes every time (canonical JSON)."""
    return canonical(
        {"v": 1, "sha256": plan.sha256, "size": plan.size, "chunk_size": plan.chunk_size, "chunks": list(plan.chunks)}
    )


def max_plan_bytes(size: int, chunk_size: int) -> int:
    """An upper bound on the plan message of a ``size``-byte archive cut at ``chunk_size`` (an
    agent checks it against the MQTT packet size it accepts before it waits for the plan)."""
    return 200 + 67 * -(-size // chunk_size) + 3 * len(str(size))


@functools.lru_cache(maxsize=64)
def plan_ref(plan: ChunkPlan) -> str:
    """What a desired document names: the SHA-256 of :func:`plan_bytes`. Kept for the last 64
    plans: a rollout names the same plan in every device's document (7 % of issuing 10,000)."""
    return hashlib.sha256(plan_bytes(plan)).hexdigest()


def stub(obj: dict[str, Any], what: str) -> ChunkPlan:
    """The plan of a reference that names its chunks by hash: size, sha256 and chunk size, no
    chunk hashes yet (:func:`resolved` says False until :func:`resolve` fills them)."""
    return ChunkPlan.from_fields({**obj, "chunks": []}, what, empty_ok=True, count_ok=True)


def resolved(plan: ChunkPlan) -> bool:
    return len(plan.chunks) == -(-plan.size // plan.chunk_size)


def resolve(stub_plan: ChunkPlan, ref: str, payload: bytes) -> ChunkPlan:
    """``payload`` (a plan message) checked against the signed ``ref`` and the signed size,
    archive hash and chunk size; raises :class:`VerificationError` naming what differs."""
    got = hashlib.sha256(payload).hexdigest()
    if got != ref:
        raise VerificationError(Reason.HASH_MISMATCH, f"chunk plan sha256 {got} != signed {ref}")
    try:
        obj = load_object(payload, "chunk plan", MAX_PLAN_BYTES)
        field(obj, "v", int, "chunk plan")
        plan = ChunkPlan.from_fields(obj, "chunk plan", empty_ok=True)
    except BadPayload as exc:  # signed bytes that do not parse: the hub's bug, named
        raise VerificationError(Reason.MALFORMED, f"signed chunk plan {ref[:12]}: {exc}") from None
    if (plan.sha256, plan.size, plan.chunk_size) != (stub_plan.sha256, stub_plan.size, stub_plan.chunk_size):
        raise VerificationError(
            Reason.MALFORMED,
            f"chunk plan {ref[:12]} describes archive {plan.sha256[:12]} ({plan.size} bytes at {plan.chunk_size}), "
            f"the document {stub_plan.sha256[:12]} ({stub_plan.size} bytes at {stub_plan.chunk_size})",
        )
    return plan
