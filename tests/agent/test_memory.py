"""agent.memory: with the mmap threshold pinned, freed decode-sized buffers leave the process;
with glibc's dynamic threshold (the default) they stay resident. Each case runs in a fresh
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

pytestmark = pytest.mark.skipif(not memory._glibc(), reason="not glibc: agent.memory is a no-op here")


def _growth_kb(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def test_freed_decode_buffers_return_to_the_kernel_once_the_threshold_is_pinned() -> None:
    unpinned, pinned = _growth_kb("default"), _growth_kb("pinned")
    assert unpinned > 10 * 1024, f"control: glibc's default kept only {unpinned} KiB of 16.4 MiB freed"
    assert pinned < 2 * 1024, f"pinned: {pinned} KiB stayed resident after the buffers were freed"


def test_trim_hands_back_the_freed_buffers_the_default_threshold_kept() -> None:
    trimmed = _growth_kb("trimmed")
    assert trimmed < 2 * 1024, f"trimmed: {trimmed} KiB stayed resident after malloc_trim"
