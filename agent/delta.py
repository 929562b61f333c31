"""Delta updates, agent side: patch the active slot into the desired bundle's archive.

Rules (the updater is the shell that carries them out; :func:`choose` is the decision):

1. A desired install may name a delta (``Desired.delta``, signed with the document). It is used
   only when the active slot is the delta's base, it is made towards the archive being fetched
   (a ``view`` delta for a device-view archive, from the base's device view: protocol.view), its
   algorithm is known, and nothing of the archive is on disk yet (a download resumed in full
   stays in full). Otherwise the full chunks are fetched, and why is reported (:class:`Fallback`).
2. The delta is fetched like an archive (:class:`agent.download.Download`: resumable, every chunk
   checked against the signed delta plan before it is written) from its retained topics.
3. Complete: the base's artifacts are read from the active slot and checked against the base's
   signed hashes (:func:`protocol.delta.reference`), patched, and every chunk of the result is
   offered to the archive download, which writes only chunks that match the *target's* signed
   chunk hashes. Staging then verifies the signature and every per-file hash, as for a full
   download: nothing unverified is ever installed.
4. Any chunk of the result that does not match, a patch that fails, a damaged base, or no delta
   chunk for ``stall_s``: fall back; only the chunks still missing are fetched in full.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from protocol import delta as pdelta
from protocol.bundle import MANIFEST_FILE, Artifact, Manifest
from protocol.errors import Reason, VerificationError
from protocol.topics import delta_filter

from .download import Download

try:
    import zstandard
except ImportError:  # pragma: no cover - an agent installed without it fetches full chunks
    zstandard = None  # type: ignore[assignment]


class Fallback(str, Enum):
    """Why an install that named a delta fetched full chunks instead (reported, logged)."""

    BASE_NOT_ACTIVE = "base_not_active"  # the active slot is not the bundle the delta starts from
    UNKNOWN_ALGO = "unknown_algo"
    RESUMED = "resumed"  # part of the full archive was already on disk
    BASE_DAMAGED = "base_damaged"  # the active slot's files no longer match their signed hashes
    PATCH_FAILED = "patch_failed"  # the delta does not apply to the base
    MISMATCH = "mismatch"  # the patched archive differs from the target's signed chunk hashes
    STALLED = "stalled"  # no delta chunk arrived for stall_s
    VIEW_MISMATCH = "view_mismatch"  # a delta between device views for a full archive, or the reverse


def choose(
    delta: pdelta.DeltaRef | None, active: str | None, archive_bytes_on_disk: int, view: bool = False
) -> Fallback | None:
    """None: fetch the delta. A Fallback: fetch full chunks (only meaningful when a delta was named).
    ``view``: the archive being fetched is the bundle's device view (protocol.view)."""
    if delta is None:
        return None
    if delta.base != active:
        return Fallback.BASE_NOT_ACTIVE
    if delta.view != view:
        return Fallback.VIEW_MISMATCH
    if delta.algo not in pdelta.ALGOS or zstandard is None:
        return Fallback.UNKNOWN_ALGO
    if archive_bytes_on_disk:
        return Fallback.RESUMED
    return None


