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

A second algorithm, ``zstd-members-1`` (ADR 0014, measured by ``python -m bench delta``), diffs
the archive **member by member** (:func:`split_archive`: the archive head with the manifest
envelope, then each artifact). Its bytes are ``EFM1`` then records, one per target member in
archive order, each ``kind u8 | base u16 | length u32 | zstd frame`` (big-endian,
:func:`pack_members` / :func:`unpack_members`). ``base`` names a part of the base bundle
(:func:`base_parts`: 0 its manifest envelope stripped of signatures, :func:`unsigned`, which a
re-signing does not change; ``i`` its ``i``-th artifact; :data:`NO_BASE` none). Kind
:data:`PATCH`: the frame decompresses with the base part followed by the member just before
it as a raw-content dictionary (the ONNX twin follows the float tflite and repeats weights of it;
two members at most: bounded work and memory on both sides). Kind :data:`XOR`: the frame
decompresses to exactly the base part's length, XORed byte for byte with it (the int8-aware
diff: a tensor that did not change XORs to zeros; zstd cannot express a small change to every
byte compactly). The archive is the records' outputs
concatenated. The hub ships whichever of the two algorithms is smaller.

``zstd-members-2`` (magic ``EFM2``) adds kind :data:`SUB`: the frame decompresses to exactly
the base part's length and is added to it byte by byte mod 256 (:func:`add_bytes`; the hub
stores :func:`sub_bytes`). A fine-tune moves most changed int8 weights by one quantization step:
as a difference that is 0x01 or 0xFF, as an XOR one of eight bit patterns (measured on the digits
fine-tune: int8 member 6,853 B by SUB against 8,621 B by XOR). An agent that knows it lists the
name in its inventory's ``features`` (:data:`ANNOUNCED`); the hub ships it only to those, and a
members delta without a SUB record keeps the ``EFM1`` magic.

On the wire a delta is described by :class:`DeltaRef`, inside the signed desired document
(``"delta"``): the base bundle digest, the algorithm, and the delta's own chunk plan (size,
sha256, chunk hashes), so every delta chunk is checked before it is written. ``"view": true``
says the delta turns the base's device view (:func:`protocol.view.needed` of the base manifest:
its reference and base parts are those artifacts only, :func:`view_manifest`) into the target's
device-view archive (``BundleRef.view``); a device-view agent's slot holds these whether it was
installed from a view or in full. Its chunks are
retained on ``ef/v1/bundle/{target archive}/delta/{base digest}/chunk/{i}``, once per
(base, target), fanned out to every device on that base.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field as dc_field, replace
from typing import Any

from .bundle import ARCHIVE_MAGIC, Artifact, ChunkPlan, Manifest, parse_manifest, view_needed
from .codec import canonical, extra_fields, field, load_object
from .errors import BadPayload, Reason, VerificationError
from .signing import Envelope
from .topics import check_digest

ALGO = "zstd-patch-1"
ALGO_MEMBERS = "zstd-members-1"
ALGO_MEMBERS2 = "zstd-members-2"  # zstd-members-1 plus SUB records
ALGOS = (ALGO, ALGO_MEMBERS, ALGO_MEMBERS2)
# shipped only to agents that list the name in Inventory.features (the first two every agent knows)
ANNOUNCED = (ALGO_MEMBERS2,)
MEMBERS_MAGIC = b"EFM1"
MEMBERS2_MAGIC = b"EFM2"
PATCH, XOR, ENVELOPE, SUB = 0, 1, 2, 3  # record kinds; SUB only in zstd-members-2
NO_BASE = 0xFFFF
_RECORD = struct.Struct(">BHI")
LEVEL = 19  # measured in ADR 0014: the hub builds a delta once per (base, target)
_KNOWN = {"base", "algo", "size", "sha256", "chunk_size", "chunks", "view"}


@dataclass(frozen=True)
class DeltaRef:
    """Where a device finds the delta from bundle ``base`` to the desired bundle, and its hashes."""

    base: str  # digest of the bundle the delta is made against
    algo: str
    plan: ChunkPlan  # the delta's bytes, cut for transfer
    view: bool = False  # from the base's device view to the target's (protocol.view.needed, both)
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
        if self.view:  # absent when false: deltas between full archives keep their bytes
            doc["view"] = True
        return doc

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> DeltaRef:
        what = "delta reference"
        algo = field(obj, "algo", str, what)
        plan = ChunkPlan.from_fields(obj, what)
        view = field(obj, "view", bool, what, False)
        # an unknown algorithm is kept, not refused: the agent falls back to full chunks for it
        return cls(check_digest(field(obj, "base", str, what)), algo, plan, view, extra_fields(obj, _KNOWN))


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


