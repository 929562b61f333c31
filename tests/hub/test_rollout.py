"""The pure rollout state machine, table-tested: every rule in ``hub.rollout``'s docstring has
a scenario here. No clock, no I/O: time is an argument."""

from __future__ import annotations

from dataclasses import replace

import pytest

from hub.rollout import (
    NO_PREVIOUS,
    SUPERSEDED,
    Alert,
    Command,
    DeviceSeen,
    Elsewhere,
    Gates,
    Health,
    InstallReport,
    Issue,
    Policy,
    PolicyError,
    RolloutState,
    advance,
    cohort_sizes,
)
from protocol.bundle import Requirements
from protocol.device import Inventory
from protocol.sketch import LatencySketch

NEW, OLD = "b" * 64, "a" * 64
FAST = Inventory(board="rpi4", edgetpu=False)


def seen(n: int, online: bool = True, active: str | None = OLD, prefix: str = "d", **inv) -> list[DeviceSeen]:
    return [DeviceSeen(f"{prefix}{i:02}", online, active, replace(FAST, **inv)) for i in range(n)]


def issued(actions) -> list[str]:
    return sorted(a.device for a in actions if isinstance(a, Issue) and a.action == "install")


def rollbacks(actions) -> list[Issue]:
    return [a for a in actions if isinstance(a, Issue) and a.action in ("rollback", "idle")]


def sketch(ms: float, n: int = 200) -> dict:
    s = LatencySketch()
    s.add(ms / 1000, n)
    return s.to_dict()


def install_all(st: RolloutState, now: int, policy: Policy):
    evs = [InstallReport(d.id, "commit", "ok") for d in st.devices if d.state in ("issued", "installing")]
    return advance(st, evs, now, policy)


P = Policy(cohorts=("1", "10%", "50%", "100%"), soak_s=10, install_timeout_s=100, max_retries=1)


@pytest.mark.parametrize(
    "cohorts,total,sizes",
    [
        (("1", "10%", "50%", "100%"), 20, [1, 2, 10, 20]),
        (("1", "10%", "50%", "100%"), 200, [1, 20, 100, 200]),
        (("1", "10%", "50%", "100%"), 3, [1, 2, 3]),
        (("1", "10%", "50%", "100%"), 1, [1]),
        (("1", "10%", "50%", "100%"), 0, [0]),
        (("5", "100%"), 3, [3]),
        (("25%", "25%", "100%"), 8, [2, 3, 8]),
        (("100%",), 7, [7]),
        (("2", "4"), 10, [2, 10]),
    ],
)
def test_cohort_sizes_are_cumulative_growing_and_end_with_everyone(cohorts, total, sizes):
    assert cohort_sizes(cohorts, total) == sizes


@pytest.mark.parametrize(
    "bad,needle",
    [
        ({"cohorts": []}, "at least one"),
        ({"cohorts": ["0"]}, "cohort size '0'"),
        ({"cohorts": ["150%"]}, "150%"),
        ({"on_breach": "explode"}, "on_breach"),
        ({"soak_s": -1}, "soak_s"),
        ({"install_timeout_s": 0}, "install_timeout_s"),
        ({"gates": {"max_p95_ratio": "fast"}}, "max_p95_ratio"),
        ({"gates": {"nope": 1}}, "unknown gates"),
        ({"speed": 1}, "unknown policy fields"),
        ({"gates": {"drift": 1}}, "gates.drift"),
    ],
)
def test_invalid_policy_is_refused_naming_the_field(bad, needle):
    with pytest.raises(PolicyError, match=needle):
        Policy.from_dict(bad)


def test_policy_round_trips_through_its_dict():
    p = Policy.from_dict({"cohorts": ["1", "100%"], "soak_s": 5, "gates": {"max_p95_ratio": 2, "min_samples": 10}})
    assert Policy.from_dict(p.to_dict()) == p


def test_canary_goes_first_then_cohorts_open_after_soak_until_completed():
    st, acts = advance(RolloutState(NEW), seen(20), 0, P)
    assert issued(acts) == ["d00"] and st.cohort == 0
    st, acts = install_all(st, 1, P)
    assert acts == [] and st.soak_started == 1
    st, acts = advance(st, [], 10, P)  # soak not over
    assert acts == [] and st.cohort == 0
    st, acts = advance(st, [], 11, P)
    assert issued(acts) == ["d01"] and st.cohort == 1
    sizes_seen = []
    now = 12
    while st.phase == "running":
        st, acts = install_all(st, now, P)
        st, acts = advance(st, [], now + 10, P)
        sizes_seen.append(st.counts().get("installed", 0))
        now += 20
    assert st.phase == "completed" and st.counts() == {"installed": 20}
    assert sizes_seen[:2] == [2, 10]


