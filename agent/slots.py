"""A/B model slots on disk, switched atomically.

Layout under ``state_dir``::

    slots/<digest>/manifest.json     the signed manifest envelope, as received
    slots/<digest>/<artifact>        every artifact, hash-checked while extracting
    slots/<digest>.tmp/              a stage in progress (deleted when refused, and on restart)
    slots.json                       {"active": record, "previous": record, "trial": bool,
                                      "probation": null | unclean restarts since the switch}

Two slots are kept: the active one and the previous one (to roll back to without a download).
``slots.json`` is the only switch: it is replaced by rename + fsync, so after a power cut the
agent runs either the old or the new model. ``trial`` is true between switch and commit;
``probation`` is set from the switch until the new model's first inferences succeeded, and
counts the restarts without a clean shutdown meanwhile (a model that crashes the process).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import struct
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from protocol.bundle import ARCHIVE_MAGIC, MANIFEST_FILE, Artifact, Manifest, members, read_archive, verify_manifest
from protocol.errors import ProtocolError, Reason, VerificationError
from protocol.signing import Root
from protocol.view import needed

from .durable import fsync_dir, read_json, write_atomic, write_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SlotRecord:
    digest: str
    name: str
    version: str
    artifact: str  # file name of the model artifact served from this slot
    runtime: str  # edgetpu | cpu | onnx
    desired_seq: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "name": self.name,
            "version": self.version,
            "artifact": self.artifact,
            "runtime": self.runtime,
            "desired_seq": self.desired_seq,
        }

    @classmethod
    def from_dict(cls, obj: Any) -> SlotRecord | None:
        if not isinstance(obj, dict):
            return None
        try:
            return cls(
                str(obj["digest"]),
                str(obj["name"]),
                str(obj["version"]),
                str(obj["artifact"]),
                str(obj["runtime"]),
                int(obj.get("desired_seq", 0)),
            )
        except (KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True)
class SlotsState:
    active: SlotRecord | None = None
    previous: SlotRecord | None = None
    trial: bool = False
    probation: int | None = None


class Slots:
    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / "slots"
        self.file = state_dir / "slots.json"
        self.dir.mkdir(parents=True, exist_ok=True)

    def load(self) -> SlotsState:
        raw = read_json(self.file, {})
        if not isinstance(raw, dict):
            raw = {}
        prob = raw.get("probation")
        return SlotsState(
            SlotRecord.from_dict(raw.get("active")),
            SlotRecord.from_dict(raw.get("previous")),
            bool(raw.get("trial", False)),
            int(prob) if isinstance(prob, int) else None,
        )

    def save(self, state: SlotsState) -> None:
        write_json(
            self.file,
            {
                "active": state.active.to_dict() if state.active else None,
                "previous": state.previous.to_dict() if state.previous else None,
                "trial": state.trial,
                "probation": state.probation,
            },
        )

    def path(self, digest: str) -> Path:
        return self.dir / digest

    def has(self, digest: str) -> bool:
        return (self.path(digest) / MANIFEST_FILE).is_file()

    def stage(
        self, archive: Path, length: int, root: Root, only: Collection[str] | None = None
    ) -> tuple[Manifest, str, Path]:
        """Verify and extract ``archive`` into ``slots/<digest>``; raise ProtocolError if bad.
        ``only``: a device-view archive's members (protocol.view): the slot holds just those, and
        one this device needs that is absent is refused by name before anything is written.

        The signature is checked before any artifact byte is written; each artifact is hashed as
        it streams. Files are fsynced and the directory renamed into place last.
        """
        with open(archive, "rb") as f:
            env_bytes = _envelope_bytes(f, length)
            f.seek(0)
            _, digest = verify_manifest(env_bytes, root)
            tmp = self.dir / f"{digest}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            handles: dict[str, IO[bytes]] = {}

            def sink(a: Artifact, data: bytes) -> None:
                h = handles.get(a.name)
                if h is None:
                    h = handles[a.name] = open(tmp / a.name, "wb")
                h.write(data)

            try:
                manifest, digest2 = read_archive(f, root, length, sink, only=only)
            except Exception:  # refused part-way: nothing of it stays on disk
                for h in handles.values():
                    h.close()
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            for h in handles.values():
                h.flush()
                os.fsync(h.fileno())
                h.close()
        for a in members(manifest, only):  # zero-length artifacts never reach the sink
            (tmp / a.name).touch()
        with open(tmp / MANIFEST_FILE, "wb") as mf:  # fsynced like the artifacts: the rename below commits it
            mf.write(env_bytes)
            mf.flush()
            os.fsync(mf.fileno())
        fsync_dir(tmp)
        final = self.path(digest2)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(self.dir)
        return manifest, digest2, final

    def check(self, digest: str, root: Root) -> Manifest:
        """Re-verify a slot on disk: manifest signature and every artifact's length and hash.

        A slot installed from a device view (protocol.view) lacks the artifacts the view leaves
        out: those may be absent; every one the device needs must be there (MISSING_ARTIFACT
        names it), and every file present must match its signed length and hash."""
        d = self.path(digest)
        try:
            env_bytes = (d / MANIFEST_FILE).read_bytes()
        except OSError as exc:
            raise VerificationError(
                Reason.MISSING_ARTIFACT, f"slot {digest[:12]} has no manifest ({exc.strerror})"
            ) from None
        manifest, got = verify_manifest(env_bytes, root)
        if got != digest:
            raise VerificationError(Reason.HASH_MISMATCH, f"slot {digest[:12]} holds manifest {got[:12]}")
        need = {a.name for a in needed(manifest)}
        for a in manifest.artifacts:
            p = d / a.name
            try:
                size = p.stat().st_size
            except OSError:
                if a.name not in need:
                    continue
                raise VerificationError(Reason.MISSING_ARTIFACT, f"slot {digest[:12]}: {a.name} is missing") from None
            if size != a.size:
                raise VerificationError(
                    Reason.LENGTH_MISMATCH, f"slot {digest[:12]}: {a.name} is {size} bytes, signed {a.size}"
                )
            h = hashlib.sha256()
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            if h.hexdigest() != a.sha256:
                raise VerificationError(
                    Reason.HASH_MISMATCH, f"slot {digest[:12]}: {a.name} hash differs from the manifest"
                )
        return manifest

    def refresh_manifest(self, digest: str, env_bytes: bytes, root: Root) -> bool:
        """Replace the slot's manifest by ``env_bytes`` if it verifies under ``root`` and has the
        same payload (same digest): the hub signed it again after its online key changed, and
        the slot must keep verifying at start. Returns False if the slot holds these bytes or
        does not exist; raises VerificationError for anything that does not verify."""
        mf = self.path(digest) / MANIFEST_FILE
        if not mf.exists():
            return False
        _, got = verify_manifest(env_bytes, root)
        if got != digest:
            raise VerificationError(Reason.HASH_MISMATCH, f"manifest {got[:12]} sent for slot {digest[:12]}")
        if mf.read_bytes() == env_bytes:
            return False
        write_atomic(mf, env_bytes)
        return True

    def manifest(self, digest: str, root: Root) -> Manifest:
        return verify_manifest((self.path(digest) / MANIFEST_FILE).read_bytes(), root)[0]

    def gc(self, state: SlotsState, keep: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        """Delete slot directories that are neither active, previous nor in ``keep``."""
        wanted = {r.digest for r in (state.active, state.previous) if r is not None} | set(keep)
        for p in self.dir.iterdir():
            if p.name not in wanted:
                log.info("removing unused slot %s", p.name[:16])
                shutil.rmtree(p, ignore_errors=True)


def _envelope_bytes(f: IO[bytes], length: int) -> bytes:
    head = f.read(8)
    if len(head) < 8 or head[:4] != ARCHIVE_MAGIC:
        raise VerificationError(Reason.MALFORMED, f"archive does not start with {ARCHIVE_MAGIC!r}")
    (n,) = struct.unpack(">I", head[4:])
    if 8 + n > length:
        raise VerificationError(Reason.LENGTH_MISMATCH, f"manifest length {n} exceeds the archive")
    return f.read(n)


__all__ = ["Slots", "SlotsState", "SlotRecord", "ProtocolError"]
