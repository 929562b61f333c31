"""Read a signed bundle archive (``*.efb``) into memory, verifying it before anything is used.

The archive format and its checks live in :func:`protocol.bundle.read_archive`: the manifest's
signatures are verified against the pinned root (targets role) before any artifact byte is
accepted, each artifact is hashed as it streams and reads are bounded by the signed sizes. The
cloud keeps only the two artifacts it serves from: the ONNX twin and the labels. A bundle with no
twin is refused with :class:`NoTwin`, which says why from the manifest's ``model.twin``
(:mod:`protocol.twin`): the compiler withheld it, and the measured reason.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocol.bundle import Artifact, Manifest, read_archive
from protocol.errors import BadPayload, ProtocolError, Reason, VerificationError
from protocol.signing import Root
from protocol.twin import of_model

from .errors import BundleRefused, NoTwin

log = logging.getLogger(__name__)

KEEP_ROLES = ("onnx", "labels")
MAX_ARCHIVE_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True)
class VerifiedBundle:
    manifest: Manifest
    digest: str
    onnx: bytes
    labels: tuple[str, ...]
    source: str

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version


def parse_labels(data: bytes, source: str) -> tuple[str, ...]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BundleRefused(source, Reason.MALFORMED.value, f"labels are not UTF-8 ({exc})") from None
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def verify_archive(
    stream: io.BufferedIOBase | io.BytesIO, length: int, root: Root, now: int, source: str
) -> VerifiedBundle:
    """Verify and split an archive of ``length`` bytes; raise :class:`BundleRefused` with the
    protocol reason code on any failure."""
    if root.expires <= now:
        raise BundleRefused(
            source, Reason.EXPIRED.value, f"trust root v{root.version} expired at {root.expires}, now {now}"
        )
    if length > MAX_ARCHIVE_BYTES:
        raise BundleRefused(
            source, Reason.LENGTH_MISMATCH.value, f"archive is {length} bytes, limit {MAX_ARCHIVE_BYTES}"
        )
    kept: dict[str, list[bytes]] = {}

    def sink(artifact: Artifact, chunk: bytes) -> None:
        if artifact.role in KEEP_ROLES:
            kept.setdefault(artifact.name, []).append(chunk)

    try:
        manifest, digest = read_archive(stream, root, length, sink)
    except ProtocolError as exc:
        detail = exc.detail if isinstance(exc, VerificationError) else str(exc)
        raise BundleRefused(source, exc.reason.value, detail) from None
    onnx = manifest.artifact("onnx")
    if onnx is None:
        raise NoTwin(
            source, Reason.MISSING_ARTIFACT.value, manifest.name, manifest.version, no_twin_why(manifest.model)
        )
    labels_art = manifest.artifact("labels")
    labels = parse_labels(b"".join(kept.get(labels_art.name, [])), source) if labels_art else ()
    return VerifiedBundle(manifest, digest, b"".join(kept[onnx.name]), labels, source)


def no_twin_why(model: Mapping[str, Any]) -> str:
    """Why a bundle carries no ``onnx`` artifact, in the words of its manifest's twin status."""
    try:
        twin = of_model(model)
    except BadPayload as exc:
        return f"no 'onnx' artifact, and its twin status is unreadable ({exc.problem})"
    if twin is None:
        return "no 'onnx' artifact (the bundle records no twin status)"
    if twin.status == "withheld":
        return f"the compiler withheld it: {twin.reason}"
    if twin.status == "none":
        return f"none was made: {twin.reason}"
    return f"no 'onnx' artifact, though its twin status says {twin.line()}"


def read_bundle(path: Path, root: Root, now: int) -> VerifiedBundle:
    try:
        length = path.stat().st_size
        with path.open("rb") as f:
            return verify_archive(f, length, root, now, path.name)
    except OSError as exc:
        raise BundleRefused(path.name, Reason.INTERNAL.value, f"cannot read: {exc.strerror}") from None


def read_bundle_bytes(data: bytes, root: Root, now: int, source: str) -> VerifiedBundle:
    return verify_archive(io.BytesIO(data), len(data), root, now, source)
