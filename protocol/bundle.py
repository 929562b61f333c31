"""Bundle manifest and the bundle archive format.

A **bundle** is a manifest plus artifacts (int8 TFLite, Edge TPU TFLite, ONNX twin, drift
baseline, self-test vectors, eval report, labels...). Its **digest** is the SHA-256 of the
manifest's canonical payload bytes, so it addresses the content: the same artifacts, names and
metadata always give the same digest, whoever signs it.

Manifest payload (payload type ``manifest``)::

    {"_type": "manifest", "schema": 1, "name": str, "version": str, "created": unix_s,
     "model": {...free-form: inputs/outputs tensor specs, task, preprocess, labels...},
     "artifacts": [{"name": str, "role": str, "sha256": hex, "size": int}, ...],
     "requirements": {"edgetpu": "none"|"optional"|"required", "boards": [str],
                      "min_edgetpu_runtime": int|null, "min_agent": str|null},
     ...unknown fields are kept}

On disk (compiler output, hub store) a bundle is a directory holding ``manifest.json`` (the
envelope, maybe with no signatures yet) and one file per artifact, named as in the manifest.

On the wire a bundle is one **archive**: ``b"EFB1"``, the envelope length as 4 bytes big
endian, the envelope bytes, then every artifact's bytes in manifest order. Nothing in the
archive is a path, so extracting it can never write outside the target directory.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field as dc_field
from typing import Any, Protocol

from .codec import extra_fields, field, load_object, nonneg_int
from .errors import BadPayload, Reason, VerificationError
from .signing import Envelope, Root
from .topics import check_digest

MANIFEST_FILE = "manifest.json"
ARCHIVE_MAGIC = b"EFB1"
MAX_ENVELOPE_BYTES = 1024 * 1024
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

ROLES = (
    "tflite_float",  # float32 reference model
    "tflite_int8",  # full-int8 model for the CPU (LiteRT)
    "tflite_edgetpu",  # edgetpu_compiler output; needs the Edge TPU delegate
    "tflite_edgetpu_segment",  # one of N pipelined segments (``-n N``), in order; needs N TPUs
    "onnx",  # ONNX twin for the cloud fallback
    "baseline",  # drift baseline (bin edges + reference counts), JSON
    "selftest",  # self-test vectors with expected outputs, JSON
    "report",  # eval report, JSON
    "model_card",  # Markdown
    "labels",  # one label per line, index = output index
)
EDGETPU_POLICIES = ("none", "optional", "required")
_KNOWN = {"_type", "schema", "name", "version", "created", "model", "artifacts", "requirements"}


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_name(name: str, what: str = "artifact name") -> str:
    if not isinstance(name, str) or not _NAME.match(name) or name in (MANIFEST_FILE,):
        raise BadPayload(what, f"{name!r} must be 1-128 chars of [A-Za-z0-9_.-], not {MANIFEST_FILE}")
    return name


@dataclass(frozen=True)
class Artifact:
    name: str
    role: str
    sha256: str
    size: int

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role, "sha256": self.sha256, "size": self.size}

    @classmethod
    def of(cls, name: str, role: str, data: bytes) -> Artifact:
        return cls(check_name(name), role, sha256_hex(data), len(data))


@dataclass(frozen=True)
class Requirements:
    edgetpu: str = "none"
    boards: tuple[str, ...] = ()
    min_edgetpu_runtime: int | None = None
    min_agent: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "edgetpu": self.edgetpu,
            "boards": list(self.boards),
            "min_edgetpu_runtime": self.min_edgetpu_runtime,
            "min_agent": self.min_agent,
        }

    @classmethod
    def from_dict(cls, obj: dict[str, Any], what: str = "requirements") -> Requirements:
        edgetpu = field(obj, "edgetpu", str, what, "none")
        if edgetpu not in EDGETPU_POLICIES:
            raise BadPayload(what, f"edgetpu must be one of {EDGETPU_POLICIES}, got {edgetpu!r}")
        boards = field(obj, "boards", list, what, [])
        if not all(isinstance(b, str) for b in boards):
            raise BadPayload(what, f"boards must be strings, got {boards!r:.80}")
        rt = field(obj, "min_edgetpu_runtime", int, what, None, allow_none=True)
        agent = field(obj, "min_agent", str, what, None, allow_none=True)
        return cls(edgetpu, tuple(boards), rt, agent)


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    created: int
    artifacts: tuple[Artifact, ...]
    requirements: Requirements = Requirements()
    model: dict[str, Any] = dc_field(default_factory=dict, hash=False, compare=False)
    extra: dict[str, Any] = dc_field(default_factory=dict, hash=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        doc = dict(self.extra)
        doc.update(
            {
                "_type": "manifest",
                "schema": 1,
                "name": self.name,
                "version": self.version,
                "created": self.created,
                "model": self.model,
                "artifacts": [a.to_dict() for a in self.artifacts],
                "requirements": self.requirements.to_dict(),
            }
        )
        return doc

    def artifact(self, role: str) -> Artifact | None:
        for a in self.artifacts:
            if a.role == role:
                return a
        return None

    def by_name(self, name: str) -> Artifact:
        for a in self.artifacts:
            if a.name == name:
                return a
        raise VerificationError(Reason.MISSING_ARTIFACT, f"manifest lists no artifact {name!r}")

    @property
    def total_size(self) -> int:
        return sum(a.size for a in self.artifacts)


def parse_manifest(payload: bytes) -> Manifest:
    what = "manifest"
    obj = load_object(payload, what)
    if obj.get("_type") != "manifest":
        raise BadPayload(what, f"_type must be 'manifest', got {obj.get('_type')!r}")
    schema = field(obj, "schema", int, what)
    if schema != 1:
        raise BadPayload(what, f"schema {schema} is not supported (this agent speaks 1)")
    name = check_name(field(obj, "name", str, what), "bundle name")
    version = field(obj, "version", str, what)
    if not version or len(version) > 64:
        raise BadPayload(what, f"version {version!r} must be 1-64 chars")
    created = nonneg_int(obj, "created", what)
    model = field(obj, "model", dict, what, {})
    arts = []
    seen: set[str] = set()
    for raw in field(obj, "artifacts", list, what):
        if not isinstance(raw, dict):
            raise BadPayload(what, f"artifact entry {raw!r:.60} is not an object")
        aw = "manifest artifact"
        a = Artifact(
            check_name(field(raw, "name", str, aw)),
            field(raw, "role", str, aw),
            field(raw, "sha256", str, aw),
            nonneg_int(raw, "size", aw),
        )
        if a.role not in ROLES:
            raise BadPayload(what, f"artifact {a.name!r} has unknown role {a.role!r}")
        if not re.fullmatch(r"[0-9a-f]{64}", a.sha256):
            raise BadPayload(what, f"artifact {a.name!r} sha256 {a.sha256!r:.70} is not hex")
        if a.name in seen:
            raise BadPayload(what, f"artifact {a.name!r} is listed twice")
        seen.add(a.name)
        arts.append(a)
    if not arts:
        raise BadPayload(what, "lists no artifacts")
    req = Requirements.from_dict(field(obj, "requirements", dict, what, {}))
    return Manifest(name, version, created, tuple(arts), req, model, extra_fields(obj, _KNOWN))


def digest_of(env: Envelope) -> str:
    """Content address of a bundle: SHA-256 of its manifest payload bytes."""
    return sha256_hex(env.payload)


def verify_manifest(env_bytes: bytes, root: Root) -> tuple[Manifest, str]:
    """Gatekeeper: verify the envelope's signatures against ``root`` (targets role), then parse.

    Returns ``(manifest, digest)``; raises :class:`VerificationError` / :class:`BadPayload`.
    """
    env = Envelope.parse(env_bytes, "manifest envelope")
    payload = root.verify(env, "targets", "manifest")
    return parse_manifest(payload), digest_of(env)


@dataclass(frozen=True)
class BundleReport:
    """For dashboards: everything wrong with a bundle, without raising."""

    digest: str | None
    problems: tuple[tuple[Reason, str], ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def check_bundle(env_bytes: bytes, artifacts: Mapping[str, bytes], root: Root | None) -> BundleReport:
    """Report every problem with a bundle (signature, missing/extra/tampered artifacts)."""
    problems: list[tuple[Reason, str]] = []
    try:
        env = Envelope.parse(env_bytes, "manifest envelope")
        manifest = parse_manifest(env.payload)
    except BadPayload as exc:
        return BundleReport(None, ((exc.reason, str(exc)),))
    if root is not None:
        rep = root.check(env, "targets")
        if not rep.ok:
            problems.append((rep.reason, rep.describe()))
    for a in manifest.artifacts:
        data = artifacts.get(a.name)
        if data is None:
            problems.append((Reason.MISSING_ARTIFACT, f"{a.name} is missing"))
        elif len(data) != a.size:
            problems.append((Reason.LENGTH_MISMATCH, f"{a.name}: expected {a.size} bytes, got {len(data)}"))
        elif sha256_hex(data) != a.sha256:
            problems.append((Reason.HASH_MISMATCH, f"{a.name}: sha256 {sha256_hex(data)} != {a.sha256}"))
    for extra in sorted(set(artifacts) - {a.name for a in manifest.artifacts}):
        problems.append((Reason.MALFORMED, f"{extra} is not listed in the manifest"))
    return BundleReport(digest_of(env), tuple(problems))


def pack_archive(env: Envelope, artifacts: Mapping[str, bytes], only: Collection[str] | None = None) -> bytes:
    """The archive of a bundle; ``only``: the member names of a device-view archive
    (:mod:`protocol.view`), packed the same way: the same envelope, those artifacts in manifest order."""
    manifest = parse_manifest(env.payload)
    env_bytes = env.to_bytes()
    parts = [ARCHIVE_MAGIC, struct.pack(">I", len(env_bytes)), env_bytes]
    for a in members(manifest, only):
        data = artifacts.get(a.name)
        if data is None:
            raise VerificationError(Reason.MISSING_ARTIFACT, f"artifact {a.name!r} not provided")
        if len(data) != a.size or sha256_hex(data) != a.sha256:
            raise VerificationError(Reason.HASH_MISMATCH, f"artifact {a.name!r} does not match the manifest")
        parts.append(data)
    return b"".join(parts)


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


VIEW_CPU_MODELS = ("tflite_int8", "tflite_float")
VIEW_FOR_PEOPLE = ("report", "model_card")


def view_needed(manifest: Manifest) -> tuple[Artifact, ...]:
    """The artifacts a device needs, in manifest order (the rules: :mod:`protocol.view`)."""
    roles = {a.role for a in manifest.artifacts}
    drop: set[str] = set(VIEW_FOR_PEOPLE)
    if "tflite_int8" in roles:
        drop.add("tflite_float")
    if roles & set(VIEW_CPU_MODELS):
        drop.add("onnx")
    return tuple(a for a in manifest.artifacts if a.role not in drop)


def view_check_members(manifest: Manifest, members: Collection[str]) -> tuple[Artifact, ...]:
    """The manifest's artifacts named by ``members`` (manifest order), or VerificationError:
    MALFORMED for a name the manifest does not list, MISSING_ARTIFACT naming the first artifact
    the device needs (:func:`view_needed`) that ``members`` leaves out."""
    names = {a.name for a in manifest.artifacts}
    for m in members:
        if m not in names:
            raise VerificationError(Reason.MALFORMED, f"device view names {m!r}, which the manifest does not list")
    for a in view_needed(manifest):
        if a.name not in members:
            raise VerificationError(
                Reason.MISSING_ARTIFACT, f"device view lacks {a.name!r} ({a.role}), which this device needs"
            )
    return tuple(a for a in manifest.artifacts if a.name in members)


def members(manifest: Manifest, only: Collection[str] | None) -> tuple[Artifact, ...]:
    """The artifacts an archive holds: all (``only`` None), or those named by ``only`` (a
    device-view archive, checked by :func:`view_check_members`: MALFORMED for a name the
    manifest does not list, MISSING_ARTIFACT naming one the device needs)."""
    if only is None:
        return manifest.artifacts
    return view_check_members(manifest, only)


def read_archive(
    stream: Readable,
    root: Root,
    length: int,
    sink: Callable[[Artifact, bytes], None],
    block: int = 1 << 20,
    only: Collection[str] | None = None,
) -> tuple[Manifest, str]:
    """Verify and split an archive read from ``stream`` (``length`` bytes, already hash-checked
    against the signed desired document by the caller). ``only``: it is a device-view archive
    holding these artifacts (named in the signed desired document), see :func:`members`.

    The manifest signature is checked before any artifact byte is handed to ``sink``; each
    artifact is hashed as it streams and a mismatch raises before the next one starts. Reads are
    bounded by the signed sizes; trailing bytes are an error.
    """
    head = stream.read(8)
    if len(head) < 8 or head[:4] != ARCHIVE_MAGIC:
        raise VerificationError(Reason.MALFORMED, f"archive does not start with {ARCHIVE_MAGIC!r}")
    (env_len,) = struct.unpack(">I", head[4:])
    if env_len > MAX_ENVELOPE_BYTES or 8 + env_len > length:
        raise VerificationError(Reason.LENGTH_MISMATCH, f"manifest length {env_len} is out of bounds")
    env_bytes = stream.read(env_len)
    manifest, digest = verify_manifest(env_bytes, root)
    held = members(manifest, only)
    expected = 8 + env_len + sum(a.size for a in held)
    if expected != length:
        raise VerificationError(Reason.LENGTH_MISMATCH, f"archive is {length} bytes, manifest accounts for {expected}")
    for a in held:
        h = hashlib.sha256()
        left = a.size
        while left:
            buf = stream.read(min(block, left))
            if not buf:
                raise VerificationError(Reason.LENGTH_MISMATCH, f"{a.name} truncated, {left} bytes short")
            h.update(buf)
            sink(a, buf)
            left -= len(buf)
        if h.hexdigest() != a.sha256:
            raise VerificationError(Reason.HASH_MISMATCH, f"{a.name}: sha256 {h.hexdigest()} != {a.sha256}")
    if stream.read(1):
        raise VerificationError(Reason.LENGTH_MISMATCH, "archive has bytes past the last artifact")
    return manifest, digest


@dataclass(frozen=True)
class ChunkPlan:
    """How an archive is cut for transfer. Chunk hashes travel in the signed desired document."""

    size: int
    sha256: str
    chunk_size: int
    chunks: tuple[str, ...]

    @classmethod
    def of(cls, archive: bytes, chunk_size: int = 64 * 1024) -> ChunkPlan:
        if chunk_size < 1024:
            raise BadPayload("chunk size", f"{chunk_size} is below the 1024-byte minimum")
        hashes = tuple(sha256_hex(archive[i : i + chunk_size]) for i in range(0, len(archive), chunk_size))
        return cls(len(archive), sha256_hex(archive), chunk_size, hashes)

    @classmethod
    def from_fields(cls, obj: dict[str, Any], what: str, empty_ok: bool = False, count_ok: bool = False) -> ChunkPlan:
        """The plan in a wire object's ``size``, ``sha256``, ``chunk_size`` and ``chunks`` fields
        (a bundle reference, a device view, a delta), checked: a chunk hash per ``chunk_size``
        bytes, each a digest; ``empty_ok``: a zero-byte plan is allowed (no chunks); ``count_ok``:
        any number of chunk hashes (a plan by reference before it is resolved: protocol.planref)."""
        chunks = field(obj, "chunks", list, what)
        size = nonneg_int(obj, "size", what)
        chunk_size = nonneg_int(obj, "chunk_size", what)
        if chunk_size < 1024:
            raise BadPayload(what, f"chunk_size {chunk_size} is below 1024")
        if (size == 0 and not empty_ok) or (not count_ok and len(chunks) != -(-size // chunk_size)):
            raise BadPayload(what, f"{len(chunks)} chunk hashes for {size} bytes at {chunk_size}")
        for c in chunks:
            check_digest(c)
        return cls(size, check_digest(field(obj, "sha256", str, what)), chunk_size, tuple(chunks))

    def chunk_length(self, index: int) -> int:
        if not 0 <= index < len(self.chunks):
            raise VerificationError(Reason.MALFORMED, f"chunk index {index} outside 0..{len(self.chunks) - 1}")
        return min(self.chunk_size, self.size - index * self.chunk_size)

    def check_chunk(self, index: int, data: bytes) -> None:
        want = self.chunk_length(index)
        if len(data) != want:
            raise VerificationError(Reason.LENGTH_MISMATCH, f"chunk {index}: expected {want} bytes, got {len(data)}")
        got = sha256_hex(data)
        if got != self.chunks[index]:
            raise VerificationError(Reason.HASH_MISMATCH, f"chunk {index}: sha256 {got} != {self.chunks[index]}")


def artifact_names(artifacts: Iterable[Artifact]) -> list[str]:
    return [a.name for a in artifacts]
