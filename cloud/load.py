"""The requests in flight of every server process of one ``serve --processes N``, shared so that
admission (:func:`cloud.admission.decide`) bounds them machine-wide, not per process.

A small file (in ``/dev/shm`` when there is one), mapped by every process: one slot per server
process, each an int64 count of its requests in flight and a float64 busy rate (requests/s,
0 while not measured). The ``i``-th server process owns slot ``i``: only it writes it; every
process reads the others' slots. An admission reads the others and raises its own count under
an exclusive ``flock`` on the file, so a check-then-enter is atomic across processes (two
processes cannot both take the last place). A completion lowers its own count without the lock
(:meth:`SharedLoad.publish`): its slot has one writer, each value is one aligned 8-byte store,
and a reader that sees the older, higher count only refuses more - never admits past the bound.
A completion so costs no system call; an admission costs one lock and unlock (~4 us). Measured
in a loop of 100,000 admissions and completions (2026-12-03 15:22 UTC, 2-core x86_64 sandbox,
load average 9): 18-42 us each with sharing, 5-9 us with one process. ``flock`` rather than a
multiprocessing lock because the kernel drops it when its holder dies: a process killed in the
middle of an admission cannot wedge the others.

A dead process must not hold its requests in flight forever: the supervisor (which created the
file) zeroes its slot as soon as it sees the process gone, before starting its replacement, and
the replacement zeroes it again when it starts. With one process there is no file: admission
counts in the process (:class:`cloud.admission.ServiceRate`) exactly as it always did.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import tempfile
from pathlib import Path

SLOT_BYTES = 16  # int64 in flight + float64 busy rate


class SharedLoad:
    """The mapped slots of ``slots`` processes at ``path`` (made by :meth:`create`)."""

    def __init__(self, path: Path, slots: int) -> None:
        if slots < 1:
            raise ValueError(f"shared load needs at least 1 slot, got {slots}")
        self.path = path
        self.slots = slots
        self._fd = os.open(path, os.O_RDWR)
        size = os.fstat(self._fd).st_size
        if size != slots * SLOT_BYTES:
            os.close(self._fd)
            raise ValueError(f"shared load file {path} is {size} bytes, expected {slots} x {SLOT_BYTES}")
        self._map = mmap.mmap(self._fd, size)
        view = memoryview(self._map)
        self._counts = view[: 8 * slots].cast("q")
        self._rates = view[8 * slots :].cast("d")

    @classmethod
    def create(cls, slots: int, directory: Path | None = None) -> SharedLoad:
        """A new zeroed file for ``slots`` processes; the creator removes it (:meth:`remove`)."""
        if directory is None and os.path.isdir("/dev/shm"):
            directory = Path("/dev/shm")
        fd, name = tempfile.mkstemp(prefix="edgefleet-cloud-load-", dir=directory)
        try:
            os.ftruncate(fd, slots * SLOT_BYTES)
        finally:
            os.close(fd)
        return cls(Path(name), slots)

    def locked(self) -> SharedLoad:
        """``with load.locked():`` holds the file's exclusive lock (a plain context manager, not
        ``contextlib.contextmanager``: measured 15 vs 4 us per lock and unlock)."""
        return self

    def __enter__(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def others(self, slot: int) -> tuple[int, ...]:
        """Requests in flight in every slot but ``slot`` (call under :meth:`locked`)."""
        return tuple(n for i, n in enumerate(self._counts) if i != slot)

    def rate(self, slot: int, own: float | None) -> float | None:
        """The busy rate of all processes: ``own`` plus the others' published rates; None while
        none is measured (call under :meth:`locked`). A process not measured yet adds nothing,
        which only makes the latency bound stricter until it is."""
        total = (own or 0.0) + sum(r for i, r in enumerate(self._rates) if i != slot)
        return total or None

    def publish(self, slot: int, inflight: int, rate: float | None) -> None:
        """Record this process's requests in flight and busy rate: under :meth:`locked` when the
        count rises; when it falls the lock is not needed (see the module docstring)."""
        self._counts[slot] = inflight
        self._rates[slot] = rate or 0.0

    def reset(self, slot: int) -> None:
        """Zero ``slot``: its process died, or is starting with nothing in flight."""
        if not 0 <= slot < self.slots:
            raise ValueError(f"slot {slot} out of range 0..{self.slots - 1}")
        with self.locked():
            self.publish(slot, 0, None)

    def total(self) -> int:
        with self.locked():
            return sum(self._counts)

    def close(self) -> None:
        self._counts.release()
        self._rates.release()
        self._map.close()
        os.close(self._fd)

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)
