"""The agent process's glibc allocator settings: what keeps its RSS near the loaded model's
after traffic (issue 16 part 7, docs/agent.md "Footprint").

* :func:`pin_mmap_threshold` - glibc raises its mmap threshold each time a block it had mmapped
  is freed (up to 32 MiB), so after the first large upload the decode and resize buffers
  (hundreds of kB each: a 720p JPEG drafted to 640x360 RGB is 675 KiB) come from the heap and
  the per-thread arenas instead, and stay resident after they are freed. Pinned at 128 KiB
  (glibc's own default), every such buffer is mmapped and goes back to the kernel on free.
  Measured with the bench's traffic on MobileNetV2-224: anonymous RSS after traffic +9.0 MB
  over idle unpinned, +3.7 MB pinned.
* :func:`one_arena` - glibc gives each thread that allocates its own arena (up to 8 per core),
  and each keeps its own free and fragmented pages: after the bench's traffic the serving and
  drift threads' arenas held 0.9-1.3 MB that ``malloc_trim`` could not hand back. With one
  arena every thread allocates from the main heap, which grew 0.1-0.5 MB over the same traffic.
  Most of the threads' allocations are Python's, made under the GIL anyway, and large buffers
  are mmapped, so one shared lock costs little: paired agents with and without it answered
  within noise (docs/agent.md "Footprint").
* :func:`trim` - ``malloc_trim(0)``: hands free heap pages back; the local API calls it when a
  connection closes, off every request's path.

Both are no-ops (False) on a C library without them (musl, macOS): the agent then runs with
that allocator's own behaviour.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from typing import Any

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc malloc.h
M_ARENA_MAX = -8
MMAP_THRESHOLD = 128 * 1024

_libc: Any = None


def _glibc() -> Any:
    global _libc
    if _libc is None:
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc = lib if hasattr(lib, "mallopt") and hasattr(lib, "malloc_trim") else False
        except OSError:
            _libc = False
    return _libc


def pin_mmap_threshold(nbytes: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``nbytes`` (turning its dynamic raise off); True if set."""
    lib = _glibc()
    if not lib:
        log.debug("no glibc mallopt: allocator left as it is")
        return False
    return bool(lib.mallopt(M_MMAP_THRESHOLD, nbytes))


def one_arena() -> bool:
    """Make every thread allocate from glibc's main arena; True if set. Call it before any thread
    starts: glibc fixes its arena limit when the second arena is first needed."""
    lib = _glibc()
    if not lib:
        return False
    return bool(lib.mallopt(M_ARENA_MAX, 1))


def trim() -> bool:
    """Return free heap memory to the kernel; True if some was."""
    lib = _glibc()
    return bool(lib.malloc_trim(0)) if lib else False
