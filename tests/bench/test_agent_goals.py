"""Issue 20 part 3's goal check (`bench._agent_goals`): the agent against the floor server plus
a libjpeg-turbo decode, and the tensor path against the floor, from paired rounds."""

from __future__ import annotations

import numpy as np
import pytest

from bench._agent_goals import check, excess_ms, fastest, over_pct, verdict


def _rounds(n: int, seed: int) -> np.ndarray:
    """Floor round trips that switch between a 40 ms and an 80 ms phase, as this VM's do."""
    rng = np.random.default_rng(seed)
    phase = np.where((np.arange(n) // 25) % 2 == 0, 40.0, 80.0)
    return phase * rng.normal(1, 0.01, n)


def test_excess_recovers_what_the_agent_spends_beyond_floor_and_decode():
    rng = np.random.default_rng(3)
    floor = _rounds(300, 3)
    decode = rng.normal(0.9, 0.02, 300)
    agent = floor + decode + 0.5 + rng.normal(0, 0.05, 300)
    est, lo, hi = excess_ms(list(agent), list(floor), list(decode))
    assert 0.48 < est < 0.52 and lo < 0.5 < hi


def test_an_agent_half_a_millisecond_over_misses_the_jpeg_goal():
    floor = _rounds(200, 4)
    decode = np.full(200, 0.8)
    goals = check({"agent": list(floor + decode + 0.5), "floor": list(floor)}, {"simplejpeg": list(decode)}, None)
    assert goals[0].verdict == "not met"


def test_the_faster_binding_is_the_decode_reference():
    floor = _rounds(200, 5)
    fast, slow = np.full(200, 0.6), np.full(200, 1.2)
    agent = floor + 1.2  # only within 0.3 ms if the reference were the slow decoder
    goals = check({"agent": list(agent), "floor": list(floor)}, {"pillow": list(slow), "simplejpeg": list(fast)}, None)
    assert fastest({"pillow": list(slow), "simplejpeg": list(fast)}) == "simplejpeg"
    assert goals[0].verdict == "not met" and "reference simplejpeg" in goals[0].detail


def test_tensor_within_five_percent_of_the_floor_is_met():
    rng = np.random.default_rng(6)
    floor = _rounds(300, 6)
    agent = floor * 1.02 * rng.normal(1, 0.005, 300)
    goals = check(None, {}, {"agent": list(agent), "floor": list(floor)})
    est, lo, hi = over_pct(list(agent), list(floor))
    assert 1.5 < est < 2.5 and hi <= 5
    assert goals[1].verdict == "met"


def test_a_goal_without_figures_is_not_measured_never_met():
    floor = _rounds(50, 7)
    goals = check(None, {}, None)
    assert [g.verdict for g in goals] == ["not measured", "not measured"]
    no_decoder = check({"agent": list(floor), "floor": list(floor)}, {}, None)
    assert no_decoder[0].verdict == "not measured" and "binding" in no_decoder[0].detail
    assert "not measured" in no_decoder[0].line() and no_decoder[0].to_dict()["estimate"] is None


@pytest.mark.parametrize(
    ("interval", "expected"),
    [
        ((0.1, 0.05, 0.3), "met"),
        ((0.5, 0.31, 0.7), "not met"),
        ((0.3, 0.2, 0.4), "not decided (the interval straddles the limit)"),
        (None, "not measured"),
    ],
)
def test_verdict_is_judged_on_the_whole_interval(interval, expected):
    assert verdict(interval, 0.3) == expected


def test_rounds_of_different_lengths_are_refused():
    with pytest.raises(ValueError, match="rounds differ"):
        excess_ms([1.0, 2.0], [1.0], [0.5, 0.5])
