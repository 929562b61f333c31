"""The pure rules of escalation to the cloud by confidence (agent.escalation), table-tested."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agent.errors import ConfigError
from agent.escalation import (
    DAY_S,
    Breaker,
    Escalator,
    Policy,
    allow,
    confidence,
    decide,
    full_budget,
    settle,
    take,
)

P = Policy(escalate_to="mobilenet_v2_big")


def det(*scores: float) -> dict[str, object]:
    return {"task": "detection", "detections": [{"score": s} for s in scores]}


@pytest.mark.parametrize(
    ("measure", "doc", "scores", "want"),
    [
        ("max_score", {"task": "classification"}, [0.1, 0.7, 0.2], 0.7),
        ("max_score", {"task": "classification"}, [0.25, 0.25, 0.25, 0.25], 0.25),
        ("max_score", {"task": "classification"}, [0.0, 0.0], 0.5),  # all zero: uniform
        ("max_score", {"task": "classification"}, [2.0, 0.0], math.exp(2) / (math.exp(2) + 1)),  # logits: softmax
        ("entropy", {"task": "classification"}, [1.0, 0.0, 0.0], 1.0),
        ("entropy", {"task": "classification"}, [0.25, 0.25, 0.25, 0.25], 0.0),
        ("entropy", {"task": "classification"}, [1.0], 1.0),
        ("entropy", {"task": "classification"}, [0.5, 0.5, 0.0, 0.0], 0.5),
        ("mean_score", det(0.9, 0.7, 0.2), None, 0.8),  # 0.2 is under score_threshold 0.5
        ("mean_score", det(0.3), None, 0.0),  # nothing above: "escalate" -> 0
        ("mean_score", det(), None, 0.0),
    ],
)
def test_confidence_of_each_measure(
    measure: str, doc: dict[str, object], scores: list[float] | None, want: float
) -> None:
    p = Policy(escalate_to="big", measure=measure)
    arr = None if scores is None else np.asarray(scores, dtype=np.float32)
    assert confidence(p, doc, arr) == pytest.approx(want, abs=1e-6)


def test_no_detections_kept_when_the_policy_says_so() -> None:
    assert confidence(Policy(escalate_to="big", measure="mean_score", no_detections="keep"), det(), None) == 1.0


@pytest.mark.parametrize(
    ("measure", "doc", "scores", "says"),
    [
        ("mean_score", {"task": "classification"}, np.ones(3, dtype=np.float32) / 3, "'classification'"),
        ("max_score", det(0.9), None, "'detection'"),
        ("entropy", {"task": "segmentation"}, None, "'segmentation'"),
    ],
)
def test_a_measure_that_does_not_fit_the_task_is_refused(
    measure: str, doc: dict[str, object], scores: np.ndarray | None, says: str
) -> None:
    with pytest.raises(ConfigError, match=says):
        confidence(Policy(escalate_to="big", measure=measure), doc, scores)


@pytest.mark.parametrize(
    ("doc", "says"),
    [
        ({}, "escalate_to"),
        ({"escalate_to": "big", "measure": "margin"}, "measure.*'margin'"),
        ({"escalate_to": "big", "threshold": 1.5}, "threshold.*1.5"),
        ({"escalate_to": "big", "timeout_ms": 0}, "timeout_ms.*0"),
        ({"escalate_to": "big", "bytes_per_day": -1}, "bytes_per_day.*-1"),
        ({"escalate_to": "big", "failures": 2.5}, "failures.*2.5"),
        ({"escalate_to": "big", "no_detections": "maybe"}, "no_detections.*'maybe'"),
        ({"escalate_to": "big", "requests_per_minute": True}, "requests_per_minute.*True"),
    ],
)
def test_a_bad_policy_names_the_key_and_value(doc: dict[str, object], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        Policy.from_dict(doc)


def test_policy_keeps_unknown_keys() -> None:
    p = Policy.from_dict({"escalate_to": "big", "threshold": 0.4, "future": 1})
    assert (p.threshold, p.extra) == (0.4, {"future": 1})


@pytest.mark.parametrize(
    ("conf", "breaker", "budget", "want"),
    [
        (0.9, False, False, "confident"),
        (0.5, True, True, "confident"),  # at the threshold: confident
        (0.49, True, True, "escalate"),
        (0.1, False, True, "breaker_open"),
        (0.1, False, False, "breaker_open"),  # the breaker is checked first: no budget spent
        (0.1, True, False, "budget"),
    ],
)
def test_decision_table(conf: float, breaker: bool, budget: bool, want: str) -> None:
    assert decide(conf, P, breaker, budget) == want


def test_request_budget_refills_at_its_rate() -> None:
    p = Policy(escalate_to="big", requests_per_minute=2)
    b = full_budget(p, 0.0)
    b, ok1 = take(p, b, 0.0, 0.0, 10)
    b, ok2 = take(p, b, 0.0, 0.0, 10)
    b, ok3 = take(p, b, 1.0, 0.0, 10)
    assert (ok1, ok2, ok3) == (True, True, False)
    b, ok4 = take(p, b, 30.0, 0.0, 10)  # half a minute: one token back
    assert ok4
    b, ok5 = take(p, b, 3600.0, 0.0, 10)  # an hour idle holds at most a minute's worth
    b, ok6 = take(p, b, 3600.0, 0.0, 10)
    b, ok7 = take(p, b, 3600.0, 0.0, 10)
    assert (ok5, ok6, ok7) == (True, True, False)


def test_byte_budget_resets_at_utc_midnight() -> None:
    p = Policy(escalate_to="big", requests_per_minute=1000, bytes_per_day=100)
    b = full_budget(p, 0.0)
    b, ok1 = take(p, b, 0.0, DAY_S - 10, 60)
    b, ok2 = take(p, b, 1.0, DAY_S - 9, 60)  # 120 > 100
    assert (ok1, ok2, b.bytes_today) == (True, False, 60)
    b, ok3 = take(p, b, 20.0, DAY_S + 1, 60)
    assert (ok3, b.bytes_today) == (True, 60)


def test_breaker_opens_after_consecutive_failures_within_the_window() -> None:
    p = Policy(escalate_to="big", failures=3, window_s=10, cooldown_s=5, max_cooldown_s=20)
    b = Breaker()
    b = settle(p, b, 0.0, ok=False)
    b = settle(p, b, 1.0, ok=False)
    assert b.state == "closed"
    b = settle(p, b, 2.0, ok=False)
    assert (b.state, b.cooldown_s) == ("open", 5)
    assert allow(p, b, 6.9) == (b, False)


def test_breaker_forgets_failures_outside_the_window_or_after_a_success() -> None:
    p = Policy(escalate_to="big", failures=2, window_s=10)
    assert settle(p, settle(p, Breaker(), 0.0, False), 10.0, False).state == "closed"  # 10 s apart
    b = settle(p, settle(p, Breaker(), 0.0, False), 1.0, True)
    assert settle(p, b, 2.0, False).state == "closed"


def test_breaker_half_open_probe_closes_on_success_and_backs_off_on_failure() -> None:
    p = Policy(escalate_to="big", failures=1, cooldown_s=5, max_cooldown_s=12)
    b = settle(p, Breaker(), 0.0, False)
    b, may = allow(p, b, 5.0)
    assert (b.state, may) == ("half_open", True)
    assert allow(p, b, 5.1)[1] is False  # only the probe goes
    b = settle(p, b, 5.2, False)
    assert (b.state, b.cooldown_s) == ("open", 10)
    b = settle(p, allow(p, b, 15.2)[0], 15.3, False)
    assert b.cooldown_s == 12  # capped
    b, may = allow(p, b, 27.3)
    assert may and settle(p, b, 27.4, True) == Breaker()


def test_escalator_counts_each_outcome_and_stops_trying_when_open() -> None:
    e = Escalator(Policy(escalate_to="big", failures=2, cooldown_s=5, requests_per_minute=100), 0.0, 0.0)
    assert e.ask(0.9, 10, 0.0, 0.0) == "confident"
    assert e.ask(0.1, 10, 0.0, 0.0) == "escalate"
    e.done(True, 0.1)
    for t in (1.0, 2.0):
        assert e.ask(0.1, 10, t, t) == "escalate"
        e.done(False, t)
    assert [e.ask(0.1, 10, t, t) for t in (3.0, 4.0)] == ["breaker_open"] * 2
    assert e.ask(0.1, 10, 7.5, 7.5) == "escalate"  # the probe
    assert e.ask(0.1, 10, 7.6, 7.6) == "breaker_open"
    e.done(True, 7.7)
    assert e.breaker.state == "closed"
    assert e.snapshot() == {"escalated": 2, "escalation_failed": 2, "breaker_open": 3, "budget": 0}


def test_escalator_budget_refusal_does_not_take_the_probe() -> None:
    e = Escalator(Policy(escalate_to="big", failures=1, cooldown_s=1, requests_per_minute=1), 0.0, 0.0)
    assert e.ask(0.1, 10, 0.0, 0.0) == "escalate"
    e.done(False, 0.0)
    assert e.ask(0.1, 10, 1.5, 1.5) == "budget"  # cool-down over, but no token
    assert e.breaker.state == "open"
    assert e.ask(0.1, 10, 61.0, 61.0) == "escalate"
