"""The fallback bench's goal check (issue 20): each goal is judged on the right figure, a goal
whose figures were not measured is never counted as met, and overload needs shedding."""

from __future__ import annotations

from bench._fallback_goals import Figures, Measured, Overload, check, report

OURS = Measured(rps=200.0, p50_ms=150.0, p99_ms=300.0)
LIMIT = Measured(rps=210.0, p50_ms=4.0, p99_ms=6.0)
GOOD_OVERLOAD = Overload(256, {200: 1000, 429: 300}, accepted_p99_ms=550.0, no_answer=0)


def verdicts(f: Figures) -> dict[str, bool | None]:
    return {g.name: g.met for g in check(f)}


def test_all_goals_met_when_ours_leads_every_peer_and_sheds_under_overload():
    f = Figures(
        "m",
        OURS,
        LIMIT,
        ours1=Measured(9.0, 6.0, 8.0),
        bare_p50_ms=5.5,
        peers32={"bentoml": Measured(150.0, 1, 400.0), "mosec": Measured(190.0, 1, 310.0)},
        overload=GOOD_OVERLOAD,
    )
    assert set(verdicts(f).values()) == {True}
    assert "5 met, 0 not met, 0 not measured" in report(check(f))


def test_below_ninety_percent_of_the_limit_is_not_met_and_names_the_share():
    g = check(Figures("m", Measured(180.0, 1, 300.0), LIMIT))[0]
    assert g.met is False and "86%" in g.figure


def test_a_peer_faster_in_rps_or_in_p99_misses_its_goal():
    v = verdicts(Figures("m", OURS, LIMIT, peers32={"litserve": Measured(201.0, 1, 500.0)}))
    assert v["ahead of every peer at 32 (req/s)"] is False
    assert v["p99 <= best peer's at 32"] is True
    v = verdicts(Figures("m", OURS, LIMIT, peers32={"mosec": Measured(100.0, 1, 299.0)}))
    assert v["ahead of every peer at 32 (req/s)"] is True
    assert v["p99 <= best peer's at 32"] is False


def test_goals_without_figures_are_not_measured_never_met():
    goals = check(Figures("m", OURS, LIMIT))
    unmeasured = [g for g in goals if g.met is None]
    assert [g.figure for g in unmeasured] == [
        "no peer was measured",
        "no peer was measured (or none answered)",
        "1 client or bare run not measured",
        "no overload run",
    ]
    assert "1 met, 0 not met, 4 not measured" in report(goals)


def test_one_client_p50_over_1_2x_the_bare_run_is_not_met():
    v = verdicts(Figures("m", OURS, LIMIT, ours1=Measured(9.0, 6.7, 8.0), bare_p50_ms=5.5))
    assert v["p50 <= 1.2x bare run at 1"] is False  # 1.22x


def test_overload_that_sheds_nothing_or_times_out_or_queues_too_long_is_not_met():
    name = "overload: 429/503, p99 <= 2x p99@32"
    queued = Overload(256, {200: 1300}, accepted_p99_ms=500.0, no_answer=0)
    g = {x.name: x for x in check(Figures("m", OURS, LIMIT, overload=queued))}[name]
    assert g.met is False and "nothing was shed" in g.figure
    timeouts = Overload(256, {200: 1000, 503: 10}, accepted_p99_ms=500.0, no_answer=4)
    assert verdicts(Figures("m", OURS, LIMIT, overload=timeouts))[name] is False
    slow = Overload(256, {200: 1000, 429: 10}, accepted_p99_ms=601.0, no_answer=0)
    g = {x.name: x for x in check(Figures("m", OURS, LIMIT, overload=slow))}[name]
    assert g.met is False and "over the bound" in g.figure


def test_a_peer_that_answered_nothing_loses_on_rps_and_sets_no_p99_bar():
    v = verdicts(Figures("m", OURS, LIMIT, peers32={"bentoml": Measured(0.0, 0.0, 0.0)}))
    assert v["ahead of every peer at 32 (req/s)"] is True
    assert v["p99 <= best peer's at 32"] is None


def test_an_overload_run_that_completed_nothing_is_not_measured():
    empty = Overload(256, {}, accepted_p99_ms=float("nan"), no_answer=0)
    g = check(Figures("m", OURS, LIMIT, overload=empty))[-1]
    assert g.met is None and "nothing completed" in g.figure
