"""Content-addressed bundle files.

Layout of ``STORE/``::

    bundles/{digest}/manifest.json    signed envelope (hub's online key)
    bundles/{digest}/{artifact}       one file per artifact, named as in the manifest
    archives/{archive_sha256}.efb     the signed archive agents download in chunks (and the
                                      cloud fallback reads); device views' archives too (hub.views)
    views/{archive_sha256}.json       a bundle's device view plan, by its full archive (hub.views)
    deltas/{target}-{base}[.m2].zst   deltas, by target archive and base digest (hub.deltas)

Upload format (``POST /api/v1/bundles``): the body is a bundle **archive** exactly as
:func:`protocol.bundle.pack_archive` writes it (``EFB1`` + envelope length + envelope +
artifacts in manifest order). Signatures in the uploaded envelope are ignored: the hub checks
the artifacts against the manifest and signs with its own online key.
"""

from __future__ import annotations

import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocol import codec
from protocol.baseline import Baseline, parse as parse_baseline
from protocol.bundle import (
    ARCHIVE_MAGIC,
    MANIFEST_FILE,
    MAX_ENVELOPE_BYTES,
    ChunkPlan,
    Manifest,
    check_bundle,
    digest_of,
    pack_archive,
    parse_manifest,
    sha256_hex,
)
from protocol.errors import ProtocolError
from protocol.signing import Envelope, SigningKey

from .errors import Invalid, NotFound

log = logging.getLogger(__name__)

# The most chunks one archive may be cut into. A device downloading it holds them all queued in
# its broker session at once (the wildcard's retained replay), and a broker drops what its
# per-session queue cannot hold: Mosquitto's max_queued_messages and EMQX's
# mqtt.max_mqueue_len both default to 1,000, so a bigger archive lost its tail on every device
# and came back chunk by chunk through repair requests (docs/scale.md, 2026-12-06). The hub's
# edgefleet.conf sets the queue for this many chunks (hub.credentials.max_queued_messages);
# 16,384 chunks of the default 64 KiB are 1 GiB.
MAX_ARCHIVE_CHUNKS = 16_384


def split_archive(data: bytes) -> tuple[Envelope, dict[str, bytes]]:
    """Unsigned or signed archive bytes -> (envelope, artifacts by name). Raises Invalid."""
    if len(data) < 8 or data[:4] != ARCHIVE_MAGIC:
        raise Invalid("bundle archive", f"does not start with {ARCHIVE_MAGIC!r} ({len(data)} bytes)")
    (env_len,) = struct.unpack(">I", data[4:8])
    if env_len > MAX_ENVELOPE_BYTES or 8 + env_len > len(data):
        raise Invalid("bundle archive", f"manifest length {env_len} is out of bounds for {len(data)} bytes")
    try:
        env = Envelope.parse(data[8 : 8 + env_len], "manifest envelope")
        manifest = parse_manifest(env.payload)
    except ProtocolError as exc:
        raise Invalid("bundle archive", str(exc)) from None
    expected = 8 + env_len + manifest.total_size
    if expected != len(data):
        raise Invalid("bundle archive", f"{len(data)} bytes, the manifest accounts for {expected}")
    arts: dict[str, bytes] = {}
    pos = 8 + env_len
    for a in manifest.artifacts:
        arts[a.name] = data[pos : pos + a.size]
        pos += a.size
    return env, arts


def read_bundle_dir(directory: Path) -> tuple[Envelope, dict[str, bytes]]:
    """A compiler output directory -> (envelope, artifacts). Raises Invalid."""
    mf = directory / MANIFEST_FILE
    if not mf.is_file():
        raise Invalid("bundle directory", f"{directory} has no {MANIFEST_FILE}")
    try:
        env = Envelope.parse(mf.read_bytes(), str(mf))
    except ProtocolError as exc:
        raise Invalid("bundle directory", str(exc)) from None
    arts = {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file() and p.name != MANIFEST_FILE}
    return env, arts


@dataclass(frozen=True)
class StoredBundle:
    digest: str
    manifest: Manifest
    envelope: bytes
    plan: ChunkPlan

    def summary(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "name": self.manifest.name,
            "version": self.manifest.version,
            "archive_sha256": self.plan.sha256,
            "size": self.plan.size,
        }


