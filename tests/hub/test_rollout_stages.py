"""The benchmark and shadow stages of a rollout's first cohort (hub.stages), as tables."""

from __future__ import annotations

from typing import Any

import pytest

from hub.stages import DONE, FAILED, ShadowTally, StageError, StagePolicy, benchmark_gate, shadow_gate, step
from protocol.benchmark import BenchmarkReport, BenchmarkRequest, Timing
from protocol.device import Shadow

BOTH = StagePolicy(("benchmark", "shadow"), invokes=20, max_p95_ratio=1.5, min_inferences=100, min_agreement=0.9)


def bench(cand_p95: float, cur_p95: float, ok: bool = True, detail: str = "") -> BenchmarkReport:
    return BenchmarkReport(
        "sha-c", ok, detail, Timing(20, cand_p95 * 0.8, cand_p95), Timing(20, cur_p95 * 0.8, cur_p95)
    )


def tally(*windows: tuple[int, float, float | None]) -> ShadowTally:
    t = ShadowTally()
    for samples, agreement, delta in windows:
        t = t.add(Shadow(samples, 0, agreement, delta))
    return t


@pytest.mark.parametrize(
    ("report", "state", "says"),
    [
        (None, "waiting", "benchmark: no report yet"),
        (
            bench(12.0, 10.0),
            "pass",
            "p95 ratio 1.20 (candidate 12.00 ms / current 10.00 ms, 20 invokes) <= max_p95_ratio 1.5",
        ),
        (bench(15.0, 10.0), "pass", "p95 ratio 1.50"),
        (
            bench(31.0, 10.0),
            "fail",
            "p95 ratio 3.10 (candidate 31.00 ms / current 10.00 ms, 20 invokes) > max_p95_ratio 1.5",
        ),
        (
            BenchmarkReport("sha-c", False, "selftest failed: case 0: 3 steps off"),
            "fail",
            "benchmark: selftest failed: case 0",
        ),
        (BenchmarkReport("sha-c", True, "odd", Timing(5, 1, 1), None), "fail", "the report has no p95 to compare"),
    ],
)
def test_benchmark_gate_passes_fails_or_waits_naming_the_figure(report, state, says):
    v = benchmark_gate(report, BOTH)
    assert v.state == state and says in v.detail


@pytest.mark.parametrize(
    ("t", "state", "says"),
    [
        (ShadowTally(), "waiting", "shadow: 0/100 shadow inferences"),
        (tally((60, 1.0, 0.5)), "waiting", "shadow: 60/100 shadow inferences"),
        (tally((60, 1.0, 0.5), (40, 0.9, 0.5)), "pass", "classification agreement 0.960 >= 0.9 over 100 inferences"),
        (
            tally((50, 0.8, None), (50, 0.9, None)),
            "fail",
            "classification agreement 0.850 < min_agreement 0.9 over 100",
        ),
    ],
)
def test_shadow_gate_sums_windows_and_judges_per_task_agreement(t, state, says):
    v = shadow_gate(t, BOTH, "classification")
    assert v.state == state and says in v.detail


def test_shadow_gate_fails_a_candidate_slower_than_max_latency_delta():
    p = StagePolicy(("shadow",), min_inferences=10, min_agreement=0.5, max_latency_delta_ms=5.0)
    t = tally((10, 1.0, 4.0), (30, 1.0, 8.0))  # sample-weighted mean 7.0 ms
    v = shadow_gate(t, p)
    assert v.state == "fail" and "7.00 ms slower on average > max_latency_delta_ms 5" in v.detail
    assert v.figures["latency_delta_ms"] == 7.0


