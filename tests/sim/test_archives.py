"""sim.archives: a chunk is skipped from hashing only when it is byte for byte what a device already
checked against the same signed hash; anything else is hashed (and a forgery refused) as before."""

from __future__ import annotations

import os

from protocol.bundle import ChunkPlan
from sim.archives import Archives

DATA = os.urandom(3 * 4096 + 100)
PLAN = ChunkPlan.of(DATA, 4096)


def chunk(i: int) -> bytes:
    return DATA[i * 4096 : (i + 1) * 4096]


def test_only_the_bytes_a_device_checked_against_the_same_hash_are_known():
    a = Archives()
    assert not a.known(PLAN, 1, chunk(1))  # nothing checked yet: hash it
    a.keep(PLAN, 1, chunk(1))
    assert a.known(PLAN, 1, chunk(1))
    forged = bytes([chunk(1)[0] ^ 1]) + chunk(1)[1:]
    assert not a.known(PLAN, 1, forged)  # one byte off: hashed, and the hash refuses it
    other = ChunkPlan(PLAN.size, PLAN.sha256, PLAN.chunk_size, (PLAN.chunks[0], "0" * 64, *PLAN.chunks[2:]))
    assert not a.known(other, 1, chunk(1))  # a document naming another hash for it: hashed again
    assert not a.known(PLAN, 2, chunk(1)) and not a.known(PLAN, 99, chunk(1))
