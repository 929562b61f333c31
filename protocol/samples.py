"""Hard examples on the wire: one low-confidence input, cut in chunks (agent -> hub), and the
hub's receipt of the chunks it stored (hub -> agent). Issue 18 part 4.

Topics: ``ef/v1/dev/{device}/sample`` (agent -> hub, QoS 1, never retained) carries one
:class:`SampleChunk`; ``ef/v1/dev/{device}/sampled`` (hub -> agent, QoS 1) one :class:`Receipt`.

Chunk (unsigned: the broker's ACL lets only the device itself write its topics)::

    {"v": 1, "device": "<id>", "id": "<sample id, 8-64 of [A-Za-z0-9_-]>",
     "bundle": "<digest of the bundle that answered>", "ts": unix_s (when it was captured),
     "index": i, "count": n, "size": total bytes, "sha256": "<of the whole input>",
     "content_type": one of CONTENT_TYPES, "data": "<base64 of bytes [i*CHUNK_BYTES, ...)>",
     "meta": {"confidence": 0..1, "measure": "...", "threshold": 0..1, "answer": {...}}}

Every chunk carries the whole head (bundle, size, sha256, meta: a few hundred bytes), so the hub
can store chunks in any order and needs no state but the chunks themselves. Chunk ``i`` holds
``CHUNK_BYTES`` bytes except the last; ``count`` is ``ceil(size / CHUNK_BYTES)`` (at least 1).

Receipt::

    {"v": 1, "device": "<id>", "id": "<sample id>", "have": [indices stored], "done": bool,
     "refused": "<why the hub will never store it, e.g. a bundle it does not know>" (or "")}

``done``: the hub holds the whole input, checked against ``sha256``, stored once under
(device, id): the agent deletes its copy. A chunk of a sample already done is answered ``done``
again and stored nothing (exactly once). ``refused``: the agent drops its copy and counts it.
``have`` lets an agent that lost its in-memory state (a reconnect, a restart) resend only the
chunks the hub lacks (resumable).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import re
from dataclasses import dataclass, field as dc_field
from typing import Any

from .codec import canonical, extra_fields, field, int_list, load_object, nonneg_int
from .errors import BadPayload
from .topics import check_device_id, check_digest

SCHEMA = 1
CHUNK_BYTES = 48 * 1024  # raw bytes per chunk: ~64 KiB base64, well under the 256 KiB message cap
MAX_SAMPLE_BYTES = 8 * 2**20  # a hard example bigger than this is not taken
MAX_META_BYTES = 16 * 1024
MAX_CHUNK_MESSAGE = CHUNK_BYTES * 4 // 3 + MAX_META_BYTES + 4096
CONTENT_TYPES = {
    "image/jpeg": "jpg",
    "image/png": "png",
    "image/bmp": "bmp",
    "image/gif": "gif",
    "image/webp": "webp",
    "application/x-npy": "npy",  # a binary tensor request, saved with numpy.save
    "application/json": "json",  # a JSON {"inputs": ...} request
}
_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
_SHA = re.compile(r"^[0-9a-f]{64}$")


def check_sample_id(sid: str) -> str:
    if not isinstance(sid, str) or not _ID.match(sid):
        raise BadPayload("sample id", f"{sid!r} must be 8-64 chars of [A-Za-z0-9_-]")
    return sid


def chunk_count(size: int) -> int:
    return max(1, math.ceil(size / CHUNK_BYTES))


@dataclass(frozen=True)
class SampleChunk:
    device: str
    id: str
    bundle: str
    ts: int
    index: int
    count: int
    size: int
    sha256: str
    content_type: str
    data: bytes = dc_field(repr=False)
    meta: dict[str, Any] = dc_field(default_factory=dict, hash=False)
    extra: dict[str, Any] = dc_field(default_factory=dict, hash=False, compare=False)  # a newer peer's fields

    def to_bytes(self) -> bytes:
        return canonical(
            {
                **self.extra,
                "v": SCHEMA,
                "device": self.device,
                "id": self.id,
                "bundle": self.bundle,
                "ts": self.ts,
                "index": self.index,
                "count": self.count,
                "size": self.size,
                "sha256": self.sha256,
                "content_type": self.content_type,
                "data": base64.b64encode(self.data).decode(),
                "meta": self.meta,
            }
        )


def split(
    device: str, sid: str, bundle: str, ts: int, content_type: str, data: bytes, meta: dict[str, Any]
) -> list[SampleChunk]:
    """One input -> its chunks (checked as :func:`parse_sample` would check them)."""
    if len(data) > MAX_SAMPLE_BYTES:
        raise BadPayload("hard example", f"{len(data)} bytes exceeds {MAX_SAMPLE_BYTES}")
    if content_type not in CONTENT_TYPES:
        raise BadPayload("hard example", f"content type {content_type!r} is not one of {sorted(CONTENT_TYPES)}")
    if len(canonical(meta)) > MAX_META_BYTES:
        raise BadPayload("hard example", f"meta of {len(canonical(meta))} bytes exceeds {MAX_META_BYTES}")
    digest = hashlib.sha256(data).hexdigest()
    n = chunk_count(len(data))
    return [
        SampleChunk(
            check_device_id(device),
            check_sample_id(sid),
            check_digest(bundle),
            ts,
            i,
            n,
            len(data),
            digest,
            content_type,
            data[i * CHUNK_BYTES : (i + 1) * CHUNK_BYTES],
            meta,
        )
        for i in range(n)
    ]


def parse_sample(payload: bytes) -> SampleChunk:
    """Bytes off ``ef/v1/dev/{device}/sample`` -> :class:`SampleChunk`, or BadPayload naming the problem."""
    what = "hard example chunk"
    obj = load_object(payload, what, MAX_CHUNK_MESSAGE)
    if field(obj, "v", int, what) < 1:
        raise BadPayload(what, f"schema version {obj['v']} is invalid")
    size = nonneg_int(obj, "size", what)
    if size > MAX_SAMPLE_BYTES:
        raise BadPayload(what, f"size {size} exceeds {MAX_SAMPLE_BYTES}")
    count, index = nonneg_int(obj, "count", what), nonneg_int(obj, "index", what)
    if count != chunk_count(size):
        raise BadPayload(what, f"count {count} does not fit size {size} in chunks of {CHUNK_BYTES}")
    if index >= count:
        raise BadPayload(what, f"index {index} is not below count {count}")
    ctype = field(obj, "content_type", str, what)
    if ctype not in CONTENT_TYPES:
        raise BadPayload(what, f"content type {ctype[:60]!r} is not one of {sorted(CONTENT_TYPES)}")
    sha = field(obj, "sha256", str, what)
    if not _SHA.match(sha):
        raise BadPayload(what, f"sha256 {sha[:80]!r} is not 64 lowercase hex chars")
    try:
        data = base64.b64decode(field(obj, "data", str, what), validate=True)
    except (binascii.Error, ValueError):
        raise BadPayload(what, "data is not base64") from None
    want = min(CHUNK_BYTES, size - index * CHUNK_BYTES)
    if len(data) != want:
        raise BadPayload(what, f"chunk {index} of a {size}-byte input holds {len(data)} bytes, expected {want}")
    meta = field(obj, "meta", dict, what, {})
    if len(canonical(meta)) > MAX_META_BYTES:
        raise BadPayload(what, f"meta exceeds {MAX_META_BYTES} bytes")
    return SampleChunk(
        device=check_device_id(field(obj, "device", str, what)),
        id=check_sample_id(field(obj, "id", str, what)),
        bundle=check_digest(field(obj, "bundle", str, what)),
        ts=nonneg_int(obj, "ts", what),
        index=index,
        count=count,
        size=size,
        sha256=sha,
        content_type=ctype,
        data=data,
        meta=meta,
        extra=extra_fields(obj, _SAMPLE_KNOWN),
    )


@dataclass(frozen=True)
class Receipt:
    device: str
    id: str
    have: tuple[int, ...] = ()
    done: bool = False
    refused: str = ""
    extra: dict[str, Any] = dc_field(default_factory=dict, hash=False, compare=False)  # a newer peer's fields

    def to_bytes(self) -> bytes:
        doc = {
            **self.extra,
            "v": SCHEMA,
            "device": self.device,
            "id": self.id,
            "have": list(self.have),
            "done": self.done,
        }
        return canonical({**doc, "refused": self.refused} if self.refused else doc)


_RECEIPT_KNOWN = frozenset({"v", "device", "id", "have", "done", "refused"})
_SAMPLE_KNOWN = frozenset(
    {"v", "device", "id", "bundle", "ts", "index", "count", "size", "sha256", "content_type", "data", "meta"}
)


def parse_receipt(payload: bytes) -> Receipt:
    what = "hard example receipt"
    obj = load_object(payload, what, 64 * 1024)
    if field(obj, "v", int, what) < 1:
        raise BadPayload(what, f"schema version {obj['v']} is invalid")
    have = int_list(obj, "have", what, [])
    return Receipt(
        check_device_id(field(obj, "device", str, what)),
        check_sample_id(field(obj, "id", str, what)),
        tuple(sorted(set(have))),
        field(obj, "done", bool, what, False),
        field(obj, "refused", str, what, "")[:500],
        extra_fields(obj, _RECEIPT_KNOWN),
    )


__all__ = [
    "CHUNK_BYTES",
    "CONTENT_TYPES",
    "MAX_SAMPLE_BYTES",
    "Receipt",
    "SampleChunk",
    "check_sample_id",
    "chunk_count",
    "parse_receipt",
    "parse_sample",
    "split",
]