@pytest.mark.parametrize(
    ("stage", "elapsed", "kw", "to", "moved", "says"),
    [
        ("benchmark", 10, {"report": bench(11, 10)}, "shadow", True, "<= max_p95_ratio"),
        ("benchmark", 10, {"report": bench(40, 10)}, FAILED, True, "benchmark: p95 ratio 4.00"),
        ("benchmark", 10, {}, "benchmark", False, "no report yet"),
        ("benchmark", 900, {}, FAILED, True, "benchmark: no report after 900 s (timeout_s 900; an agent older than"),
        ("shadow", 10, {"tally": tally((100, 0.95, 1.0))}, DONE, True, "agreement 0.950"),
        ("shadow", 10, {"tally": tally((100, 0.5, 1.0))}, FAILED, True, "shadow: agreement 0.500 < min_agreement"),
        ("shadow", 10, {"tally": tally((5, 1.0, 1.0))}, "shadow", False, "5/100"),
        ("shadow", 901, {"tally": tally((5, 1.0, 1.0))}, FAILED, True, "shadow: 5/100 shadow inferences after 901 s"),
        # a report that arrives at the deadline still counts: figures before the clock
        ("benchmark", 5000, {"report": bench(11, 10)}, "shadow", True, "<= max_p95_ratio"),
    ],
)
def test_device_moves_through_the_stages_in_order(stage, elapsed, kw: dict[str, Any], to, moved, says):
    s = step(stage, 1000.0, 1000.0 + elapsed, BOTH, **kw)
    assert (s.stage, s.moved) == (to, moved) and says in s.verdict.detail


def test_the_last_stage_passing_lets_the_switch_proceed():
    only_bench = StagePolicy(("benchmark",))
    assert step("benchmark", 0, 1, only_bench, report=bench(1, 1)).stage == DONE


def test_a_stage_the_policy_does_not_have_is_refused():
    with pytest.raises(StageError, match="stage 'shadow' is not one of this policy's stages"):
        step("shadow", 0, 1, StagePolicy(("benchmark",)))


def test_policy_round_trips_and_fills_defaults():
    p = StagePolicy.from_dict({"stages": ["benchmark", "shadow"], "benchmark": {"invokes": 30}})
    assert p.stages == ("benchmark", "shadow") and p.invokes == 30 and p.max_p95_ratio == 1.5
    assert StagePolicy.from_dict(p.to_dict()) == p


@pytest.mark.parametrize(
    ("obj", "says"),
    [
        ({"stages": ["canary"]}, "stages must be a list of ['benchmark', 'shadow'], got ['canary']"),
        ({"stages": ["shadow", "shadow"]}, "must not repeat"),
        ({"benchmark": {"invokes": 0}}, "benchmark.invokes must be an integer within 1..10000, got 0"),
        ({"benchmark": {"runs": 5}}, "unknown benchmark fields ['runs']"),
        ({"shadow": {"min_agreement": 1.2}}, "shadow.min_agreement must be a number within 0..1, got 1.2"),
        ({"shadow": {"sample_rate": 0}}, "shadow.sample_rate must be a number within 0.001..1, got 0"),
        ({"soak": 5}, "unknown stage fields ['soak']"),
        ({"timeout_s": -1}, "timeout_s must be an integer within 1..604800, got -1"),
    ],
)
def test_bad_stage_policy_is_refused_naming_the_field_and_value(obj, says):
    with pytest.raises(StageError) as exc:
        StagePolicy.from_dict(obj)
    assert says in str(exc.value)


def test_each_stage_has_its_desired_document_and_the_benchmark_one_asks_for_the_candidate():
    from hub.stages import desired_for
    from protocol.benchmark import request_of

    b = desired_for("benchmark", "c" * 64, BOTH)
    assert (b.shadow, b.shadow_sample) == ("c" * 64, 0.0)  # staged and self-tested, on no requests
    assert request_of(b.extra) == BenchmarkRequest("c" * 64, 20)
    s = desired_for("shadow", "c" * 64, BOTH)
    assert (s.shadow, s.shadow_sample, dict(s.extra)) == ("c" * 64, BOTH.sample_rate, {})
    with pytest.raises(StageError, match="no desired document for stage 'canary'"):
        desired_for("canary", "c" * 64, BOTH)


def test_benchmark_report_is_read_from_a_shadow_reports_metrics_only_for_the_candidate():
    from hub.stages import benchmark_of
    from protocol.errors import BadPayload

    r = bench(12, 10)
    got = benchmark_of({"benchmark": r.to_dict()}, "sha-c")
    assert got is not None and got.to_dict() == r.to_dict()
    assert benchmark_of({"benchmark": r.to_dict()}, "sha-other") is None
    assert benchmark_of({"cases": 3}, "sha-c") is None and benchmark_of(None, "sha-c") is None
    with pytest.raises(BadPayload, match="ok must be true or false"):
        benchmark_of({"benchmark": {"bundle": "sha-c"}}, "sha-c")
