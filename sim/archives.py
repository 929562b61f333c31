"""Archive bytes shared by every simulated device in the process.

A real device keeps its own copy of an archive on disk; 10,000 copies of a 4 MB bundle would
take 40 GB here. So each device checks every chunk it receives against the hash in *its own*
signed desired document (:meth:`protocol.bundle.ChunkPlan.check_chunk`, per device, per chunk)
and keeps only a bitmap, while the bytes of each archive are kept once, in :class:`Archives`.
Since every chunk a device marked as held matched its signed hash, the archive a complete
device would assemble is exactly the one kept here: its whole-archive hash and the manifest
signature (:func:`protocol.bundle.read_archive` under the device's root) are checked once per
(archive, root) and the verdict shared. That is the one shortcut against the real agent, and the
reason it exists is memory, not trust: a chunk that fails its hash never reaches this store.

CPU, the same way: hashing every chunk on every device is 4 GB of SHA-256 for a 4 MB bundle at
1,000 devices, a sixth of the simulator's time in `python -m bench rollout` (py-spy, 2026-12-04),
CPU that real devices spend on their own cores. So a chunk byte-for-byte equal to one a device
already hash-checked against the *same* signed hash (:meth:`Archives.known`) is not hashed
again: equal bytes have equal hashes, so the verdict is the one hashing would give.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from protocol import baseline as baseline_mod
from protocol.bundle import Artifact, ChunkPlan, Manifest, read_archive, sha256_hex
from protocol.errors import ProtocolError, Reason, VerificationError
from protocol.signing import Root


@dataclass(frozen=True)
class Verified:
    manifest: Manifest
    digest: str
    refs: dict[str, dict[str, list[int]]]  # the drift baseline's reference bin counts: side -> feature -> counts


class Archives:
    def __init__(self) -> None:
        self._chunks: dict[str, dict[int, tuple[str, bytes]]] = {}  # archive -> index -> (its hash, bytes)
        self._verdicts: dict[tuple[str, int, str], Verified | ProtocolError] = {}

    def keep(self, plan: ChunkPlan, index: int, data: bytes) -> None:
        """Keep chunk ``index`` (already hash-checked by the device) if no device did yet."""
        self._chunks.setdefault(plan.sha256, {}).setdefault(index, (plan.chunks[index], data))

    def known(self, plan: ChunkPlan, index: int, data: bytes) -> bool:
        """Whether ``data`` is, byte for byte, chunk ``index`` as a device already hash-checked it
        against the hash ``plan`` names for it (then hashing it again gives the same verdict)."""
        if not 0 <= index < len(plan.chunks):
            return False
        got = self._chunks.get(plan.sha256, {}).get(index)
        return got is not None and got[0] == plan.chunks[index] and got[1] == data

    def verify(self, plan: ChunkPlan, root: Root) -> Verified:
        """The agent's stage-time checks on the assembled archive: its sha256 against the signed
        one, then :func:`read_archive` (manifest signature under ``root``, every artifact's hash
        and length). Raises :class:`ProtocolError` naming what is wrong."""
        key = (plan.sha256, root.version, sha256_hex(root.raw))
        hit = self._verdicts.get(key)
        if hit is None:
            hit = self._verify(plan, root)
            self._verdicts[key] = hit
        if isinstance(hit, ProtocolError):
            raise hit
        return hit

    def _verify(self, plan: ChunkPlan, root: Root) -> Verified | ProtocolError:
        chunks = self._chunks.get(plan.sha256, {})
        missing = [i for i in range(len(plan.chunks)) if i not in chunks]
        if missing:
            return VerificationError(Reason.MALFORMED, f"archive {plan.sha256[:12]}: chunks {missing[:5]} never kept")
        data = b"".join(chunks[i][1] for i in range(len(plan.chunks)))
        got = sha256_hex(data)
        if got != plan.sha256:
            return VerificationError(Reason.HASH_MISMATCH, f"archive sha256 {got} != signed {plan.sha256}")
        found: dict[str, bytearray] = {}

        def sink(a: Artifact, buf: bytes) -> None:
            if a.role == "baseline":
                found.setdefault(a.name, bytearray()).extend(buf)

        try:
            manifest, digest = read_archive(io.BytesIO(data), root, len(data), sink)
        except ProtocolError as exc:
            return exc
        refs: dict[str, dict[str, list[int]]] = {}
        for raw in found.values():
            try:
                b = baseline_mod.parse(bytes(raw))
            except ProtocolError:
                continue  # the agent also serves a model whose baseline it cannot read, without drift
            refs = {side: {n: list(f.ref) for n, f in getattr(b, side).items()} for side in baseline_mod.SIDES}
        return Verified(manifest, digest, refs)

    def forget(self, archive_sha: str) -> None:
        self._chunks.pop(archive_sha, None)