def test_canary_install_failure_rolls_back_the_staged_preset_with_a_new_instruction():
    policy = Policy.from_dict({"preset": "staged", "cohorts": ["1", "100%"], "soak_s": 0})
    st, _ = advance(RolloutState(NEW), seen(5), 0, policy)
    st, acts = advance(st, [InstallReport("d00", "selftest", "failed", "selftest_failed", "output off")], 1, policy)
    assert st.phase == "rolled_back" and "install_failure_rate" in st.reason
    assert [(a.device, a.action, a.bundle) for a in rollbacks(acts)] == [("d00", "rollback", OLD)]
    assert any(isinstance(a, Alert) and a.kind == "rollout_gate" for a in acts)
    assert st.counts() == {"rolling_back": 1, "cancelled": 4}
    st, acts = advance(st, [InstallReport("d00", "rollback", "ok")], 2, policy)
    assert st.device("d00").state == "rolled_back" and acts == [] or all(isinstance(a, Alert) for a in acts)


@pytest.mark.parametrize(
    "on_breach,phase,counts",
    [
        ("pause", "paused", {"failed": 1, "pending": 4}),
        ("abort", "aborted", {"failed": 1, "cancelled": 4}),
        ("rollback", "rolled_back", {"rolling_back": 1, "cancelled": 4}),
    ],
)
def test_breach_action_follows_policy(on_breach, phase, counts):
    policy = Policy(cohorts=("1", "100%"), soak_s=0, on_breach=on_breach)
    st, _ = advance(RolloutState(NEW), seen(5), 0, policy)
    st, acts = advance(st, [InstallReport("d00", "verify", "failed", "bad_signature")], 1, policy)
    assert st.phase == phase and st.counts() == counts
    assert len([a for a in acts if isinstance(a, Alert)]) == 1
    # no further issuance while stopped
    st, acts = advance(st, [], 100, policy)
    assert issued(acts) == []


def test_approving_a_paused_breach_rearms_gates_for_the_next_cohort():
    policy = Policy(cohorts=("1", "100%"), soak_s=0, on_breach="pause")
    st, _ = advance(RolloutState(NEW), seen(3), 0, policy)
    st, _ = advance(st, [InstallReport("d00", "download", "failed", "disk_full")], 1, policy)
    assert st.phase == "paused"
    st, acts = advance(st, [Command("approve", "ops")], 2, policy)
    assert st.phase == "running" and issued(acts) == ["d01", "d02"] and st.gate_floor == 1
    st, _ = install_all(st, 3, policy)
    st, _ = advance(st, [], 4, policy)
    assert st.phase == "completed"


def _health(
    dev: str,
    new_ms: float,
    old_ms: float = 10.0,
    n: int = 200,
    errors: int = 0,
    cloud: int = 0,
    drift=None,
    agree: int = 0,
    total: int = 0,
) -> Health:
    return Health(
        dev,
        inferences=n,
        errors=errors,
        cloud=cloud,
        latency=sketch(new_ms, n),
        prev_latency=sketch(old_ms, n),
        drift=drift or {},
        shadow_agree=agree,
        shadow_total=total,
    )


@pytest.mark.parametrize(
    "health,gates,breached",
    [
        (_health("d00", 30.0), Gates(max_p95_ratio=1.5), "p95_latency_ratio"),
        (_health("d00", 12.0), Gates(max_p95_ratio=1.5), None),
        (_health("d00", 0.9, old_ms=0.55), Gates(max_p95_ratio=1.5), None),  # 1.6x but 0.35 ms: jitter
        (_health("d00", 1.8, old_ms=0.55), Gates(max_p95_ratio=1.5), "p95_latency_ratio"),
        (_health("d00", 10.0, errors=50), Gates(max_error_rate=0.05), "error_rate"),
        (_health("d00", 10.0, errors=5), Gates(max_error_rate=0.05), None),
        (_health("d00", 10.0, cloud=100), Gates(max_cloud_rate=0.2), "cloud_fallback_rate"),
        (_health("d00", 10.0, cloud=10), Gates(max_cloud_rate=0.2), None),
        (_health("d00", 10.0, agree=150, total=200), Gates(min_shadow_agreement=0.9), "shadow_agreement"),
        (_health("d00", 10.0, agree=195, total=200), Gates(min_shadow_agreement=0.9), None),
        (_health("d00", 10.0, drift={"outputs.top1_class": [10, 10, 180]}), Gates(), "drift"),
        (_health("d00", 10.0, drift={"outputs.top1_class": [66, 67, 67]}), Gates(), None),
        (_health("d00", 10.0, drift={"outputs.top1_class": [60, 60, 80]}), Gates(max_js=0.001), "drift"),
        # too few samples: never a breach, whatever the numbers say
        (_health("d00", 90.0, n=20, errors=19), Gates(max_p95_ratio=1.5, max_error_rate=0.05), None),
        (_health("d00", 10.0, drift={"outputs.top1_class": [0, 0, 20]}), Gates(), None),
    ],
)
def test_health_gates_breach_only_on_real_regressions(health, gates, breached):
    policy = Policy(cohorts=("1", "100%"), soak_s=60, on_breach="pause", gates=gates)
    st = RolloutState(NEW, baseline={"outputs.top1_class": [333, 333, 334]})
    st, _ = advance(st, seen(4), 0, policy)
    st, _ = install_all(st, 1, policy)
    st, acts = advance(st, [health], 5, policy)
    got = [g.name for g in st.gates if g.status == "breach"]
    if breached is None:
        assert got == [] and st.phase == "running"
    else:
        assert got == [breached] and st.phase == "paused"
        assert any(isinstance(a, Alert) for a in acts)


