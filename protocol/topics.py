"""MQTT topics of protocol v1, as value objects.

Layout (prefix ``ef/v1``)::

    ef/v1/dev/{device}/status      agent -> hub   retained; last will says offline
    ef/v1/dev/{device}/desired     hub -> agent   retained; signed "what you should run"
    ef/v1/dev/{device}/report      agent -> hub   install progress / results with reason codes
    ef/v1/dev/{device}/telemetry   agent -> hub   periodic window: latency sketch, drift, counts
    ef/v1/dev/{device}/ack         hub -> agent   application acks of telemetry and report sequence
                                   numbers (QoS 0: a lost one means a resend, stored once)
    ef/v1/dev/{device}/fetch       agent -> hub   "these chunks of bundle B never arrived"
    ef/v1/dev/{device}/command     hub -> agent   signed remote-diagnostics command (QoS 1, not retained)
    ef/v1/dev/{device}/result      agent -> hub   the answer to one command (protocol.commands)
    ef/v1/dev/{device}/sample      agent -> hub   one chunk of a hard example (protocol.samples)
    ef/v1/dev/{device}/sampled     hub -> agent   the chunks of a hard example the hub stored
    ef/v1/dev/{device}/probe       never subscribed, never published: an agent UNSUBSCRIBEs it to
                                   learn whether the broker still queues anything for it
                                   (agent.stall); the broker answers, nobody else sees it
    ef/v1/bundle/{digest}/chunk/{i} hub -> agents retained; one copy per bundle fans out to all
    ef/v1/bundle/{digest}/delta/{base}/chunk/{i}  hub -> agents  retained; the delta from bundle
                                   {base} to archive {digest} (protocol.delta), once per pair
    ef/v1/bundle/{digest}/plan     hub -> agents  retained; archive {digest}'s chunk hashes, named
                                   by hash in the signed documents of agents that read plans by
                                   reference (protocol.planref)
    ef/v1/bundle/{digest}/manifest  hub -> agents retained; the bundle's manifest signed again
                                   after the hub's online key changed (agents refresh the
                                   manifests of the slots they hold: same payload, same digest)
    ef/v1/root                     hub -> agents  retained; newest signed trust root (rotation)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from .errors import BadPayload

PREFIX = "ef/v1"
_DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


class Kind(str, Enum):
    STATUS = "status"
    DESIRED = "desired"
    REPORT = "report"
    TELEMETRY = "telemetry"
    ACK = "ack"
    FETCH = "fetch"
    CHUNK = "chunk"
    DELTA = "delta"
    MANIFEST = "manifest"
    PLAN = "plan"
    ROOT = "root"
    COMMAND = "command"
    RESULT = "result"
    SAMPLE = "sample"
    SAMPLED = "sampled"


DEVICE_KINDS = (
    Kind.STATUS,
    Kind.DESIRED,
    Kind.REPORT,
    Kind.TELEMETRY,
    Kind.ACK,
    Kind.FETCH,
    Kind.COMMAND,
    Kind.RESULT,
    Kind.SAMPLE,
    Kind.SAMPLED,
)


def check_device_id(device: str) -> str:
    """Return ``device`` if it is a valid device id (it becomes a topic level), else raise."""
    if not isinstance(device, str) or not _DEVICE_ID.match(device):
        raise BadPayload("device id", f"{device!r} must be 1-64 chars of [A-Za-z0-9_.-]")
    return device


def check_digest(digest: str) -> str:
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise BadPayload("bundle digest", f"{digest!r} is not 64 lowercase hex chars")
    return digest


@dataclass(frozen=True)
class Topic:
    """A parsed protocol topic. Build with the class methods; parse with :meth:`parse`."""

    kind: Kind
    device: str | None = None
    digest: str | None = None
    index: int | None = None
    base: str | None = None  # DELTA: the bundle the delta is made against

    def __str__(self) -> str:
        if self.kind in DEVICE_KINDS:
            return f"{PREFIX}/dev/{self.device}/{self.kind.value}"
        if self.kind is Kind.CHUNK:
            return f"{PREFIX}/bundle/{self.digest}/chunk/{self.index}"
        if self.kind is Kind.DELTA:
            return f"{PREFIX}/bundle/{self.digest}/delta/{self.base}/chunk/{self.index}"
        if self.kind is Kind.MANIFEST:
            return f"{PREFIX}/bundle/{self.digest}/manifest"
        if self.kind is Kind.PLAN:
            return f"{PREFIX}/bundle/{self.digest}/plan"
        return f"{PREFIX}/root"

    @classmethod
    def for_device(cls, kind: Kind, device: str) -> Topic:
        if kind not in DEVICE_KINDS:
            raise BadPayload("topic kind", f"{kind.value!r} is not a per-device topic")
        return cls(kind, device=check_device_id(device))

    @classmethod
    def chunk(cls, digest: str, index: int) -> Topic:
        if not isinstance(index, int) or index < 0:
            raise BadPayload("chunk index", f"{index!r} must be an int >= 0")
        return cls(Kind.CHUNK, digest=check_digest(digest), index=index)

    @classmethod
    def delta(cls, digest: str, base: str, index: int) -> Topic:
        """Chunk ``index`` of the delta from bundle ``base`` to archive ``digest``."""
        if not isinstance(index, int) or index < 0:
            raise BadPayload("chunk index", f"{index!r} must be an int >= 0")
        return cls(Kind.DELTA, digest=check_digest(digest), index=index, base=check_digest(base))

    @classmethod
    def manifest(cls, digest: str) -> Topic:
        return cls(Kind.MANIFEST, digest=check_digest(digest))

    @classmethod
    def plan(cls, archive: str) -> Topic:
        """The chunk plan of archive ``archive`` (protocol.planref)."""
        return cls(Kind.PLAN, digest=check_digest(archive))

    @classmethod
    def root(cls) -> Topic:
        return cls(Kind.ROOT)

    @classmethod
    def parse(cls, topic: str) -> Topic:
        parts = topic.split("/")
        if parts[:2] != PREFIX.split("/"):
            raise BadPayload("topic", f"{topic!r} does not start with {PREFIX}/")
        rest = parts[2:]
        if len(rest) == 3 and rest[0] == "dev":
            try:
                kind = Kind(rest[2])
            except ValueError:
                raise BadPayload("topic", f"{topic!r}: unknown kind {rest[2]!r}") from None
            if kind not in DEVICE_KINDS:
                raise BadPayload("topic", f"{topic!r}: {kind.value!r} is not a device topic")
            return cls(kind, device=check_device_id(rest[1]))
        if len(rest) == 4 and rest[0] == "bundle" and rest[2] == "chunk":
            if not rest[3].isdigit():
                raise BadPayload("topic", f"{topic!r}: chunk index {rest[3]!r} is not a number")
            return cls.chunk(rest[1], int(rest[3]))
        if len(rest) == 6 and rest[0] == "bundle" and rest[2] == "delta" and rest[4] == "chunk":
            if not rest[5].isdigit():
                raise BadPayload("topic", f"{topic!r}: chunk index {rest[5]!r} is not a number")
            return cls.delta(rest[1], rest[3], int(rest[5]))
        if len(rest) == 3 and rest[0] == "bundle" and rest[2] == "manifest":
            return cls.manifest(rest[1])
        if len(rest) == 3 and rest[0] == "bundle" and rest[2] == "plan":
            return cls.plan(rest[1])
        if rest == ["root"]:
            return cls.root()
        raise BadPayload("topic", f"{topic!r} matches no protocol v1 topic")


def device_filter(kind: Kind, device: str = "+") -> str:
    """Subscription filter for one kind, for one device or (default) all devices."""
    return f"{PREFIX}/dev/{device}/{kind.value}"


def probe_filter(device: str) -> str:
    """The filter a device never holds: its UNSUBSCRIBE is a round trip to the broker (agent.stall)."""
    return f"{PREFIX}/dev/{check_device_id(device)}/probe"


def chunk_filter(digest: str) -> str:
    return f"{PREFIX}/bundle/{check_digest(digest)}/chunk/+"


def delta_filter(digest: str, base: str) -> str:
    return f"{PREFIX}/bundle/{check_digest(digest)}/delta/{check_digest(base)}/chunk/+"
