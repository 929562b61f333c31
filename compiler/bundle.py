"""Stage 10: the one place that writes a bundle directory (layout in docs/protocol.md).

Rules: every artifact is listed in the manifest with its role, size and SHA-256; the manifest
is an :class:`~protocol.signing.Envelope` of payload type ``manifest``, unsigned unless a key
is given (signing is the hub's job; ``--sign-key`` is for standalone use). Nothing is
half-written: files go to a hidden temp directory next to ``out`` that is renamed to ``out``
only when complete, and an existing ``out`` is refused.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol.bundle import MANIFEST_FILE, ROLES, Artifact, Manifest, Requirements, check_bundle, digest_of
from protocol.errors import BadPayload
from protocol.signing import Envelope, SigningKey, seal

from .errors import BadInput


@dataclass(frozen=True)
class BundleFile:
    name: str
    role: str
    data: bytes


@dataclass(frozen=True)
class BundleSpec:
    name: str
    version: str
    created: int
    model: dict[str, Any] = field(default_factory=dict)
    requirements: Requirements = Requirements()


def manifest_of(spec: BundleSpec, files: Sequence[BundleFile]) -> Manifest:
    names = [f.name for f in files]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate artifact names in {names}")
    for f in files:
        if f.role not in ROLES:
            raise ValueError(f"artifact {f.name!r} has unknown role {f.role!r}")
    try:
        arts = tuple(Artifact.of(f.name, f.role, f.data) for f in files)
    except BadPayload as exc:
        raise BadInput("bundle", str(exc)) from None
    return Manifest(spec.name, spec.version, spec.created, arts, spec.requirements, spec.model)


def envelope_of(manifest: Manifest, sign_key: SigningKey | None = None) -> Envelope:
    return seal("manifest", manifest.to_dict(), [sign_key] if sign_key else [])


def refuse_existing(out: Path) -> None:
    if out.exists() or out.is_symlink():
        raise BadInput(out, "output directory already exists; choose a new path or remove it")


def write_bundle(out: Path, spec: BundleSpec, files: Iterable[BundleFile], sign_key: SigningKey | None = None) -> str:
    """Write the bundle directory ``out`` atomically; return its digest."""
    files = list(files)
    refuse_existing(out)
    env = envelope_of(manifest_of(spec, files), sign_key)
    report = check_bundle(env.to_bytes(), {f.name: f.data for f in files}, None)
    if not report.ok:  # a bug here, not bad input: our own bundle must check clean
        raise RuntimeError(f"bundle does not check: {report.problems}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        for f in files:
            (tmp / f.name).write_bytes(f.data)
        (tmp / MANIFEST_FILE).write_bytes(env.to_bytes())
        os.chmod(tmp, 0o755)
        refuse_existing(out)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return digest_of(env)


@dataclass(frozen=True)
class BundleDir:
    path: Path
    envelope: Envelope
    manifest: Manifest
    digest: str
    problems: tuple[str, ...]


def read_bundle(path: Path) -> BundleDir:
    """Read and check a bundle directory (for ``inspect`` and tests); never raises on tamper,
    reports it in ``problems``."""
    from protocol.bundle import parse_manifest

    mf = path / MANIFEST_FILE
    if not mf.is_file():
        raise BadInput(path, f"not a bundle directory (no {MANIFEST_FILE})")
    raw = mf.read_bytes()
    try:
        env = Envelope.parse(raw, str(mf))
        manifest = parse_manifest(env.payload)
    except BadPayload as exc:
        raise BadInput(mf, str(exc)) from None
    arts = {p.name: p.read_bytes() for p in path.iterdir() if p.is_file() and p.name != MANIFEST_FILE}
    rep = check_bundle(raw, arts, None)
    return BundleDir(path, env, manifest, digest_of(env), tuple(msg for _, msg in rep.problems))