@pytest.mark.parametrize(
    "agree,total,detail",
    [
        (0, 0, "no shadow comparisons: no device runs a shadow model beside the bundle"),
        (20, 30, "30 < 50 comparisons"),
    ],
)
def test_shadow_gate_without_enough_comparisons_says_why_and_never_breaches(agree, total, detail):
    policy = Policy(cohorts=("1", "100%"), soak_s=60, gates=Gates(min_shadow_agreement=0.9))
    st, _ = advance(RolloutState(NEW), seen(2), 0, policy)
    st, _ = install_all(st, 1, policy)
    st, _ = advance(st, [_health("d00", 10.0, agree=agree, total=total)], 5, policy)
    gate = next(g for g in st.gates if g.name == "shadow_agreement")
    assert (gate.status, gate.detail, st.phase) == ("insufficient_data", detail, "running")


def test_require_samples_holds_the_cohort_open_until_telemetry_arrives():
    policy = Policy(cohorts=("1", "100%"), soak_s=5, require_samples=True, gates=Gates(max_p95_ratio=1.5))
    st, _ = advance(RolloutState(NEW), seen(3), 0, policy)
    st, _ = install_all(st, 1, policy)
    st, acts = advance(st, [], 100, policy)
    assert st.cohort == 0 and issued(acts) == []
    st, acts = advance(st, [_health("d00", 11.0)], 101, policy)
    assert st.cohort == 1 and issued(acts) == ["d01", "d02"]


def test_retryable_failures_are_reissued_until_attempts_run_out():
    policy = Policy(cohorts=("100%",), max_retries=1, gates=Gates(max_install_failure_rate=1.0))
    st, _ = advance(RolloutState(NEW), seen(1), 0, policy)
    st, acts = advance(st, [InstallReport("d00", "download", "failed", "hash_mismatch")], 1, policy)
    assert issued(acts) == ["d00"] and st.device("d00").attempts == 2
    st, acts = advance(st, [InstallReport("d00", "download", "failed", "hash_mismatch")], 2, policy)
    assert issued(acts) == [] and st.device("d00").state == "failed"


def test_non_retryable_failure_is_final_at_once():
    policy = Policy(cohorts=("100%",), max_retries=5, gates=Gates(max_install_failure_rate=1.0))
    st, _ = advance(RolloutState(NEW), seen(1), 0, policy)
    st, acts = advance(st, [InstallReport("d00", "verify", "failed", "unknown_key")], 1, policy)
    assert issued(acts) == [] and st.device("d00").state == "failed" and "unknown_key" in st.device("d00").reason


def test_timeouts_retry_then_give_up_and_a_returning_device_gets_the_current_target():
    policy = Policy(cohorts=("100%",), install_timeout_s=100, max_retries=1, gates=Gates(max_install_failure_rate=1.0))
    st, _ = advance(RolloutState(NEW), seen(1), 0, policy)
    st, acts = advance(st, [], 100, policy)
    assert issued(acts) == ["d00"] and st.device("d00").attempts == 2
    st, acts = advance(st, [], 200, policy)
    assert issued(acts) == [] and st.device("d00").state == "timed_out"
    st, acts = advance(st, [DeviceSeen("d00", False, OLD)], 300, policy)
    st, acts = advance(st, [DeviceSeen("d00", True, OLD)], 400, policy)
    assert issued(acts) == ["d00"] and st.device("d00").state == "issued"


def test_a_slow_link_that_keeps_reporting_progress_is_not_timed_out_and_a_silent_one_is():
    policy = Policy(cohorts=("100%",), install_timeout_s=100, max_retries=0, gates=Gates(max_install_failure_rate=1.0))
    st, _ = advance(RolloutState(NEW), seen(2), 0, policy)
    for now in (60, 120, 180, 240):  # d00 reports a decile every 60 s; d01 went quiet after the first
        evs = [InstallReport("d00", "download", "progress")] + (
            [InstallReport("d01", "download", "progress")] if now == 60 else []
        )
        st, acts = advance(st, evs, now, policy)
    assert st.device("d00").state == "installing" and st.device("d01").state == "timed_out"
    # a rejected chunk is a report, not progress: it does not hold the timeout off
    for now in (300, 360):
        st, _ = advance(st, [InstallReport("d00", "download", "progress", "hash_mismatch")], now, policy)
    assert st.device("d00").state == "timed_out"
    # the clock moves at most every quarter of the timeout (each move is a row write at the hub)
    st, _ = advance(RolloutState(NEW), seen(1), 0, policy)
    for now in (10, 20):
        st, _ = advance(st, [InstallReport("d00", "download", "progress")], now, policy)
    st, _ = advance(st, [], 100, policy)
    assert st.device("d00").state == "timed_out"