def view_manifest(manifest: Manifest) -> Manifest:
    """``manifest`` with only the artifacts of its device view: what a ``view`` delta's
    :func:`reference` and :func:`base_parts` are made from."""
    return replace(manifest, artifacts=view_needed(manifest))


def window_log(n: int) -> int:
    """A zstd window that covers the reference and the target (zstd's --patch-from does the same)."""
    return max(10, min(31, (max(1, n) - 1).bit_length()))


@dataclass(frozen=True)
class Record:
    """One member of a ``zstd-members-1`` delta: how to make it, from which base part."""

    kind: int  # PATCH, XOR or ENVELOPE
    base: int  # index into base_parts(), or NO_BASE
    frame: bytes  # one zstd frame


def algo_of(delta: bytes) -> str:
    """The algorithm of delta bytes (a ``zstd-members-*`` delta starts with its magic)."""
    return {MEMBERS_MAGIC: ALGO_MEMBERS, MEMBERS2_MAGIC: ALGO_MEMBERS2}.get(delta[:4], ALGO)


def pack_members(records: list[Record]) -> bytes:
    """``zstd-members-1`` bytes, or ``zstd-members-2`` when a record is a SUB."""
    out = [MEMBERS2_MAGIC if any(r.kind == SUB for r in records) else MEMBERS_MAGIC]
    for r in records:
        out += [_RECORD.pack(r.kind, r.base, len(r.frame)), r.frame]
    return b"".join(out)


def unpack_members(delta: bytes, parts: int) -> list[Record]:
    """The records of a ``zstd-members-1`` or ``-2`` delta; refuses a bad magic, kind (SUB only
    in ``-2``), base index (there are ``parts`` base parts) or length, or trailing bytes (MALFORMED)."""
    if delta[:4] not in (MEMBERS_MAGIC, MEMBERS2_MAGIC):
        raise VerificationError(Reason.MALFORMED, f"delta does not start with {MEMBERS_MAGIC!r} or {MEMBERS2_MAGIC!r}")
    kinds = (PATCH, XOR, ENVELOPE, SUB) if delta[:4] == MEMBERS2_MAGIC else (PATCH, XOR, ENVELOPE)
    out, pos = [], 4
    while pos < len(delta):
        if pos + _RECORD.size > len(delta):
            raise VerificationError(Reason.MALFORMED, f"delta record at byte {pos} is cut short")
        kind, base, n = _RECORD.unpack_from(delta, pos)
        pos += _RECORD.size
        bad_base = (
            (base != NO_BASE and base >= parts)
            or (kind in (XOR, SUB) and base == NO_BASE)
            or (kind == ENVELOPE and base)
        )
        if kind not in kinds or bad_base:
            raise VerificationError(Reason.MALFORMED, f"delta record kind {kind} base {base} (of {parts} parts)")
        if pos + n > len(delta):
            raise VerificationError(Reason.MALFORMED, f"delta record of {n} bytes at byte {pos} runs past the end")
        out.append(Record(kind, base, delta[pos : pos + n]))
        pos += n
    return out


def _masks(n: int) -> tuple[int, int]:
    return int.from_bytes(b"\x80" * n, "little"), int.from_bytes(b"\x7f" * n, "little")


def sub_bytes(new: bytes, old: bytes) -> bytes:
    """Byte by byte ``(new - old) mod 256`` (same lengths): what a SUB record carries. A weight
    moved by one quantization step is 0x01 or 0xFF whatever its value; its XOR is one of eight
    bit patterns. Word-parallel on Python integers (no carry crosses a byte), no numpy."""
    if len(new) != len(old):
        raise VerificationError(Reason.MALFORMED, f"SUB of {len(new)} bytes against {len(old)}")
    hi, lo = _masks(len(new))
    x, y = int.from_bytes(new, "little"), int.from_bytes(old, "little")
    return (((x | hi) - (y & lo)) ^ ((x ^ y ^ hi) & hi)).to_bytes(len(new), "little")


