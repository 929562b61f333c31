"""Metered links: the daily byte budget and the download rate cap, on a simulated clock
(agent/budget.py)."""

from __future__ import annotations

import json

import pytest

from agent.budget import Bucket, Ledger, Meter, Verdict, day_of, download_verdict, pace, spend, verdict

DAY = 86400
T0 = 20_000 * DAY  # a UTC midnight (2024-10-04), simulated
MB = 1_000_000


@pytest.mark.parametrize(
    "ledger, kind, n, now, daily, want",
    [
        (Ledger(20_000), "telemetry", 1000, T0 + 5, None, Verdict(True)),  # no budget: no cap
        (Ledger(20_000, bundle=9 * MB), "telemetry", 1000, T0 + 5, 10 * MB, Verdict(True)),
        (Ledger(20_000, bundle=9 * MB, telemetry=MB - 1000), "telemetry", 1000, T0 + 5, 10 * MB, Verdict(True)),
        (Ledger(20_000, bundle=9 * MB, telemetry=MB - 999), "telemetry", 1000, T0 + 5, 10 * MB, "wait"),
        (Ledger(20_000, telemetry=10 * MB), "report", 5000, T0 + 5, 10 * MB, Verdict(True)),  # reports always go
        (Ledger(20_000, telemetry=10 * MB), "telemetry", 1000, T0 + DAY, 10 * MB, Verdict(True)),  # a new day
        (Ledger(19_999, telemetry=10 * MB), "telemetry", 1000, T0, 10 * MB, Verdict(True)),
    ],
)
def test_the_daily_budget_holds_telemetry_and_never_reports(ledger, kind, n, now, daily, want):
    got = verdict(ledger, kind, n, now, daily)
    if want == "wait":
        assert not got.send and got.retry_at == T0 + DAY and "budget" in got.why
    else:
        assert got == want


@pytest.mark.parametrize(
    "ledger, remaining, now, send",
    [
        (Ledger(20_000), 4 * MB, T0 + 60, True),
        (Ledger(20_000, telemetry=7 * MB), 4 * MB, T0 + 60, False),  # waits for tomorrow
        (Ledger(20_000, telemetry=7 * MB), 4 * MB, T0 + DAY + 1, True),  # tomorrow
        (Ledger(20_000), 25 * MB, T0 + 60, True),  # larger than a day's budget: starts on a fresh day
        (Ledger(20_000, report=1), 25 * MB, T0 + 60, False),  # ... not on one already begun
    ],
)
def test_a_download_starts_only_when_what_is_left_fits_todays_budget(ledger, remaining, now, send):
    v = download_verdict(ledger, remaining, now, 10 * MB)
    assert v.send == send
    if not send:
        assert v.retry_at == (day_of(now) + 1) * DAY


def test_spending_rolls_over_at_utc_midnight_and_names_a_bad_kind():
    led = spend(spend(Ledger(20_000), "bundle", 500, T0 + 1), "telemetry", 20, T0 + 2)
    assert led == Ledger(20_000, 500, 20, 0) and led.total == 520
    assert spend(led, "report", 7, T0 + DAY) == Ledger(20_001, 0, 0, 7)
    with pytest.raises(ValueError, match="'video'"):
        spend(led, "video", 1, T0)


def test_the_rate_cap_spaces_chunks_at_the_rate():
    bucket, now, waits = Bucket(50_000.0, T0), float(T0), []
    for _ in range(10):  # 10 chunks of 64 KiB at 50 kB/s, sent as soon as allowed
        bucket, wait = pace(bucket, 65536, now, 50_000.0, 65536.0)
        now += wait
        waits.append(wait)
    assert waits[0] == pytest.approx(15536 / 50_000)
    assert all(w == pytest.approx(65536 / 50_000) for w in waits[1:])
    assert (now - T0) * 50_000 == pytest.approx(10 * 65536 - 50_000)  # the first second was in the bucket
    bucket, wait = pace(bucket, 1000, now + 100, 50_000.0, 65536.0)  # idle: a full bucket, no wait
    assert wait == 0 and bucket.tokens == 65536 - 1000


def test_the_meter_keeps_todays_spending_across_a_restart_and_reports_it(tmp_path):
    clock = [float(T0 + 3600)]
    slept: list[float] = []

    def sleep(s: float) -> None:  # the simulated clock moves while the network thread waits
        slept.append(s)
        clock[0] += s

    m = Meter(tmp_path / "budget.json", 1 * MB, 100_000, lambda: clock[0], sleep)
    for _ in range(4):
        m.chunk(65536)
    assert sum(slept) == pytest.approx((4 * 65536 - 100_000) / 100_000)
    m.spend("telemetry", 2000)
    m.spend("report", 300)
    m.save()
    again = Meter(tmp_path / "budget.json", 1 * MB, None, lambda: clock[0])
    assert again.usage() == {
        "day": 20_000,
        "bundle": 4 * 65536,
        "telemetry": 2000,
        "report": 300,
        "samples": 0,
        "budget": MB,
        "rate_bytes_s": None,
        "left": MB - 4 * 65536 - 2300,
    }
    assert not again.allows("telemetry", MB).send and again.allows("report", MB).send
    clock[0] += DAY
    assert again.usage()["bundle"] == 0 and again.allows("telemetry", 1000).send
    clock[0] -= DAY
    (tmp_path / "budget.json").write_text(json.dumps({"day": "x"}))  # unreadable: a fresh day, not a crash
    assert Meter(tmp_path / "budget.json", MB, None, lambda: clock[0]).usage()["bundle"] == 0


def _config(tmp_path, body: str, env: dict[str, str] | None = None):
    from agent.config import load

    (tmp_path / "root.json").write_text("{}")
    p = tmp_path / "agent.toml"
    p.write_text('device_id = "dev1"\nbroker = "mqtt://127.0.0.1:1883"\nstate_dir = "s"\nroot = "root.json"\n' + body)
    return load(p, env=env or {})


def test_a_metered_link_is_configured_by_bytes_and_a_zero_budget_is_refused_naming_the_key(tmp_path):
    from agent.errors import ConfigError

    cfg = _config(tmp_path, "daily_byte_budget = 20000000\ndownload_rate_bytes_s = 50000\n")
    assert (cfg.daily_byte_budget, cfg.download_rate_bytes_s, cfg.backlog_max_bytes) == (20_000_000, 50_000, 50 << 20)
    assert _config(tmp_path, "").daily_byte_budget is None  # no cap unless asked
    for body, key in (
        ("daily_byte_budget = 0\n", "daily_byte_budget"),
        ("download_rate_bytes_s = -5\n", "download_rate"),
        ("download_rate_bytes_s = 1000\n", "keepalive"),
    ):
        with pytest.raises(ConfigError, match=key):
            _config(tmp_path, body)