def test_offline_device_never_times_out_or_blocks_the_rollout_and_installs_when_back():
    policy = Policy(cohorts=("100%",), soak_s=0, install_timeout_s=10)
    evs = seen(2) + [DeviceSeen("d02", False, OLD, FAST)]
    st, acts = advance(RolloutState(NEW), evs, 0, policy)
    assert issued(acts) == ["d00", "d01", "d02"]  # its retained doc waits for it
    st, _ = advance(st, [InstallReport("d00", "commit", "ok"), InstallReport("d01", "commit", "ok")], 1, policy)
    st, _ = advance(st, [], 1000, policy)
    assert st.phase == "completed" and st.device("d02").state == "issued"
    st, acts = advance(st, [DeviceSeen("d02", True, NEW)], 2000, policy)
    assert st.device("d02").state == "installed" and issued(acts) == []


def test_offline_device_during_a_rollback_converges_to_the_previous_bundle_not_the_canary():
    policy = Policy(cohorts=("100%",), soak_s=0)
    st, _ = advance(RolloutState(NEW), seen(1) + [DeviceSeen("d01", False, OLD, FAST)], 0, policy)
    st, acts = advance(st, [Command("rollback", "ops")], 1, policy)
    assert sorted((a.device, a.bundle) for a in rollbacks(acts)) == [("d00", OLD), ("d01", OLD)]
    st, _ = advance(st, [DeviceSeen("d01", True, OLD)], 50, policy)
    assert st.device("d01").state == "rolled_back"


def test_incompatible_devices_are_never_issued_and_never_the_canary():
    req = Requirements(edgetpu="required")
    policy = Policy(cohorts=("1", "100%"), soak_s=0)
    evs = [
        DeviceSeen("a-cpu", True, OLD, Inventory(board="rpi4", edgetpu=False)),
        DeviceSeen("b-tpu", True, OLD, Inventory(board="rpi4", edgetpu=True)),
        DeviceSeen("c-tpu", True, OLD, Inventory(board="rpi4", edgetpu=True)),
    ]
    st, acts = advance(RolloutState(NEW, requirements=req), evs, 0, policy)
    assert issued(acts) == ["b-tpu"] and st.device("a-cpu").state == "incompatible"
    assert st.device("a-cpu").reason == "unsupported_runtime: bundle requires an Edge TPU; device has none"
    st, acts = install_all(st, 1, policy)  # soak 0: the next cohort opens at once
    assert issued(acts) == ["c-tpu"]
    st, _ = install_all(st, 3, policy)
    st, _ = advance(st, [], 4, policy)
    assert st.phase == "completed" and st.counts() == {"installed": 2, "incompatible": 1}


@pytest.mark.parametrize(
    "inventory,req,ok",
    [
        ({"board": "rpi4"}, Requirements(boards=("rpi5",)), False),
        ({"board": "rpi5"}, Requirements(boards=("rpi5",)), True),
        ({"edgetpu": True, "edgetpu_runtime": 13}, Requirements(edgetpu="required", min_edgetpu_runtime=14), False),
        ({"edgetpu": True, "edgetpu_runtime": 14}, Requirements(edgetpu="required", min_edgetpu_runtime=14), True),
        ({"edgetpu": False}, Requirements(edgetpu="optional"), True),
        ({"agent_version": "0.1.0"}, Requirements(min_agent="0.2"), False),
        ({}, Requirements(boards=("rpi5",), edgetpu="required"), True),  # unknown inventory: the agent decides
    ],
)
def test_compatibility_is_checked_from_inventory(inventory, req, ok):
    seen_x = DeviceSeen("x", True, OLD, Inventory.from_dict(inventory))
    st, acts = advance(RolloutState(NEW, requirements=req), [seen_x], 0, Policy(cohorts=("100%",)))
    assert (issued(acts) == ["x"]) is ok


def test_device_joining_a_completed_rollout_reopens_it_and_converges():
    policy = Policy(cohorts=("1", "100%"), soak_s=0)
    st, _ = advance(RolloutState(NEW), seen(2), 0, policy)
    for now in range(1, 6):
        st, _ = install_all(st, now, policy)
    assert st.phase == "completed"
    st, acts = advance(st, [DeviceSeen("late", True, OLD, FAST)], 10, policy)
    assert st.phase == "running" and issued(acts) == ["late"]
    st, acts = advance(st, [DeviceSeen("already", True, NEW, FAST)], 11, policy)
    assert issued(acts) == [] and st.device("already").state == "installed"


def test_manual_pause_resume_cancel_and_commands_on_finished_rollouts():
    policy = Policy(cohorts=("1", "100%"), soak_s=0)
    st, _ = advance(RolloutState(NEW), seen(3), 0, policy)
    st, _ = advance(st, [Command("pause", "ops")], 1, policy)
    st, acts = install_all(st, 2, policy)
    assert st.phase == "paused" and issued(acts) == []
    st, acts = advance(st, [Command("resume", "ops")], 3, policy)
    assert st.phase == "running" and issued(acts) == ["d01", "d02"]
    st, acts = advance(st, [Command("cancel", "ops")], 4, policy)
    assert st.phase == "cancelled"
    for op in ("resume", "approve", "rollback", "pause"):
        after, acts = advance(st, [Command(op)], 5, policy)
        assert after.phase == "cancelled" and acts == []