class BundleStore:
    def __init__(self, root: Path, chunk_size: int = 64 * 1024) -> None:
        self.root = root
        self.chunk_size = chunk_size
        self._baselines: dict[str, Baseline | None] = {}  # by digest: a bundle's files never change
        (root / "bundles").mkdir(parents=True, exist_ok=True)
        (root / "archives").mkdir(parents=True, exist_ok=True)

    def put(self, env: Envelope, artifacts: dict[str, bytes], key: SigningKey) -> StoredBundle:
        """Check the bundle, sign it, write it. Same digest twice writes nothing new.

        The hub signs the manifest in canonical JSON whatever bytes were uploaded (pretty-printed
        by hand, say): one manifest, one signed byte string, one digest."""
        try:
            payload = codec.canonical(codec.loads(env.payload, "manifest"))
        except (ProtocolError, ValueError) as exc:
            raise Invalid("bundle", f"manifest: {exc}") from None
        unsigned = Envelope(env.payload_type, payload, ())
        report = check_bundle(unsigned.to_bytes(), artifacts, None)
        if not report.ok:
            problems = "; ".join(f"{r.value}: {msg}" for r, msg in report.problems)
            raise Invalid("bundle", problems)
        if not env.payload_type.endswith(".manifest+json"):
            raise Invalid("bundle", f"payload type {env.payload_type!r} is not a manifest")
        digest = digest_of(unsigned)
        manifest = parse_manifest(unsigned.payload)
        folder = self.root / "bundles" / digest
        if (folder / MANIFEST_FILE).exists():
            return self.get(digest)
        signed = unsigned.add_signature(key)
        archive = pack_archive(signed, artifacts)
        plan = ChunkPlan.of(archive, self.chunk_size)
        if len(plan.chunks) > MAX_ARCHIVE_CHUNKS:
            raise Invalid(
                "bundle",
                f"its archive of {plan.size} bytes is {len(plan.chunks)} chunks of {self.chunk_size} bytes, over "
                f"the {MAX_ARCHIVE_CHUNKS} a device's broker session is set to queue (max_queued_messages); "
                "a bigger --chunk-size cuts it into fewer",
            )
        tmp = folder.with_name(digest + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        for a in manifest.artifacts:
            (tmp / a.name).write_bytes(artifacts[a.name])
        (tmp / MANIFEST_FILE).write_bytes(signed.to_bytes())
        arch = self.archive_path(plan.sha256)
        arch_tmp = arch.with_name(arch.name + ".tmp")
        arch_tmp.write_bytes(archive)
        os.replace(arch_tmp, arch)
        if folder.exists():  # a crashed earlier attempt
            for p in folder.iterdir():
                p.unlink()
            folder.rmdir()
        os.replace(tmp, folder)
        return StoredBundle(digest, manifest, signed.to_bytes(), plan)

    def resign(self, digest: str, key: SigningKey) -> StoredBundle:
        """Sign the stored manifest again with ``key`` alone (same payload: same digest) and
        write the archive that carries it: the hub's online key changed and devices trust only
        the new one. Returns the bundle with its new archive plan."""
        folder = self.root / "bundles" / digest
        old = self.get(digest)
        env = Envelope.parse(old.envelope)
        signed = Envelope(env.payload_type, env.payload, ()).add_signature(key)
        if signed.to_bytes() == old.envelope:
            return old
        arts = {a.name: (folder / a.name).read_bytes() for a in old.manifest.artifacts}
        archive = pack_archive(signed, arts)
        plan = ChunkPlan.of(archive, self.chunk_size)
        for path, data in ((self.archive_path(plan.sha256), archive), (folder / MANIFEST_FILE, signed.to_bytes())):
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return StoredBundle(digest, old.manifest, signed.to_bytes(), plan)

    def get(self, digest: str) -> StoredBundle:
        folder = self.root / "bundles" / digest
        mf = folder / MANIFEST_FILE
        if not mf.exists():
            raise NotFound("bundle", digest)
        env_bytes = mf.read_bytes()
        env = Envelope.parse(env_bytes)
        manifest = parse_manifest(env.payload)
        arts = {a.name: (folder / a.name).read_bytes() for a in manifest.artifacts}
        archive = pack_archive(env, arts)
        return StoredBundle(digest, manifest, env_bytes, ChunkPlan.of(archive, self.chunk_size))

    def envelope(self, digest: str) -> bytes:
        """The stored signed manifest envelope, as devices receive it."""
        mf = self.root / "bundles" / digest / MANIFEST_FILE
        if not mf.exists():
            raise NotFound("bundle", digest)
        return mf.read_bytes()

    def manifest(self, digest: str) -> Manifest:
        """The stored manifest (signature already checked when it was stored by this hub)."""
        mf = self.root / "bundles" / digest / MANIFEST_FILE
        if not mf.exists():
            raise NotFound("bundle", digest)
        return parse_manifest(Envelope.parse(mf.read_bytes()).payload)

    def archive_path(self, archive_sha: str) -> Path:
        return self.root / "archives" / f"{archive_sha}.efb"

    def archive(self, archive_sha: str) -> bytes:
        p = self.archive_path(archive_sha)
        if not p.exists():
            raise NotFound("archive", archive_sha)
        return p.read_bytes()

    def chunk(self, archive_sha: str, index: int, chunk_size: int | None = None) -> bytes:
        size = chunk_size or self.chunk_size
        with open(self.archive_path(archive_sha), "rb") as f:
            f.seek(index * size)
            return f.read(size)

    def artifact(self, digest: str, name: str) -> bytes | None:
        p = self.root / "bundles" / digest / name
        return p.read_bytes() if p.is_file() else None

    def baseline(self, digest: str, manifest: Manifest) -> Baseline | None:
        """The bundle's drift baseline; None when it has none or the stored file is not the one
        the manifest names. A malformed one raises :class:`BadPayload` naming the field."""
        a = manifest.artifact("baseline")
        if a is None:
            return None
        data = self.artifact(digest, a.name)
        if data is None or sha256_hex(data) != a.sha256:
            return None
        return parse_baseline(data)

    def baseline_of(self, digest: str) -> Baseline | None:
        """:meth:`baseline` of a stored bundle, read once (the device page, the alert scan, the
        rollout gate and the charts all ask); None when it has none or it is missing or
        malformed (drift is then not judged for that bundle, and the log says why once)."""
        if digest not in self._baselines:
            try:
                self._baselines[digest] = self.baseline(digest, self.manifest(digest))
            except (NotFound, OSError, ProtocolError) as exc:
                log.warning("bundle %s: no usable drift baseline (%s)", digest[:12], exc)
                self._baselines[digest] = None
        return self._baselines[digest]
