"""Maintenance windows: when a group's devices may be told to install. Pure: no clock, no I/O.

A window is a small spec string plus an IANA time zone (``zoneinfo``)::

    days=mon-fri start=01:00 duration=3h        (tz "Europe/Berlin")
    days=sat,sun start=22:30 duration=90m
    days=* start=00:00 duration=24h             (always open)

* ``days``: ``*`` or a comma list of days and ranges (``mon``..``sun``; a range may wrap,
  ``fri-mon``); the days on which a window *starts*, in the window's time zone. Default ``*``.
* ``start``: local wall-clock ``HH:MM`` (required).
* ``duration``: ``90m``, ``3h``, ``1h30m``, ``2d`` (1 minute to 7 days; required). It is
  elapsed time: a window that runs past midnight stays open into the next day (``days=fri
  start=23:00 duration=3h`` is open Saturday until 02:00), and across a DST change it lasts
  ``duration`` of real time (a 3 h window from 01:00 on the spring-forward night closes at
  05:00 local, 3 real hours later).

DST: a ``start`` that does not exist that day (inside the spring-forward gap) is read as
PEP 495 reads it (``fold=0``: the offset before the change), so 02:30 opens at 03:30 local,
the same instant as "02:30 on the old clock"; a ``start`` that happens twice (the autumn fold)
opens at its first occurrence. Both cases are in ``tests/hub/test_windows.py``.

Why not 5-field cron: a window needs a start *and* a length, cron gives only the start, and
only ``minute hour * * dow`` of it made sense here; ``days start duration`` says the same in
words an operator reads back correctly (a bad field is named in :class:`WindowError`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MAX_DURATION_S = 7 * 86400
_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?$")
_CLOCK = re.compile(r"^(\d{1,2}):(\d{2})$")


class WindowError(ValueError):
    """A window spec or time zone is invalid; the message names the field and the bad value."""


@dataclass(frozen=True)
class Window:
    """A parsed window: the weekdays it starts on (0 = Monday), its local start and its length."""

    days: frozenset[int]
    start: time
    duration_s: int
    tz: str

    @classmethod
    def parse(cls, spec: str, tz: str) -> Window:
        """``spec`` as in the module docstring, ``tz`` an IANA name; :class:`WindowError` names
        the first bad field."""
        _zone(tz)
        fields: dict[str, str] = {}
        for word in spec.split():
            key, sep, value = word.partition("=")
            if not sep or not value:
                raise WindowError(f"window field {word!r} must be key=value (days=, start=, duration=)")
            if key not in ("days", "start", "duration"):
                raise WindowError(f"unknown window field {key!r} in {spec!r}; known: days, start, duration")
            if key in fields:
                raise WindowError(f"window field {key!r} given twice in {spec!r}")
            fields[key] = value.lower()
        for key in ("start", "duration"):
            if key not in fields:
                raise WindowError(f"window spec {spec!r} has no {key}= field")
        return cls(_days(fields.get("days", "*")), _start(fields["start"]), _duration(fields["duration"]), tz)

    def spec(self) -> str:
        """The canonical spec string (what the hub stores and shows)."""
        days = "*" if len(self.days) == 7 else _day_list(sorted(self.days))
        d, rest = divmod(self.duration_s, 86400)
        h, rest = divmod(rest, 3600)
        m = rest // 60
        dur = "".join(f"{n}{u}" for n, u in ((d, "d"), (h, "h"), (m, "m")) if n) or "0m"
        return f"days={days} start={self.start:%H:%M} duration={dur}"

    def _starts(self, first: date, count: int) -> list[datetime]:
        """Window start instants (aware, UTC) on the ``count`` local days from ``first``."""
        zone = _zone(self.tz)
        out = []
        for i in range(count):
            day = first + timedelta(days=i)
            if day.weekday() in self.days:
                out.append(datetime.combine(day, self.start, tzinfo=zone).astimezone(UTC))
        return out

    def open_until(self, now: int) -> int | None:
        """The unix second the window that is open at ``now`` closes, or None when it is closed."""
        at = datetime.fromtimestamp(now, UTC)
        local = at.astimezone(_zone(self.tz)).date()
        back = self.duration_s // 86400 + 1  # a window that started this many days ago may still be open
        ends = [
            int(s.timestamp()) + self.duration_s
            for s in self._starts(local - timedelta(days=back), back + 1)
            if s <= at < s + timedelta(seconds=self.duration_s)
        ]
        return max(ends) if ends else None

    def is_open(self, now: int) -> bool:
        return self.open_until(now) is not None

    def next_open(self, now: int) -> int:
        """``now`` when the window is open, else the unix second it next opens."""
        if self.is_open(now):
            return now
        local = datetime.fromtimestamp(now, UTC).astimezone(_zone(self.tz)).date()
        for s in self._starts(local, 9):  # every weekday appears within 8 local days
            if int(s.timestamp()) > now:
                return int(s.timestamp())
        raise AssertionError(f"window {self.spec()} has no start within 9 days of {now}")  # days is never empty


def is_open(spec: str, tz: str, now: int) -> bool:
    return Window.parse(spec, tz).is_open(now)


def next_open(spec: str, tz: str, now: int) -> int:
    return Window.parse(spec, tz).next_open(now)


def _zone(tz: str) -> ZoneInfo:
    if not tz or tz != tz.strip() or tz.startswith("/") or ".." in tz:
        raise WindowError(f"time zone {tz!r} is not an IANA name like 'Europe/Berlin' or 'UTC'")
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise WindowError(f"time zone {tz!r} is not an IANA name like 'Europe/Berlin' or 'UTC'") from None


def _day(name: str, whole: str) -> int:
    if name not in DAYS:
        raise WindowError(f"days={whole}: {name!r} is not one of {', '.join(DAYS)}")
    return DAYS.index(name)


def _days(text: str) -> frozenset[int]:
    if text in ("*", "daily"):
        return frozenset(range(7))
    out: set[int] = set()
    for part in text.split(","):
        lo, sep, hi = part.partition("-")
        a = _day(lo, text)
        if not sep:
            out.add(a)
            continue
        b = _day(hi, text)
        i = a
        out.add(i)
        while i != b:  # a range may wrap past Sunday: fri-mon
            i = (i + 1) % 7
            out.add(i)
    return frozenset(out)


def _day_list(days: list[int]) -> str:
    """Sorted weekday numbers as names, runs of three or more as ranges: 'mon-fri,sun'."""
    runs: list[list[int]] = []
    for d in days:
        if runs and d == runs[-1][-1] + 1:
            runs[-1].append(d)
        else:
            runs.append([d])
    return ",".join(f"{DAYS[r[0]]}-{DAYS[r[-1]]}" if len(r) >= 3 else ",".join(DAYS[d] for d in r) for r in runs)


def _start(text: str) -> time:
    m = _CLOCK.match(text)
    if not m or int(m.group(1)) > 23 or int(m.group(2)) > 59:
        raise WindowError(f"start={text}: expected a local time HH:MM between 00:00 and 23:59")
    return time(int(m.group(1)), int(m.group(2)))


def _duration(text: str) -> int:
    m = _DURATION.match(text)
    if not m or not any(m.groups()):
        raise WindowError(f"duration={text}: expected minutes, hours or days like 90m, 3h, 1h30m, 2d")
    d, h, mins = (int(x or 0) for x in m.groups())
    s = d * 86400 + h * 3600 + mins * 60
    if not 60 <= s <= MAX_DURATION_S:
        raise WindowError(f"duration={text}: must be between 1m and 7d")
    return s