def test_approve_each_cohort_waits_for_an_operator():
    policy = Policy(cohorts=("1", "100%"), soak_s=0, approve_each_cohort=True)
    st, _ = advance(RolloutState(NEW), seen(3), 0, policy)
    st, _ = install_all(st, 1, policy)
    st, acts = advance(st, [], 2, policy)
    assert st.phase == "awaiting_approval" and issued(acts) == []
    st, acts = advance(st, [Command("approve", "ops")], 3, policy)
    assert st.phase == "running" and issued(acts) == ["d01", "d02"]


def test_rollback_of_a_device_with_no_previous_bundle_sends_idle():
    policy = Policy(cohorts=("100%",))
    st, _ = advance(RolloutState(NEW), seen(1, active=None), 0, policy)
    st, acts = advance(st, [Command("rollback")], 1, policy)
    assert [(a.action, a.bundle) for a in rollbacks(acts)] == [("idle", None)]


def test_install_report_progress_moves_issued_to_installing():
    st, _ = advance(RolloutState(NEW), seen(1), 0, P)
    st, _ = advance(st, [InstallReport("d00", "download", "progress")], 1, P)
    assert st.device("d00").state == "installing" and st.device("d00").reason == "download"


def test_presets_simple_is_everyone_at_once_and_staged_is_the_canary_path():
    assert Policy.from_dict({}).cohorts == ("100%",)
    staged = Policy.from_dict({"preset": "staged", "soak_s": 5})
    assert staged.cohorts == ("1", "10%", "50%", "100%") and staged.soak_s == 5 and staged.on_breach == "rollback"
    with pytest.raises(PolicyError, match="preset"):
        Policy.from_dict({"preset": "yolo"})


def test_a_desired_doc_that_expired_while_the_device_was_away_is_reissued_fresh():
    policy = Policy(cohorts=("100%",), max_retries=1)
    st, _ = advance(RolloutState(NEW), seen(1), 0, policy)
    st, acts = advance(st, [InstallReport("d00", "verify", "failed", "expired", "expired at 604800")], 700_000, policy)
    assert issued(acts) == ["d00"] and st.device("d00").issued_at == 700_000


def test_require_samples_waits_for_drift_evidence_when_devices_send_it():
    policy = Policy(
        cohorts=("1", "100%"),
        soak_s=0,
        require_samples=True,
        on_breach="pause",
        gates=Gates(max_p95_ratio=1.5, min_samples=50),
    )
    st = RolloutState(NEW, baseline={"outputs.top1_class": [333, 333, 334]})
    st, _ = advance(st, seen(3), 0, policy)
    st, _ = install_all(st, 1, policy)
    few = {"outputs.top1_class": [0, 0, 60]}  # shifted, but below the baseline's 100-sample floor
    st, acts = advance(st, [_health("d00", 10.0, drift=few)], 2, policy)
    assert st.cohort == 0 and issued(acts) == [] and st.phase == "running"
    enough = {"outputs.top1_class": [0, 0, 150]}
    st, acts = advance(st, [_health("d00", 10.0, drift=enough)], 3, policy)
    assert st.phase == "paused" and "drift" in st.reason


def test_device_that_gives_up_an_installed_bundle_on_probation_fails_the_canary():
    policy = Policy.from_dict({"preset": "staged", "cohorts": ["1", "100%"], "soak_s": 600})
    st, _ = advance(RolloutState(NEW), seen(5), 0, policy)
    st, _ = advance(st, [InstallReport("d00", "commit", "ok")], 1, policy)
    assert st.device("d00").state == "installed"
    st, acts = advance(st, [InstallReport("d00", "rollback", "ok", "inference_failed", "5 errors in 20")], 2, policy)
    assert st.device("d00").state in ("failed", "rolling_back")
    assert st.phase == "rolled_back" and "install_failure_rate" in st.reason


def test_plain_rollback_ok_of_an_installed_device_is_not_a_failure():
    policy = Policy.from_dict({"preset": "staged", "cohorts": ["1", "100%"], "soak_s": 600})
    st, _ = advance(RolloutState(NEW), seen(5), 0, policy)
    st, _ = advance(st, [InstallReport("d00", "commit", "ok")], 1, policy)
    st, _ = advance(st, [InstallReport("d00", "rollback", "ok")], 2, policy)
    assert st.device("d00").state == "installed" and st.phase == "running"


def test_rolling_back_a_first_ever_rollout_settles_and_says_the_devices_keep_serving():
    """Nothing to go back to: the devices are told idle and keep serving; their idle report
    settles them (they stayed 'rolling back' forever), and the state says what happened."""
    policy = Policy(cohorts=("100%",))
    st, _ = advance(RolloutState(NEW), seen(2, active=None), 0, policy)
    st, _ = install_all(st, 1, policy)
    st, acts = advance(st, [Command("rollback", "ops")], 2, policy)
    assert st.phase == "rolled_back" and "2 device(s) had no previous bundle and keep serving" in st.reason
    assert [(a.action, a.bundle) for a in rollbacks(acts)] == [("idle", None)] * 2
    st, _ = advance(st, [InstallReport(d, "idle", "ok") for d in ("d00", "d01")], 3, policy)
    assert {(d.state, d.reason) for d in st.devices} == {("rolled_back", NO_PREVIOUS)}


