"""One archive being fetched in chunks, resumable across restarts and broker outages.

On disk under ``state_dir/downloads``::

    <archive_sha>.part     preallocated to the signed size; chunk i lives at i * chunk_size
    <archive_sha>.bitmap   one byte per chunk: 1 = chunk written, fsynced and hash-checked

A chunk is checked against the hash in the signed desired document *before* it is written, the
data is fsynced before its bitmap byte is set, and on reopen every claimed chunk is hashed again
(a torn write after a power cut is simply fetched again). Nothing past the signed size is ever
written: each chunk must have exactly its signed length.

Which chunk topics to subscribe to is decided here too (:func:`chunk_subscription`, ADR 0007):
a retained chunk is replayed by the broker on every SUBSCRIBE that matches it, so a resumed
download asks only for the chunks its bitmap lacks; and before asking the hub for a repair a
download drops the wildcard for the indexes it lacks (:func:`repair_subscription`), so other
devices' repairs do not reach it.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Sequence, Set
from dataclasses import dataclass
from pathlib import Path

from protocol.bundle import ChunkPlan
from protocol.errors import Reason, VerificationError
from protocol.topics import Topic, chunk_filter

from .errors import DiskFull

MAX_REQUESTED = 4096  # chunk indexes one fetch request names, and one repair subscribes to


class Download:
    def __init__(self, directory: Path, plan: ChunkPlan) -> None:
        self.plan = plan
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{plan.sha256}.part"
        self.bitmap_path = directory / f"{plan.sha256}.bitmap"
        n = len(plan.chunks)
        fresh = not (self.path.exists() and self.bitmap_path.exists())
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        self._bfd = os.open(self.bitmap_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(self._fd).st_size != plan.size:
                os.ftruncate(self._fd, 0)
                fresh = True
            if plan.size:
                os.posix_fallocate(self._fd, 0, plan.size)
        except OSError as exc:
            self.remove()  # a half-reserved file would only hold on to the space we lack
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFull(
                    f"cannot reserve {plan.size} bytes for archive {plan.sha256[:12]}: {exc.strerror}"
                ) from None
            raise
        bits = bytearray(n) if fresh else bytearray(os.pread(self._bfd, n, 0).ljust(n, b"\0"))
        self.rechecked = 0
        if not fresh:  # trust nothing: re-hash what the bitmap claims
            for i in range(n):
                if bits[i]:
                    data = os.pread(self._fd, plan.chunk_length(i), i * plan.chunk_size)
                    if hashlib.sha256(data).hexdigest() != plan.chunks[i]:
                        bits[i] = 0
                    else:
                        self.rechecked += 1
        self._bits = bits
        os.ftruncate(self._bfd, 0)
        os.pwrite(self._bfd, bytes(bits), 0)
        os.fsync(self._bfd)

    @property
    def total(self) -> int:
        return len(self._bits)

    def have(self, index: int) -> bool:
        return 0 <= index < len(self._bits) and bool(self._bits[index])

    def put(self, index: int, data: bytes) -> bool:
        """Store chunk ``index`` if it is new and matches its signed hash (else raise).

        Returns False for a duplicate of a chunk already held (neither hashed nor written).
        """
        if 0 <= index < len(self._bits) and self._bits[index]:
            return False
        self.plan.check_chunk(index, data)  # raises VerificationError (length/hash) or bad index
        if self._bits[index]:
            return False
        try:
            os.pwrite(self._fd, data, index * self.plan.chunk_size)
            os.fdatasync(self._fd)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFull(f"writing chunk {index}: {exc.strerror}") from None
            raise
        self._bits[index] = 1
        os.pwrite(self._bfd, b"\1", index)
        os.fdatasync(self._bfd)
        return True

    def missing(self) -> list[int]:
        return [i for i, b in enumerate(self._bits) if not b]

    @property
    def received(self) -> int:
        return sum(self.plan.chunk_length(i) for i, b in enumerate(self._bits) if b)

    @property
    def complete(self) -> bool:
        return all(self._bits)

    def verify(self) -> None:
        """Hash the whole archive against the signed sha256 (raises HASH_MISMATCH)."""
        h = hashlib.sha256()
        with open(self.path, "rb") as f:
            left = self.plan.size
            while left:
                block = f.read(min(1 << 20, left))
                if not block:
                    break
                h.update(block)
                left -= len(block)
        if h.hexdigest() != self.plan.sha256:
            # every chunk matched yet the whole does not: start over rather than loop forever
            self._bits = bytearray(len(self._bits))
            os.pwrite(self._bfd, bytes(self._bits), 0)
            os.fsync(self._bfd)
            raise VerificationError(
                Reason.HASH_MISMATCH, f"archive sha256 {h.hexdigest()} != signed {self.plan.sha256}"
            )

    def close(self) -> None:
        for fd in (getattr(self, "_fd", None), getattr(self, "_bfd", None)):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._fd = self._bfd = None  # type: ignore[assignment]

    def remove(self) -> None:
        self.close()
        for p in (self.path, self.bitmap_path):
            try:
                p.unlink()
            except FileNotFoundError:
                pass


def bytes_on_disk(directory: Path, archive_sha: str) -> int:
    """Rough count of bytes already downloaded for an archive (for the free-disk check)."""
    bitmap = directory / f"{archive_sha}.bitmap"
    part = directory / f"{archive_sha}.part"
    try:
        return part.stat().st_size if bitmap.exists() else 0
    except OSError:
        return 0


@dataclass(frozen=True)
class Subscription:
    """What to send the broker so that the chunks still missing arrive, and no others."""

    unsubscribe: tuple[str, ...]
    subscribe: tuple[str, ...]
    only_new: bool  # MQTT v5 Retain Handling 1: no retained replay for a filter the session holds


def chunk_subscription(
    archive: str,
    missing: Sequence[int],
    total: int,
    held: Set[str],
    session_kept: bool,
    retain_handling: bool,
    confirmed: Set[str] = frozenset(),
) -> Subscription:
    """Decide the chunk subscriptions of a download after (re)connecting or (re)starting.

    ``held``: the filters this download subscribed to in the broker session; ``session_kept``:
    the broker reported that session present on this connection; ``confirmed``: the filters the
    broker acknowledged (SUBACK) in that session. Rules, in order:

    1. nothing missing: drop every held filter;
    2. the session kept the held filters: those still wanted stay. The ones the broker
       acknowledged are in the session, so nothing is sent for them; the others (a SUBSCRIBE
       lost with the old link) are asked again with ``only_new`` where the broker can skip
       retained replays for filters a session holds (v5); the broker delivers what it queued
       while the agent was away, and the fetch repair asks for whatever is still missing. Not
       sending the acknowledged ones matters at scale: Mosquitto adds a subscription by walking
       every subscriber of that topic (``sub__add_leaf``), so 10,000 devices re-asserting shared
       chunk filters on each reconnect kept it at 100 % of a core (docs/scale.md);
    3. otherwise, nothing on disk: the wildcard ``chunk/+`` (one filter; its replay is the
       bundle); some chunks on disk: one filter per missing index (the replay is exactly the
       missing chunks). Held filters not chosen are dropped first, so no chunk arrives twice
       through overlapping filters.

    The filters held afterwards are ``(held - unsubscribe) | subscribe``.
    """
    wildcard = chunk_filter(archive)
    per_index = tuple(str(Topic.chunk(archive, i)) for i in missing)
    if not missing:
        return Subscription(tuple(sorted(held)), (), False)
    if session_kept and held:
        wanted = {wildcard, *per_index}
        keep = tuple(f for f in (wildcard, *per_index) if f in held)
        drop = tuple(sorted(f for f in held if f not in wanted))
        unsure = tuple(f for f in keep if f not in confirmed)
        if keep and not unsure:
            return Subscription(drop, (), False)
        if keep and retain_handling:
            return Subscription(drop, unsure, True)
    chosen = (wildcard,) if len(missing) == total else per_index
    return Subscription(tuple(sorted(set(held) - set(chosen))), chosen, False)


def repair_subscription(archive: str, missing: Sequence[int], held: Set[str]) -> Subscription:
    """Narrow the chunk subscriptions before asking the hub to repair ``missing``.

    The hub re-publishes a repaired chunk retained on the bundle's own topic, so it reaches every
    device whose filters match it: a device still holding the wildcard would receive every other
    device's repairs, chunks it already has (docs/scale.md: N devices falling behind at once made
    the repair traffic N x the missing chunks). So the wildcard gives way to one filter per
    missing index: a repair reaches only the devices that lack that chunk, and the new filters'
    retained replay brings any chunk the broker still holds without waiting for the hub. Filters
    already held are kept (asking again would replay them); each is dropped once its chunk is on
    disk, as always.
    """
    wildcard = chunk_filter(archive)
    per_index = tuple(str(Topic.chunk(archive, i)) for i in missing)
    drop = (wildcard,) if wildcard in held else ()
    return Subscription(drop, tuple(f for f in per_index if f not in held), False)


def progress_due(
    received: int, size: int, last_decile: int, last_at: float, now: float, interval_s: float
) -> int | None:
    """The download decile to report now, or ``None``: a report when the download crosses into a
    new tenth, and at most one every ``interval_s`` seconds. On a slow link (a cellular Pi
    taking minutes) that is every tenth; on a fast one the whole download is a report or two,
    not nine: at 1,000 devices the tenths were 9,000 of the ~16,000 messages a rollout made
    every device send, each one parsed and stored by the hub (docs/scale.md). The start
    (``progress`` 0) and the end of the download are reported apart from this."""
    decile = int(10 * received / max(1, size))
    if decile == last_decile or received >= size:
        return None
    if last_decile >= 0 and now - last_at < interval_s:
        return None
    return decile
