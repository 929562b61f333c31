"""The chunk store: signed hashes checked on arrival, bitmap resume, torn writes re-fetched."""

from __future__ import annotations

import os

import pytest

from agent.download import Download, Subscription, chunk_subscription, progress_due, repair_subscription
from protocol.bundle import ChunkPlan
from protocol.errors import Reason, VerificationError
from protocol.topics import Topic, chunk_filter

DATA = os.urandom(10 * 1024 + 123)
PLAN = ChunkPlan.of(DATA, 1024)


def chunk(i: int) -> bytes:
    return DATA[i * 1024 : (i + 1) * 1024]


def test_chunks_in_any_order_with_duplicates_assemble_the_signed_archive(tmp_path):
    d = Download(tmp_path, PLAN)
    order = list(range(len(PLAN.chunks)))[::-1] + [0, 3]
    new = [d.put(i, chunk(i)) for i in order]
    assert new.count(False) == 2 and d.complete and not d.missing()
    d.verify()
    assert d.path.read_bytes() == DATA


def test_tampered_chunk_is_refused_and_not_marked(tmp_path):
    d = Download(tmp_path, PLAN)
    bad = bytearray(chunk(4))
    bad[0] ^= 1
    with pytest.raises(VerificationError) as e:
        d.put(4, bytes(bad))
    assert e.value.reason is Reason.HASH_MISMATCH and 4 in d.missing()


@pytest.mark.parametrize("data, index", [(b"x" * 2000, 1), (b"", 0), (chunk(0), 99)])
def test_oversized_short_or_out_of_range_chunk_is_refused(tmp_path, data, index):
    d = Download(tmp_path, PLAN)
    with pytest.raises(VerificationError):
        d.put(index, data)
    assert os.path.getsize(d.path) == PLAN.size  # never more than the signed length


def test_reopen_resumes_from_the_bitmap_and_rehashes_claimed_chunks(tmp_path):
    d = Download(tmp_path, PLAN)
    for i in (0, 1, 2, 5):
        d.put(i, chunk(i))
    d.close()
    with open(d.path, "r+b") as f:  # a torn write: chunk 5's bytes are damaged, its bit is set
        f.seek(5 * 1024)
        f.write(b"\0" * 10)
    again = Download(tmp_path, PLAN)
    assert again.rechecked == 3
    assert again.missing() == [3, 4, 5, 6, 7, 8, 9, 10]


def test_whole_archive_mismatch_clears_the_bitmap(tmp_path):
    other = ChunkPlan(PLAN.size, "0" * 64, PLAN.chunk_size, PLAN.chunks)  # chunks fine, whole hash not
    d = Download(tmp_path, other)
    for i in range(len(PLAN.chunks)):
        d.put(i, chunk(i))
    with pytest.raises(VerificationError) as e:
        d.verify()
    assert e.value.reason is Reason.HASH_MISMATCH and len(d.missing()) == len(PLAN.chunks)


SHA = "ab" * 32
WILD = chunk_filter(SHA)


def per_index(*idx: int) -> tuple[str, ...]:
    return tuple(str(Topic.chunk(SHA, i)) for i in idx)


@pytest.mark.parametrize(
    "missing, held, kept, rh, want",
    [
        # a fresh download: one wildcard, whose retained replay is the whole bundle
        ([0, 1, 2, 3], set(), False, True, Subscription((), (WILD,), False)),
        # resumed after a restart (new session): only the missing indexes are replayed
        ([2, 3], set(), False, True, Subscription((), per_index(2, 3), False)),
        # the session was lost while the wildcard was held: switch to the missing indexes
        ([3], {WILD}, False, True, Subscription((WILD,), per_index(3), False)),
        # the session kept the wildcard: re-assert it without a replay; the queue brings the rest
        ([2, 3], {WILD}, True, True, Subscription((), (WILD,), True)),
        # the session kept per-index filters: re-assert those still missing, drop the rest
        ([3], set(per_index(1, 3)), True, True, Subscription(per_index(1), per_index(3), True)),
        # MQTT 3.1.1 cannot re-subscribe without a replay: the wildcard gives way to the missing indexes
        ([3], {WILD}, True, False, Subscription((WILD,), per_index(3), False)),
        # complete: every held filter is dropped
        ([], set(per_index(3)), True, True, Subscription(per_index(3), (), False)),
    ],
)
def test_a_download_subscribes_only_to_the_chunks_it_lacks(missing, held, kept, rh, want):
    assert chunk_subscription(SHA, missing, 4, held, kept, rh) == want


@pytest.mark.parametrize(
    "missing, held, confirmed, rh, want",
    [
        # the broker acknowledged the wildcard in the kept session: nothing to send (v5 or 3.1.1)
        ([2, 3], {WILD}, {WILD}, True, Subscription((), (), False)),
        ([2, 3], {WILD}, {WILD}, False, Subscription((), (), False)),
        # per-index filters: only the one whose SUBACK never came is asked again; the done one dropped
        ([2, 3], set(per_index(1, 2, 3)), set(per_index(1, 2)), True, Subscription(per_index(1), per_index(3), True)),
        # 3.1.1 with an unacknowledged filter cannot re-assert without a replay: the missing indexes anew
        ([3], {WILD}, set(), False, Subscription((WILD,), per_index(3), False)),
    ],
)
def test_a_reconnect_into_a_kept_session_does_not_resubscribe_what_the_broker_acknowledged(
    missing, held, confirmed, rh, want
):
    """10,000 devices re-asserting shared chunk filters on every reconnect kept Mosquitto, which
    adds a subscription by walking that topic's subscribers, at 100 % of a core."""
    assert chunk_subscription(SHA, missing, 4, held, True, rh, confirmed) == want


def test_a_duplicate_of_a_chunk_on_disk_is_neither_checked_nor_written(tmp_path):
    d = Download(tmp_path, PLAN)
    assert d.put(0, chunk(0))
    assert d.put(0, b"not even the right length") is False  # the link's waste, not an attack
    assert d.missing()[0] == 1


@pytest.mark.parametrize(
    "missing, held, want",
    [
        # stalled on the wildcard: it gives way to the missing indexes (their replay comes at once)
        ([2, 3], {WILD}, Subscription((WILD,), per_index(2, 3), False)),
        # already by index: the held filters stay (asking again would replay them), new ones added
        ([1, 3], set(per_index(3)), Subscription((), per_index(1), False)),
        ([3], set(per_index(3)), Subscription((), (), False)),
        # nothing held (the link was down when the download began): the missing indexes
        ([0], set(), Subscription((), per_index(0), False)),
    ],
)
def test_before_a_repair_request_the_wildcard_gives_way_to_the_missing_indexes(missing, held, want):
    assert repair_subscription(SHA, missing, held) == want


@pytest.mark.parametrize(
    "received, last_decile, last_at, now, want",
    [
        (0, -1, 0.0, 100.0, 0),  # nothing reported yet: the first tenth at once
        (35, 0, 100.0, 100.5, None),  # a new tenth half a second after the last report: held
        (35, 0, 100.0, 105.0, 3),  # ... five seconds after: reported (the tenth it is in now)
        (39, 3, 105.0, 200.0, None),  # the same tenth, however long after
        (100, 9, 0.0, 999.0, None),  # complete: the end of the download is its own report
        (95, 3, 105.0, 111.0, 9),  # a slow link skips no time: the tenth it reached
    ],
)
def test_download_progress_is_a_report_a_tenth_at_most_one_every_interval(received, last_decile, last_at, now, want):
    assert progress_due(received, 100, last_decile, last_at, now, 5.0) == want