@pytest.mark.parametrize(
    "slow,gates,breached",
    [
        # one device of four, with most of the samples, claims a 10x slower model: not a fleet regression
        ({"d00": (100.0, 5000)}, Gates(max_p95_ratio=1.5), False),
        # ...nor one device's errors or drift
        ({"d00": (10.0, 5000, {"errors": 4000})}, Gates(max_error_rate=0.05), False),
        ({"d00": (10.0, 5000, {"drift": {"outputs.top1_class": [0, 0, 5000]}})}, Gates(), False),
        # two devices slower: that is the fleet
        ({"d00": (100.0, 5000), "d01": (100.0, 200)}, Gates(max_p95_ratio=1.5), True),
    ],
)
def test_one_device_cannot_breach_a_gate_for_a_cohort_of_several(slow, gates, breached):
    policy = Policy(cohorts=("100%",), soak_s=60, on_breach="pause", gates=gates)
    st = RolloutState(NEW, baseline={"outputs.top1_class": [333, 333, 334]})
    st, _ = advance(st, seen(4), 0, policy)
    st, _ = install_all(st, 1, policy)
    hs = []
    for i in range(4):
        dev = f"d{i:02}"
        ms, n, *extra = slow.get(dev, (10.0, 200))
        kw = extra[0] if extra else {}
        hs.append(
            _health(
                dev, ms, n=n, errors=kw.get("errors", 0), drift=kw.get("drift", {"outputs.top1_class": [66, 67, 67]})
            )
        )
    st, _ = advance(st, hs, 5, policy)
    got = [g for g in st.gates if g.name != "install_failure_rate" and g.status != "insufficient_data"]
    assert any(g.status == "breach" for g in got) == breached, [(g.name, g.status, g.detail) for g in got]
    if not breached:
        assert any("one device is not a fleet regression" in g.detail for g in got)
        assert st.phase == "running"


def test_a_cohort_of_one_device_still_breaches_on_its_own():
    policy = Policy(cohorts=("1", "100%"), soak_s=60, on_breach="pause", gates=Gates(max_p95_ratio=1.5))
    st, _ = advance(RolloutState(NEW), seen(4), 0, policy)
    st, _ = install_all(st, 1, policy)
    st, _ = advance(st, [_health("d00", 100.0)], 5, policy)
    assert st.phase == "paused"


def test_a_device_that_timed_out_in_a_completed_rollout_is_reissued_when_back_and_the_rollout_reopens():
    policy = Policy(
        cohorts=("100%",), soak_s=0, install_timeout_s=100, max_retries=0, gates=Gates(max_install_failure_rate=1.0)
    )
    st, _ = advance(RolloutState(NEW), seen(2), 0, policy)
    st, _ = advance(st, [InstallReport("d00", "commit", "ok")], 1, policy)
    st, _ = advance(st, [], 150, policy)  # d01 silent while online: its one attempt times out
    st, _ = advance(st, [], 151, policy)
    assert st.phase == "completed" and st.device("d01").state == "timed_out"
    st, _ = advance(st, [DeviceSeen("d01", False, OLD)], 200, policy)
    st, acts = advance(st, [DeviceSeen("d01", True, OLD)], 300, policy)
    assert issued(acts) == ["d01"] and st.phase == "running" and "d01 came back" in st.reason
    st, _ = advance(st, [InstallReport("d01", "commit", "ok")], 301, policy)
    st, _ = advance(st, [], 302, policy)
    assert st.phase == "completed" and st.device("d01").state == "installed"


def test_an_aborted_rollout_can_still_be_rolled_back_and_the_shell_asks_the_machine_which_commands_apply():
    """Abort stops issuing; the devices that installed keep the new bundle until the operator
    rolls back. The shell used to accept `rollback` on an aborted rollout (its own phase table)
    while the machine ignored every command in a terminal phase: a 200 that did nothing."""
    from hub.rollout import command_applies

    policy = Policy(cohorts=("2", "100%"), soak_s=0, on_breach="abort", max_retries=0)
    st, _ = advance(RolloutState(NEW), seen(4), 0, policy)
    st, _ = advance(
        st, [InstallReport("d00", "commit", "ok"), InstallReport("d01", "verify", "failed", "bad_signature")], 1, policy
    )
    assert st.phase == "aborted" and st.device("d00").state == "installed"
    assert command_applies("rollback", st.phase) and not command_applies("resume", st.phase)
    st, acts = advance(st, [Command("rollback", "ops")], 2, policy)
    assert st.phase == "rolled_back" and sorted((a.device, a.action) for a in rollbacks(acts)) == [
        ("d00", "rollback"),
        ("d01", "rollback"),
    ]
    for op in ("pause", "resume", "approve", "cancel", "rollback"):
        assert not command_applies(op, "rolled_back") and not command_applies(op, "cancelled")
    assert [op for op in ("pause", "resume", "approve", "cancel", "rollback") if command_applies(op, "running")] == [
        "pause",
        "cancel",
        "rollback",
    ]


