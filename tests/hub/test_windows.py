"""Maintenance windows (``hub.windows``), table-tested: time zones, DST, windows that wrap past
midnight, and every bad spec refused naming its field. Time is an argument (unix seconds)."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from hub.windows import Window, WindowError, is_open, next_open


def ts(text: str, tz: str = "UTC") -> int:
    """'2026-12-03 01:30' in ``tz`` -> unix seconds."""
    return int(datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz)).timestamp())


def utc(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


# 2026-12-03 is a Thursday
@pytest.mark.parametrize(
    ("spec", "tz", "now", "open_"),
    [
        ("days=mon-fri start=01:00 duration=3h", "UTC", "2026-12-03 00:59", False),
        ("days=mon-fri start=01:00 duration=3h", "UTC", "2026-12-03 01:00", True),
        ("days=mon-fri start=01:00 duration=3h", "UTC", "2026-12-03 03:59", True),
        ("days=mon-fri start=01:00 duration=3h", "UTC", "2026-12-03 04:00", False),
        ("days=mon-fri start=01:00 duration=3h", "UTC", "2026-12-05 02:00", False),  # Saturday
        # the same window in Berlin (UTC+1 in December) opens an hour earlier in UTC
        ("days=mon-fri start=01:00 duration=3h", "Europe/Berlin", "2026-12-03 00:30", True),
        ("days=mon-fri start=01:00 duration=3h", "Europe/Berlin", "2026-12-03 03:30", False),
        # wraps past midnight: a Friday 23:00 window is open early on Saturday
        ("days=fri start=23:00 duration=3h", "UTC", "2026-12-05 01:59", True),
        ("days=fri start=23:00 duration=3h", "UTC", "2026-12-05 02:00", False),
        ("days=fri start=23:00 duration=3h", "UTC", "2026-12-04 22:59", False),
        # wrap past Sunday in a day range
        ("days=sat-mon start=10:00 duration=1h", "UTC", "2026-12-07 10:30", True),  # Monday
        ("days=sat-mon start=10:00 duration=1h", "UTC", "2026-12-08 10:30", False),  # Tuesday
        ("days=* start=00:00 duration=24h", "Pacific/Auckland", "2026-12-03 12:00", True),
        ("start=12:00 duration=2d", "UTC", "2026-12-03 11:00", True),  # Wednesday's is still open
    ],
)
def test_window_is_open_at_the_local_times_it_names(spec: str, tz: str, now: str, open_: bool) -> None:
    assert is_open(spec, tz, utc(now)) is open_


def test_next_open_is_the_next_local_start_and_now_while_open() -> None:
    spec = "days=mon-fri start=01:00 duration=3h"
    # Friday 05:00 in New York: next is Monday 01:00 New York time
    assert next_open(spec, "America/New_York", ts("2026-12-04 05:00", "America/New_York")) == ts(
        "2026-12-07 01:00", "America/New_York"
    )
    now = ts("2026-12-04 02:00", "America/New_York")
    assert next_open(spec, "America/New_York", now) == now


@pytest.mark.parametrize(
    ("spec", "local_now", "open_", "why"),
    [
        # 2026-03-29: Berlin springs forward 02:00 -> 03:00
        ("start=02:30 duration=1h", "2026-03-29 03:29", False, "02:30 does not exist: opens at 03:30"),
        ("start=02:30 duration=1h", "2026-03-29 03:30", True, "the start read with the old offset"),
        ("start=01:00 duration=3h", "2026-03-29 04:59", True, "3 real hours: 01:00 + 3h = 05:00 local"),
        ("start=01:00 duration=3h", "2026-03-29 05:00", False, "closed at 05:00 local"),
        # 2026-10-25: Berlin falls back 03:00 -> 02:00 (02:xx happens twice)
        ("start=02:30 duration=30m", "2026-10-25 01:59", False, "before the first 02:30"),
        ("start=01:00 duration=3h", "2026-10-25 02:59", True, "3 real hours: 01:00 + 3h = 03:00 local"),
    ],
)
def test_dst_transitions_in_berlin(spec: str, local_now: str, open_: bool, why: str) -> None:
    assert is_open(spec, "Europe/Berlin", ts(local_now, "Europe/Berlin")) is open_, why


def test_a_start_in_the_autumn_fold_opens_at_its_first_occurrence() -> None:
    w = Window.parse("start=02:30 duration=30m", "Europe/Berlin")
    first = datetime(2026, 10, 25, 2, 30, tzinfo=ZoneInfo("Europe/Berlin"), fold=0)
    assert w.next_open(int(first.timestamp()) - 60) == int(first.timestamp())
    # an hour later the wall clock reads 02:30 again, but the 30-minute window has closed
    assert not w.is_open(int(first.timestamp()) + 3600)


def test_the_spring_forward_day_has_a_window_and_next_open_finds_it() -> None:
    w = Window.parse("start=02:30 duration=1h", "Europe/Berlin")
    got = w.next_open(ts("2026-03-29 00:00", "Europe/Berlin"))
    assert got == ts("2026-03-29 03:30", "Europe/Berlin")


@pytest.mark.parametrize(
    ("spec", "tz", "names"),
    [
        ("start=1am duration=3h", "UTC", "start=1am"),
        ("start=24:00 duration=3h", "UTC", "start=24:00"),
        ("start=01:00 duration=3x", "UTC", "duration=3x"),
        ("start=01:00 duration=0m", "UTC", "duration=0m"),
        ("start=01:00 duration=8d", "UTC", "duration=8d"),
        ("days=mon-fry start=01:00 duration=1h", "UTC", "'fry'"),
        ("days=mon start=01:00", "UTC", "no duration"),
        ("duration=1h", "UTC", "no start"),
        ("start=01:00 duration=1h every=2", "UTC", "'every'"),
        ("start=01:00 start=02:00 duration=1h", "UTC", "'start' given twice"),
        ("start 01:00", "UTC", "key=value"),
        ("start=01:00 duration=1h", "Mars/Olympus", "'Mars/Olympus'"),
        ("start=01:00 duration=1h", "../etc/passwd", "'../etc/passwd'"),
        ("start=01:00 duration=1h", "", "time zone ''"),
    ],
)
def test_a_bad_window_is_refused_naming_the_bad_field(spec: str, tz: str, names: str) -> None:
    with pytest.raises(WindowError, match=names.replace("(", r"\(")):
        Window.parse(spec, tz)


@pytest.mark.parametrize(
    ("spec", "canonical"),
    [
        ("start=1:05 duration=90m", "days=* start=01:05 duration=1h30m"),
        ("days=FRI-MON start=22:00 duration=2d", "days=mon,fri-sun start=22:00 duration=2d"),
        ("days=mon,tue,wed,thu,fri start=01:00 duration=3h", "days=mon-fri start=01:00 duration=3h"),
        ("days=mon,tue,thu start=01:00 duration=3h", "days=mon,tue,thu start=01:00 duration=3h"),
        ("days=mon,mon start=00:00 duration=24h", "days=mon start=00:00 duration=1d"),
    ],
)
def test_a_window_reads_back_in_one_canonical_form(spec: str, canonical: str) -> None:
    w = Window.parse(spec, "UTC")
    assert w.spec() == canonical
    assert Window.parse(w.spec(), "UTC") == w
