"""The benchmark and shadow stages of a rollout's first cohort (hub.stages), as tables."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from hub.rollout import (
    Command,
    DeviceSeen,
    InstallReport,
    Issue,
    IssueStage,
    Policy,
    PolicyError,
    RolloutState,
    StageEvidence,
    advance,
)
from hub.stages import DONE, FAILED, ShadowTally, StageError, StagePolicy, benchmark_gate, shadow_gate, step
from protocol.benchmark import BenchmarkReport, BenchmarkRequest, Timing
from protocol.device import Inventory, Shadow

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


# ---- the rollout machine running the stages (hub.rollout rule 3b) --------------------------------

NEW, OLD = "b" * 64, "a" * 64
STAGED = Policy(cohorts=("1", "100%"), stages=BOTH)


def fleet(n: int = 3, active: str | None = OLD) -> list[DeviceSeen]:
    return [DeviceSeen(f"d{i}", True, active, Inventory(board="rpi4")) for i in range(n)]


def stage_docs(actions: list[Any]) -> list[tuple[str, str]]:
    return [(a.device, a.stage) for a in actions if isinstance(a, IssueStage)]


def installs(actions: list[Any]) -> list[str]:
    return sorted(a.device for a in actions if isinstance(a, Issue) and a.action == "install")


def cand(cand_p95: float, cur_p95: float) -> BenchmarkReport:
    return replace(bench(cand_p95, cur_p95), bundle=NEW)


def started(policy: Policy = STAGED, n: int = 3) -> tuple[RolloutState, list[Any]]:
    return advance(RolloutState(NEW), fleet(n), 0, policy)


def test_policy_without_stages_issues_the_install_at_once_as_before():
    st, acts = advance(RolloutState(NEW), fleet(2), 0, Policy())
    assert installs(acts) == ["d0", "d1"] and not stage_docs(acts)
    assert Policy().to_dict()["stages"]["stages"] == []


def test_policy_stages_parse_from_a_list_or_an_object_and_bad_ones_are_named():
    assert Policy.from_dict({"stages": ["shadow"]}).stages.stages == ("shadow",)
    p = Policy.from_dict({"stages": {"stages": ["benchmark"], "benchmark": {"max_p95_ratio": 2}}})
    assert p.stages.max_p95_ratio == 2 and Policy.from_dict(p.to_dict()) == p
    with pytest.raises(PolicyError, match="stages: stages must be a list of"):
        Policy.from_dict({"stages": ["canary"]})
    with pytest.raises(PolicyError, match="benchmark.invokes must be an integer"):
        Policy.from_dict({"stages": {"stages": ["benchmark"], "benchmark": {"invokes": 0}}})
    with pytest.raises(PolicyError, match="stages: must be a list of stages or an object, got 'benchmark'"):
        Policy.from_dict({"stages": "benchmark"})


def test_cohort_one_device_is_sent_the_first_stage_not_the_install():
    st, acts = started()
    assert stage_docs(acts) == [("d0", "benchmark")] and installs(acts) == []
    d0 = st.device("d0")
    assert d0 is not None and (d0.state, d0.stage, d0.stages["benchmark"]["state"]) == (
        "staging",
        "benchmark",
        "waiting",
    )
    assert (a := next(a for a in acts if isinstance(a, IssueStage))).active == OLD and a.bundle == NEW


def test_good_candidate_passes_benchmark_then_shadow_then_installs_and_the_cohorts_go_on():
    st, _ = started()
    st, acts = advance(st, [StageEvidence("d0", report=cand(11.0, 10.0))], 5, STAGED)
    d0 = st.device("d0")
    assert stage_docs(acts) == [("d0", "shadow")] and d0 is not None and d0.stage == "shadow"
    assert d0.stages["benchmark"]["state"] == "pass" and d0.stages["benchmark"]["figures"]["p95_ratio"] == 1.1
    st, acts = advance(st, [StageEvidence("d0", tally=tally((60, 1.0, 0.2)))], 10, STAGED)
    assert installs(acts) == [] and "60/100 shadow inferences" in st.device("d0").reason  # type: ignore[union-attr]
    st, acts = advance(st, [StageEvidence("d0", tally=tally((120, 0.97, 0.2)), task="classification")], 20, STAGED)
    assert installs(acts) == ["d0"]
    assert "classification agreement 0.967" in st.device("d0").stages["shadow"]["detail"]  # type: ignore[union-attr]
    st, acts = advance(st, [InstallReport("d0", "commit", "ok")], 30, STAGED)
    assert installs(acts) == ["d1", "d2"] and not stage_docs(acts)  # later cohorts skip the stages


def test_slow_candidate_fails_the_benchmark_and_the_rollout_aborts_before_any_switch():
    p = replace(STAGED, cohorts=("100%",))
    st, acts = started(p)
    assert sorted(stage_docs(acts)) == [("d0", "benchmark"), ("d1", "benchmark"), ("d2", "benchmark")]
    st, acts = advance(st, [StageEvidence("d1", report=cand(150.0, 10.0))], 5, p)
    assert st.phase == "aborted"
    assert st.reason.startswith("stage failed on d1: benchmark: p95 ratio 15.00")
    assert "> max_p95_ratio 1.5" in st.reason
    assert installs(acts) == []
    # every staging device is told to drop the candidate; nobody was told to install it
    assert sorted(stage_docs(acts)) == [("d0", "end"), ("d1", "end"), ("d2", "end")]
    assert st.counts() == {"failed": 1, "cancelled": 2}
    assert any(a.kind == "rollout_gate" and "p95 ratio 15.00" in a.message for a in acts if hasattr(a, "kind"))


def test_candidate_that_never_ran_fails_its_stage_naming_the_device_report():
    st, _ = started()
    st, _ = advance(
        st, [StageEvidence("d0", failed="selftest_failed: shadow candidate failed its self-test")], 5, STAGED
    )
    assert st.phase == "aborted" and "benchmark: the candidate did not run: selftest_failed" in st.reason


def test_shadow_disagreement_fails_the_stage_with_the_figure():
    p = replace(STAGED, stages=StagePolicy(("shadow",), min_inferences=50, min_agreement=0.9))
    st, acts = started(p)
    assert stage_docs(acts) == [("d0", "shadow")]
    st, acts = advance(st, [StageEvidence("d0", tally=tally((80, 0.5, 0.1)))], 5, p)
    assert st.phase == "aborted" and "shadow: agreement 0.500 < min_agreement 0.9 over 80 inferences" in st.reason


def test_stage_without_figures_times_out_only_while_the_device_is_online():
    p = replace(STAGED, stages=replace(BOTH, timeout_s=100))
    st, _ = started(p)
    st, _ = advance(st, [DeviceSeen("d0", False, OLD)], 50, p)
    st, _ = advance(st, [], 500, p)  # offline: no timeout
    assert st.phase == "running" and st.device("d0").state == "staging"  # type: ignore[union-attr]
    st, _ = advance(st, [DeviceSeen("d0", True, OLD)], 600, p)  # back: its stage starts again
    st, _ = advance(st, [], 650, p)
    assert st.phase == "running"
    st, _ = advance(st, [], 700, p)
    assert st.phase == "aborted" and "benchmark: no report after 100 s" in st.reason


def test_paused_rollout_does_not_judge_stages_and_cancel_drops_the_candidate():
    st, _ = started()
    st, _ = advance(st, [Command("pause")], 1, STAGED)
    st, acts = advance(st, [StageEvidence("d0", report=cand(150.0, 10.0))], 2, STAGED)
    assert st.phase == "paused" and st.device("d0").state == "staging"  # type: ignore[union-attr]
    st, acts = advance(st, [Command("cancel")], 3, STAGED)
    assert stage_docs(acts) == [("d0", "end")] and st.device("d0").state == "cancelled"  # type: ignore[union-attr]


def test_device_with_nothing_active_skips_the_stages_and_says_so():
    st, acts = advance(RolloutState(NEW), fleet(1, active=None), 0, STAGED)
    assert installs(acts) == ["d0"] and not stage_docs(acts)
    assert st.device("d0").stages["benchmark"]["state"] == "skipped"  # type: ignore[union-attr]


def test_benchmark_ratio_over_the_gate_passes_when_the_candidate_is_under_a_millisecond_slower():
    v = benchmark_gate(bench(0.05, 0.01), BOTH)
    assert v.state == "pass" and "only 0.040 ms slower <= min_p95_delta_ms 1" in v.detail
    assert benchmark_gate(bench(0.05, 0.01), replace(BOTH, min_p95_delta_ms=0.0)).state == "fail"