def add_bytes(old: bytes, diff: bytes) -> bytes:
    """Byte by byte ``(old + diff) mod 256``: undoes :func:`sub_bytes`."""
    if len(old) != len(diff):
        raise VerificationError(Reason.MALFORMED, f"SUB record of {len(diff)} bytes for a {len(old)}-byte base part")
    hi, lo = _masks(len(old))
    x, y = int.from_bytes(old, "little"), int.from_bytes(diff, "little")
    return (((x & lo) + (y & lo)) ^ ((x ^ y) & hi)).to_bytes(len(old), "little")


def unsigned(envelope: bytes) -> bytes:
    """A manifest envelope without its signatures (what a re-signing leaves as it was); b"" for
    bytes that are not an envelope (a delta record starting from it then does not apply)."""
    try:
        env = Envelope.parse(envelope)
    except BadPayload:
        return b""
    return Envelope(env.payload_type, env.payload, ()).to_bytes()


def base_parts(manifest: Manifest, head: bytes, read: Callable[[Artifact], bytes]) -> list[bytes]:
    """What a ``zstd-members-1`` record can start from: ``head`` (the base's :func:`unsigned`
    envelope), then its artifacts in manifest order, each checked like :func:`reference`."""
    ref = reference(manifest, read)
    parts, pos = [head], 0
    for a in manifest.artifacts:
        parts.append(ref[pos : pos + a.size])
        pos += a.size
    return parts


def split_archive(archive: bytes) -> list[tuple[str, bytes]]:
    """An archive's members in order: ``("", head)`` (magic, length, manifest envelope), then
    ``(name, bytes)`` per artifact (of its device view, :func:`view_manifest`, when the archive's
    length is the view's). For the hub, which holds archives it built and verified."""
    if archive[:4] != ARCHIVE_MAGIC or len(archive) < 8:
        raise VerificationError(Reason.MALFORMED, f"archive does not start with {ARCHIVE_MAGIC!r}")
    (n,) = struct.unpack(">I", archive[4:8])
    manifest = parse_manifest(Envelope.parse(archive[8 : 8 + n]).payload)
    if 8 + n + manifest.total_size != len(archive):  # a device-view archive holds its view's members
        view = view_manifest(manifest)
        manifest = view if 8 + n + view.total_size == len(archive) else manifest
    out, pos = [("", archive[: 8 + n])], 8 + n
    for a in manifest.artifacts:
        out.append((a.name, archive[pos : pos + a.size]))
        pos += a.size
    if pos != len(archive):
        raise VerificationError(Reason.LENGTH_MISMATCH, f"archive is {len(archive)} bytes, members account for {pos}")
    return out


def envelope_content(head: bytes) -> bytes | None:
    """An archive head (magic, length, signed manifest envelope) as an ENVELOPE record's content:
    the canonical JSON of its payload type and signatures, a newline, the raw payload (base64 in
    the envelope hides the payload's likeness to the base's). None when :func:`envelope_head`
    would not give back exactly these bytes."""
    try:
        env = Envelope.parse(head[8:])
    except BadPayload:
        return None
    content = canonical({"payload_type": env.payload_type, "signatures": list(env.signatures)}) + b"\n" + env.payload
    try:
        return content if envelope_head(content) == head else None
    except VerificationError:
        return None


def envelope_head(content: bytes) -> bytes:
    """The archive head an ENVELOPE record's content stands for (MALFORMED when it is not one)."""
    top, sep, payload = content.partition(b"\n")
    try:
        obj = load_object(top, "envelope record")
        sigs = field(obj, "signatures", list, "envelope record")
        env = Envelope(field(obj, "payload_type", str, "envelope record"), payload, tuple(sigs)).to_bytes()
    except BadPayload as exc:
        raise VerificationError(Reason.MALFORMED, f"delta envelope record: {exc}") from None
    if not sep:
        raise VerificationError(Reason.MALFORMED, "delta envelope record has no payload")
    return ARCHIVE_MAGIC + struct.pack(">I", len(env)) + env


def payload_of(unsigned_envelope: bytes) -> bytes:
    """The payload inside base part 0 (an ENVELOPE record's dictionary); b"" when there is none."""
    try:
        return Envelope.parse(unsigned_envelope).payload
    except BadPayload:
        return b""