def test_a_rollout_whose_devices_all_went_offline_waits_instead_of_completing():
    """Found by the reliability suite: agents killed during their installs (their last will
    says offline) made a rollout 'completed' with none of its devices installed."""
    policy = Policy(cohorts=("100%",), soak_s=0)
    st, _ = advance(RolloutState(NEW), seen(4), 0, policy)
    st, _ = advance(st, [DeviceSeen(f"d0{i}", False, OLD) for i in range(4)], 1, policy)
    st, _ = advance(st, [], 100, policy)
    assert st.phase == "running" and st.counts() == {"issued": 4}


def test_an_offline_device_of_a_completed_rollout_that_comes_back_reopens_it_and_its_failure_counts():
    policy = Policy(cohorts=("100%",), soak_s=0, gates=Gates(max_install_failure_rate=0.0))
    st, _ = advance(RolloutState(NEW), seen(4), 0, policy)
    done = [InstallReport(f"d0{i}", "commit", "ok") for i in range(3)]
    st, _ = advance(st, [*done, DeviceSeen("d03", False, OLD)], 1, policy)
    st, _ = advance(st, [], 2, policy)
    assert st.phase == "completed" and st.device("d03").state == "issued"  # an offline device never blocks
    st, _ = advance(st, [DeviceSeen("d03", True, OLD)], 3, policy)
    assert st.phase == "running" and "d03 came back" in st.reason
    st, _ = advance(st, [InstallReport("d03", "selftest", "failed", "selftest_failed")], 4, policy)
    assert st.phase != "completed" and st.device("d03").state == "failed"
    assert any(g.name == "install_failure_rate" and g.status == "breach" for g in st.gates)


def test_a_rollout_whose_telemetry_gates_never_had_data_does_not_say_they_passed():
    policy = Policy(cohorts=("100%",), soak_s=0)
    st, _ = advance(RolloutState(NEW), seen(2), 0, policy)
    st, _ = advance(st, [InstallReport("d00", "commit", "ok"), InstallReport("d01", "commit", "ok")], 1, policy)
    st, _ = advance(st, [], 2, policy)
    assert st.phase == "completed"
    assert "passed install_failure_rate" in st.reason and "no data for" in st.reason
    assert "every cohort passed its gates" not in st.reason
    h = [Health(f"d0{i}", 500, 0, 0, sketch(0.01), sketch(0.01), prev_inferences=500) for i in range(2)]
    st2, _ = advance(RolloutState(NEW), seen(2), 0, Policy(cohorts=("100%",), soak_s=0, gates=Gates(max_p95_ratio=1.5)))
    done = [InstallReport("d00", "commit", "ok"), InstallReport("d01", "commit", "ok")]
    st2, _ = advance(st2, [*done, *h], 1, Policy(cohorts=("100%",), soak_s=0, gates=Gates(max_p95_ratio=1.5)))
    st2, _ = advance(st2, h, 2, Policy(cohorts=("100%",), soak_s=0, gates=Gates(max_p95_ratio=1.5)))
    assert st2.phase == "completed" and st2.reason == "every cohort passed its gates"  # all had data


def test_retry_reissues_failed_and_timed_out_devices_with_fresh_attempts_and_reopens_a_completed_rollout():
    policy = Policy(
        cohorts=("100%",), soak_s=0, install_timeout_s=100, max_retries=0, gates=Gates(max_install_failure_rate=1.0)
    )
    st, _ = advance(RolloutState(NEW), seen(3), 0, policy)
    st, _ = advance(
        st, [InstallReport("d00", "verify", "failed", "unknown_key"), InstallReport("d01", "commit", "ok")], 1, policy
    )
    st, _ = advance(st, [], 101, policy)  # d02 times out, no retries left
    assert [d.state for d in st.devices] == ["failed", "installed", "timed_out"] and st.phase == "completed"
    # naming one device retries it alone; an installed one is left as it is
    st, acts = advance(st, [Command("retry", "ops", ("d00", "d01"))], 102, policy)
    assert issued(acts) == ["d00"] and st.device("d00").state == "issued" and st.device("d00").attempts == 1
    assert st.device("d00").reason == "retry by ops" and st.device("d01").state == "installed"
    assert st.phase == "running" and st.reason == "1 device(s) retried by ops"
    # naming none retries every failed or timed-out device of the rollout
    st, acts = advance(st, [Command("retry", "ops")], 103, policy)
    assert issued(acts) == ["d02"]


def test_retry_does_nothing_while_paused():
    policy = Policy(cohorts=("100%",), soak_s=0, gates=Gates(max_install_failure_rate=1.0))
    st, _ = advance(RolloutState(NEW), seen(1), 0, policy)
    st, _ = advance(st, [InstallReport("d00", "verify", "failed", "unknown_key"), Command("pause", "ops")], 1, policy)
    st, acts = advance(st, [Command("retry", "ops", ("d00",))], 2, policy)
    assert acts == [] and st.device("d00").state == "failed"


