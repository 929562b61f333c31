"""The benchmark stage's wire formats (protocol.benchmark): parsed once, unknown fields kept,
bad fields named."""

from __future__ import annotations

import pytest

from protocol.benchmark import BenchmarkReport, BenchmarkRequest, Timing, percentile, request_of
from protocol.errors import BadPayload


def test_request_rides_in_a_desired_documents_unknown_fields_and_keeps_its_own():
    req = request_of({"benchmark": {"bundle": "ab" * 32, "invokes": 50, "future": 1}, "other": 2})
    assert req == BenchmarkRequest("ab" * 32, 50)
    assert req is not None and req.to_dict() == {"bundle": "ab" * 32, "invokes": 50, "future": 1}
    assert request_of({"other": 2}) is None


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ({"bundle": "x", "invokes": 0}, "invokes must be within 1..10000, got 0"),
        ({"bundle": "x", "invokes": True}, "invokes must be an integer, got True"),
        ({"invokes": 5}, "bundle must be a non-empty string, got None"),
        ("50", "expected an object"),
    ],
)
def test_bad_request_is_refused_naming_the_field(raw, says):
    with pytest.raises(BadPayload, match="desired benchmark") as exc:
        request_of({"benchmark": raw})
    assert says in str(exc.value)


def test_report_round_trips_with_unknown_fields_and_says_its_ratio():
    r = BenchmarkReport(
        "sha", True, "fine", Timing(10, 2.0, 4.0), Timing(10, 1.0, 2.0), "selftest vectors (1)", {"x": 1}
    )
    back = BenchmarkReport.from_dict(r.to_dict())
    assert back == r and back.extra == {"x": 1} and back.p95_ratio == 2.0


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ({"bundle": "s", "ok": "yes"}, "ok must be true or false"),
        (
            {"bundle": "s", "ok": True, "candidate": {"n": 3, "p50_ms": -1, "p95_ms": 2}},
            "p50_ms must be a finite number >= 0",
        ),
        ({"bundle": "s", "ok": True, "current": {"n": 0, "p50_ms": 1, "p95_ms": 2}}, "needs n >= 1"),
    ],
)
def test_bad_report_is_refused_naming_the_field(raw, says):
    with pytest.raises(BadPayload) as exc:
        BenchmarkReport.from_dict(raw)
    assert says in str(exc.value)


@pytest.mark.parametrize(
    ("values", "q", "want"),
    [
        ([5.0], 95, 5.0),
        ([1.0, 2.0, 3.0, 4.0], 50, 2.0),
        (list(map(float, range(1, 101))), 95, 95.0),
        ([3.0, 1.0, 2.0], 100, 3.0),
    ],
)
def test_percentile_is_nearest_rank(values, q, want):
    assert percentile(values, q) == want
