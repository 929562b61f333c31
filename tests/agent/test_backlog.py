"""The telemetry backlog: bounded at 50 MiB through a week offline (simulated clock), replayed
exactly once on reconnect, install reports kept over telemetry, a torn database started over
with sequence numbers the hub has never seen."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.backlog import MAX_BYTES, Backlog, resend_wait
from protocol.device import Health
from protocol.messages import Telemetry, parse_telemetry
from protocol.sketch import LatencySketch

WINDOW_S = 10
WEEK_S = 7 * 86400


@pytest.fixture
def fast_dir(tmp_path) -> Iterator[Path]:
    """A tmpfs directory where one exists: a week of windows is 60 480 fsynced commits."""
    if Path("/dev/shm").is_dir():
        d = Path(tempfile.mkdtemp(dir="/dev/shm", prefix="backlog-"))
        yield d
        shutil.rmtree(d, ignore_errors=True)
    else:
        yield tmp_path


_SKETCH = LatencySketch()
for _i in range(200):
    _SKETCH.add(0.003 + (_i % 17) * 0.0004)


def _window(seq: int, start: int) -> bytes:
    """A realistic window: a latency sketch, drift bins on 8 features, health."""
    drift = {"inputs": {f"f{i}": [seq % 7 + j for j in range(16)] for i in range(6)}, "outputs": {}}
    drift["outputs"] = {"top1": [3] * 16, "confidence": [2] * 16}
    return Telemetry(
        "pi-kitchen-01",
        seq,
        start,
        start + WINDOW_S,
        "ab" * 32,
        {"inferences": 200, "errors": 0, "tpu": 200, "cpu": 0, "cloud": 0},
        _SKETCH.to_dict(),
        drift,
        None,
        Health(load1=0.5, cpu_temp_c=51.5, mem_available_mb=600, mem_total_mb=900, rss_mb=70.1, disk_free_mb=9000),
        {"size": seq, "oldest_age_s": 1.0, "dropped": 0},
    ).to_bytes()


class Hub:
    """The hub's side of the contract: store (device, seq) once, ack every copy."""

    def __init__(self) -> None:
        self.stored: set[int] = set()
        self.duplicates = 0
        self.received = 0

    def take(self, payload: bytes) -> int:
        t = parse_telemetry(payload)
        self.received += 1
        if t.seq in self.stored:
            self.duplicates += 1
        self.stored.add(t.seq)
        return t.seq


@pytest.mark.slow
def test_a_week_offline_stays_under_50_mib_and_replays_exactly_once_on_reconnect(fast_dir):
    b = Backlog(fast_dir / "backlog.sqlite", max_rows=100_000)
    t0 = 1_767_225_600  # a simulated clock: 2026-01-01, never the wall clock
    now = t0
    report_seq = b.next_seq("report")
    b.add("report", report_seq, b'{"stage": "commit", "status": "ok"}', now)  # an install outcome, offline too
    largest = 0
    while now < t0 + WEEK_S:
        seq = b.next_seq("telemetry")
        b.add("telemetry", seq, _window(seq, now), now)
        now += WINDOW_S
        if seq % 8640 == 0:  # once a simulated day
            largest = max(largest, b.stats(now)["bytes"])
    st = b.stats(now)
    assert seq == WEEK_S // WINDOW_S
    assert largest <= MAX_BYTES and st["bytes"] <= MAX_BYTES
    assert st["dropped"] > 0 and st["size"] + st["dropped"] == seq + 1  # every window kept or counted
    kept = st["size"]

    hub = Hub()
    acked_reports: list[int] = []
    lost_once = False
    rounds = 0
    while True:  # reconnected: the daemon's flush loop (agent.daemon._flush), resend_after 15 s
        due = b.due(now, 15.0, limit=200)
        if not due:
            break
        b.mark_sent([(k, s) for k, s, _ in due], now)
        acks: dict[str, list[int]] = {"report": [], "telemetry": []}
        for kind, seq, payload in due:
            acks[kind].append(hub.take(payload) if kind == "telemetry" else seq)
        rounds += 1
        if rounds == 3 and not lost_once:  # the link drops before these acks arrive: resent later
            lost_once = True
            now += 16
            continue
        acked_reports += acks["report"]
        for kind, seqs in acks.items():
            b.ack(kind, seqs)
        now += 1
    assert acked_reports == [report_seq]  # the install report survived the week: it is never dropped first
    assert len(hub.stored) == kept - 1  # every kept window stored exactly once ...
    assert min(hub.stored) == st["dropped"] + 1 and max(hub.stored) == seq  # what went was the oldest
    assert hub.duplicates == 200 and hub.received == kept - 1 + 200  # ... the resent batch only as replays
    assert b.stats(now)["size"] == 0 and b.stats(now)["bytes"] == 0
    b.close()


def test_telemetry_is_dropped_before_install_reports(tmp_path):
    b = Backlog(tmp_path / "b.sqlite", max_rows=1000, max_bytes=10_000)
    b.add("report", 1, b"r" * 3000, 1.0)
    for i in range(1, 20):
        b.add("telemetry", i, b"t" * 1000, 1.0 + i)
    kinds = [k for k, _, _ in b.due(100.0, 0.0, 100)]
    assert kinds.count("report") == 1 and kinds.count("telemetry") == 7
    assert b.stats(100.0)["bytes"] == 10_000 and b.stats(100.0)["dropped"] == 12
    b.close()


def test_a_torn_backlog_is_moved_aside_and_its_sequence_numbers_never_reused(tmp_path):
    path = tmp_path / "backlog.sqlite"
    b = Backlog(path)
    for _ in range(50):
        seq = b.next_seq("telemetry")
        b.add("telemetry", seq, b"x" * 5000, float(seq))
    b.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])  # a torn write
    b = Backlog(path)
    assert (tmp_path / "backlog.sqlite.corrupt").exists()
    assert b.stats(0.0)["size"] == 0
    assert b.next_seq("telemetry") > 50 and b.next_seq("report") > 1_000_000_000_000  # ms since 1970
    b.close()


def test_a_message_the_hub_never_acks_is_sent_again_after_waits_that_double_up_to_sixteen_times(tmp_path):
    """A hub that fell behind gets each unacked message again after 15, 30, 60, 120, then every
    240 s (agent default resend_after 15 s), not every 15 s for as long as it stays behind; a new
    connection (resend_after 0) still sends everything at once."""
    b = Backlog(tmp_path / "b.sqlite")
    seq = b.next_seq("report")
    b.add("report", seq, b"{}", 0.0)
    sends = []
    for now in range(0, 1200):  # the daemon's flush loop, once a second
        due = b.due(float(now), 15.0)
        if due:
            b.mark_sent([(k, s) for k, s, _ in due], float(now))
            sends.append(now)
    assert [b - a for a, b in zip(sends, sends[1:], strict=False)][:7] == [16, 31, 61, 121, 241, 241, 241], sends
    assert [k for k, _, _ in b.due(float(sends[-1]) + 1, 0.0)] == ["report"]  # reconnected: at once
    assert [resend_wait(15.0, n) for n in range(7)] == [0.0, 15.0, 30.0, 60.0, 120.0, 240.0, 240.0]
    b.close()