def superseded(st: RolloutState, ids: set[str], by: str = "r2") -> RolloutState:
    """What the shell writes when a newer rollout of the channel takes ``ids`` (hub.rollouts.create)."""
    moved = ("pending", "staging", "issued", "installing")
    return replace(
        st,
        devices=tuple(
            replace(d, state="cancelled", reason=f"{SUPERSEDED} {by}") if d.id in ids and d.state in moved else d
            for d in st.devices
        ),
    )


def test_a_late_commit_report_installs_a_superseded_device_and_a_rollout_left_with_none_completes():
    """Ingest was behind: d00 and d01 had committed when a newer rollout took every device; d02
    had dropped the job. Nothing is left to install or judge, even under require_samples."""
    policy = Policy(cohorts=("100%",), soak_s=3600, require_samples=True)
    st, _ = advance(RolloutState(NEW), seen(3), 0, policy)
    st, _ = advance(st, [InstallReport(f"d0{i}", "download", "progress") for i in range(3)], 1, policy)
    st = superseded(st, {"d00", "d01", "d02"})
    late = [InstallReport("d00", "commit", "ok"), InstallReport("d01", "switch", "ok")]
    st, acts = advance(st, [*late, InstallReport("d02", "download", "failed", "timeout")], 2, policy)
    assert acts == [] and st.counts() == {"installed": 2, "cancelled": 1}
    assert {d.reason for d in st.devices} == {f"{SUPERSEDED} r2"}  # the record still says they moved on
    assert st.phase == "completed" and st.reason.startswith("3 device(s) superseded")


def test_a_canary_taken_by_a_newer_rollout_does_not_hold_the_next_cohorts_forever():
    st, acts = advance(RolloutState(NEW), seen(20), 0, P)
    assert issued(acts) == ["d00"]
    st = superseded(st, {"d00"})
    st, acts = advance(st, [], 1, P)
    assert acts == [] and st.soak_started == 1 and st.phase == "running"
    st, acts = advance(st, [], 11, P)
    assert issued(acts) == ["d01"] and st.cohort == 1
    now = 12
    while st.phase == "running" and now < 1000:
        st, _ = install_all(st, now, P)
        st, _ = advance(st, [], now + 10, P)
        now += 20
    assert st.phase == "completed" and st.counts() == {"installed": 19, "cancelled": 1}


def test_rolling_back_an_older_rollout_leaves_the_devices_a_newer_one_holds_alone():
    """Rollout r1 completed on three devices; r2 (newer, same channel) has since taken d00 and
    d01. Rolling r1 back must not undo r2 there: only d02 goes back, and the reason says why
    the other two did not. A gate's automatic rollback and a retry obey the same rule."""
    policy = Policy(cohorts=("100%",), soak_s=0, max_retries=0)
    st, _ = advance(RolloutState(NEW), seen(3), 0, policy)
    st, _ = install_all(st, 1, policy)
    st, _ = advance(st, [], 2, policy)
    assert st.phase == "completed"
    held = [Elsewhere("d00", "r2"), Elsewhere("d01", "r2")]
    back, acts = advance(st, [Command("rollback", "ops"), *held], 3, policy)
    assert [(a.device, a.action) for a in rollbacks(acts)] == [("d02", "rollback")]
    assert back.phase == "rolled_back" and back.reason.endswith("; 2 device(s) left alone: newer rollout r2 holds them")
    assert back.counts() == {"installed": 2, "rolling_back": 1}
    again, acts = advance(st, [Command("rollback", "ops")], 3, policy)  # nobody newer: all three
    assert len(rollbacks(acts)) == 3 and "left alone" not in again.reason

    tolerant = replace(policy, gates=Gates(max_install_failure_rate=1.0))
    st, _ = advance(RolloutState(NEW), seen(3), 0, tolerant)
    fails = [InstallReport(f"d0{i}", "verify", "failed", "bad_signature") for i in range(3)]
    st, _ = advance(st, fails, 1, tolerant)
    assert st.phase == "completed"
    st, acts = advance(st, [Command("retry", "ops"), Elsewhere("d01", "r2")], 2, tolerant)
    assert issued(acts) == ["d00", "d02"] and st.device("d01").state == "failed"


def test_a_timed_out_device_held_by_a_newer_rollout_is_not_reissued_when_it_comes_back():
    policy = Policy(
        cohorts=("100%",), soak_s=0, install_timeout_s=100, max_retries=0, gates=Gates(max_install_failure_rate=1.0)
    )
    st, _ = advance(RolloutState(NEW), seen(2), 0, policy)
    st, _ = advance(st, [], 150, policy)  # both silent while online: their one attempt times out
    st, _ = advance(st, seen(2, online=False), 200, policy)
    assert st.counts() == {"timed_out": 2}
    st, acts = advance(st, [*seen(2), Elsewhere("d00", "r2")], 300, policy)
    assert issued(acts) == ["d01"] and st.device("d00").state == "timed_out"