def apply(algo: str, delta: bytes, parts: list[bytes], size: int) -> bytes:
    """Patch the base ``parts`` (:func:`protocol.delta.base_parts`) with ``delta`` into exactly
    ``size`` bytes, or raise VerificationError.

    Not a verification: the caller checks the result against the target's signed hashes."""
    if algo not in pdelta.ALGOS or zstandard is None:
        raise VerificationError(Reason.MALFORMED, f"delta algorithm {algo!r} is not one of {pdelta.ALGOS}")
    if algo == pdelta.ALGO:
        out = _unzstd(delta, b"".join(parts[1:]), size)
    elif pdelta.algo_of(delta) != algo:  # the signed name and the bytes' magic must agree
        magic = pdelta.MEMBERS_MAGIC if algo == pdelta.ALGO_MEMBERS else pdelta.MEMBERS2_MAGIC
        raise VerificationError(Reason.MALFORMED, f"delta does not start with {magic!r}, the magic of {algo!r}")
    else:
        made: list[bytes] = []
        done = 0
        for r in pdelta.unpack_members(delta, len(parts)):
            prev = parts[r.base] if r.base != pdelta.NO_BASE else b""
            if r.kind == pdelta.PATCH:  # dictionary: the base part, then the member just made
                m = _unzstd(r.frame, prev + (made[-1] if made else b""), size - done)
            elif r.kind == pdelta.ENVELOPE:  # the manifest payload raw, rebuilt into the signed envelope
                m = pdelta.envelope_head(_unzstd(r.frame, pdelta.payload_of(prev), size - done))
            elif r.kind == pdelta.SUB:  # byte-wise difference (zstd-members-2)
                m = pdelta.add_bytes(prev, _unzstd(r.frame, b"", size - done))
            else:
                x = _unzstd(r.frame, b"", size - done)
                if len(x) != len(prev):
                    raise VerificationError(
                        Reason.MALFORMED, f"XOR record of {len(x)} bytes for a {len(prev)}-byte base part"
                    )
                m = (int.from_bytes(prev, "little") ^ int.from_bytes(x, "little")).to_bytes(len(x), "little")
            made.append(m)
            done += len(m)
        out = b"".join(made)
    if len(out) != size:
        raise VerificationError(Reason.LENGTH_MISMATCH, f"patched archive is {len(out)} bytes, signed {size}")
    return out


def _unzstd(frame: bytes, ref: bytes, limit: int) -> bytes:
    assert zstandard is not None
    d = zstandard.ZstdCompressionDict(ref, dict_type=zstandard.DICT_TYPE_RAWCONTENT) if ref else None
    try:
        return zstandard.ZstdDecompressor(dict_data=d, max_window_size=1 << 31).decompress(
            frame, max_output_size=max(0, limit)
        )
    except zstandard.ZstdError as exc:
        raise VerificationError(Reason.MALFORMED, f"delta does not apply: {exc}") from None


@dataclass(frozen=True)
class Patched:
    written: int  # chunks of the target archive the patch produced and that matched
    rejected: int  # chunks that did not match the target's signed hashes (fetched in full)


def patch_into(ref: pdelta.DeltaRef, delta: bytes, base_dir: Path, base: Manifest, target: Download) -> Patched:
    """Patch the base slot with ``delta`` into ``target`` (chunk by chunk, each checked by
    :meth:`Download.put` against the target's signed hash). Raises VerificationError when the
    base is damaged (reason on the error) or the delta does not apply."""

    def read(a: Artifact) -> bytes:
        try:
            return (base_dir / a.name).read_bytes()
        except OSError:
            return b""  # reference() refuses it with the artifact's name

    try:  # a zstd-members-1 record may start from it; wrong bytes only fail to apply
        head = pdelta.unsigned((base_dir / MANIFEST_FILE).read_bytes())
    except OSError:
        head = b""
    parts = pdelta.base_parts(base, head, read)
    archive = apply(ref.algo, delta, parts, target.plan.size)
    written = rejected = 0
    cs = target.plan.chunk_size
    for i in range(target.total):
        try:
            if target.put(i, archive[i * cs : (i + 1) * cs]):
                written += 1
        except VerificationError:
            rejected += 1
    return Patched(written, rejected)


class DeltaFetch:
    """One delta being fetched: its resumable download and its retained-topic filter."""

    def __init__(self, downloads: Path, target_archive: str, ref: pdelta.DeltaRef) -> None:
        self.ref = ref
        self.directory = downloads / f"{target_archive}.delta"
        self.filter = delta_filter(target_archive, ref.base)
        self.download = Download(self.directory, ref.plan)
        self.received_bytes = 0
        self.last_chunk = 0.0

    def data(self) -> bytes:
        self.download.verify()
        return self.download.path.read_bytes()

    def remove(self) -> None:
        self.download.remove()
        shutil.rmtree(self.directory, ignore_errors=True)
