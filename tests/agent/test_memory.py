"""agent.memory: with the mmap threshold pinned, freed decode-sized buffers leave the process;
with glibc's dynamic threshold (the default) they stay resident; with one arena a thread's
allocations come from the main heap, not an arena of its own. Each case runs in a fresh
interpreter, since the allocator's state is per process."""

from __future__ import annotations

import subprocess
import sys

import pytest

from agent import memory

# After one 4 MiB block is freed, glibc's default raises its mmap threshold to 4 MiB; then 24
# buffers of 700 KiB (a 720p JPEG drafted to 640x360 RGB is 675 KiB), each followed by a small
# block that stays alive (as a request leaves behind a log record or a cache entry), are freed.
SCRIPT = """
import sys
from agent import memory
if sys.argv[1] == "pinned":
    assert memory.pin_mmap_threshold()
def anon_kb():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
del_me = bytearray(4 << 20); del del_me
keep, big = [], []
before = anon_kb()
for _ in range(24):
    big.append(bytearray(700 << 10))
    keep.append(bytearray(1000))
del big
if sys.argv[1] == "trimmed":
    memory.trim()
print(anon_kb() - before)
"""

glibc_only = pytest.mark.skipif(not memory._glibc(), reason="not glibc: agent.memory is a no-op here")


def _growth_kb(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@glibc_only
def test_freed_decode_buffers_return_to_the_kernel_once_the_threshold_is_pinned() -> None:
    unpinned, pinned = _growth_kb("default"), _growth_kb("pinned")
    assert unpinned > 10 * 1024, f"control: glibc's default kept only {unpinned} KiB of 16.4 MiB freed"
    assert pinned < 2 * 1024, f"pinned: {pinned} KiB stayed resident after the buffers were freed"


@glibc_only
def test_trim_hands_back_the_freed_buffers_the_default_threshold_kept() -> None:
    trimmed = _growth_kb("trimmed")
    assert trimmed < 2 * 1024, f"trimmed: {trimmed} KiB stayed resident after malloc_trim"


# A thread allocates a block well under the mmap threshold and says whether it lies in the
# process's [heap] (glibc's main arena) or elsewhere (an arena of the thread's own).
THREAD_SCRIPT = """
import ctypes, sys, threading
from agent import memory
if sys.argv[1] == "one":
    assert memory.one_arena()
where = []
def work():
    block = bytearray(16 << 10)
    addr = ctypes.addressof((ctypes.c_char * len(block)).from_buffer(block))
    for line in open("/proc/self/maps"):
        lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
        if lo <= addr < hi:
            where.append(line.split()[-1] if line.rstrip().endswith("]") else "elsewhere")
t = threading.Thread(target=work)
t.start()
t.join()
print(where[0])
"""


def _where_a_thread_allocates(mode: str) -> str:
    out = subprocess.run([sys.executable, "-c", THREAD_SCRIPT, mode], capture_output=True, text=True, check=True)
    return out.stdout.strip()


@glibc_only
def test_with_one_arena_a_serving_threads_allocations_come_from_the_main_heap() -> None:
    assert _where_a_thread_allocates("default") == "elsewhere", "control: glibc gave the thread no arena of its own"
    assert _where_a_thread_allocates("one") == "[heap]"


def test_without_glibc_the_allocator_settings_are_no_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_libc", False)  # as on musl or macOS: no mallopt, no malloc_trim
    assert memory.pin_mmap_threshold() is False
    assert memory.one_arena() is False
    assert memory.trim() is False
