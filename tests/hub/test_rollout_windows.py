"""Maintenance windows and app holds in the pure rollout machine (``hub.rollout`` rule 5 and
the hold rule under rule 3), table-tested. ``WindowClosed`` is what the shell sends for a device
whose group's window is closed now; time is an argument."""

from __future__ import annotations

import pytest

from hub.rollout import (
    Command,
    DeviceSeen,
    InstallReport,
    Issue,
    Policy,
    PolicyError,
    RolloutState,
    WindowClosed,
    advance,
)
from protocol.device import Inventory

NEW, OLD = "b" * 64, "a" * 64
INV = Inventory(board="rpi4", edgetpu=False)
OPENS = 1_000_000  # when the closed group's window opens
P = Policy(install_timeout_s=100, max_retries=1)


def seen(*ids: str, online: bool = True, active: str | None = OLD) -> list[DeviceSeen]:
    return [DeviceSeen(i, online, active, INV) for i in ids]


def closed(*ids: str, opens: int = OPENS) -> list[WindowClosed]:
    return [WindowClosed(i, opens) for i in ids]


def issued(actions) -> list[str]:
    return sorted(a.device for a in actions if isinstance(a, Issue) and a.action == "install")


def states(st: RolloutState) -> dict[str, str]:
    return {d.id: d.state for d in st.devices}


def start(policy: Policy = P, now: int = 0):
    """Two devices, 'open1' in a group whose window is open and 'shut1' in one whose is closed."""
    return advance(RolloutState(NEW), [*seen("open1", "shut1"), *closed("shut1")], now, policy)


def test_a_device_whose_window_is_closed_waits_and_is_told_nothing():
    st, actions = start()
    assert issued(actions) == ["open1"]
    assert states(st) == {"open1": "issued", "shut1": "waiting"}
    assert st.device("shut1").reason == "waiting for window (opens at 1970-01-12 13:46 UTC)"
    assert st.device("shut1").attempts == 0


def test_a_waiting_device_never_times_out_fails_or_lets_the_rollout_complete():
    st, _ = start()
    st, _ = advance(st, [InstallReport("open1", "commit", "ok"), *closed("shut1")], 10, P)
    st, actions = advance(st, closed("shut1"), 10 + 10 * P.install_timeout_s, P)
    assert states(st) == {"open1": "installed", "shut1": "waiting"}
    assert not issued(actions)
    assert st.phase == "running" and st.soak_started is None
    rate = next(g for g in st.gates if g.name == "install_failure_rate")
    assert rate.status == "pass" and rate.value == 0.0


def test_the_window_opening_issues_the_waiting_device_and_the_rollout_completes():
    st, _ = start()
    st, _ = advance(st, [InstallReport("open1", "commit", "ok"), *closed("shut1")], 10, P)
    st, actions = advance(st, [], OPENS, P)  # no WindowClosed: the window is open now
    assert issued(actions) == ["shut1"]
    assert st.device("shut1").state == "issued" and st.device("shut1").reason == "maintenance window open"
    st, _ = advance(st, [InstallReport("shut1", "commit", "ok")], OPENS + 5, P)
    assert st.phase == "completed"


@pytest.mark.parametrize(
    ("phase_cmd", "phase"),
    [("pause", "paused"), ("cancel", "cancelled")],
)
def test_a_window_that_opens_while_the_rollout_is_stopped_issues_nothing(phase_cmd: str, phase: str):
    st, _ = start()
    st, _ = advance(st, [Command(phase_cmd), *closed("shut1")], 5, P)
    st, actions = advance(st, [], OPENS, P)
    assert st.phase == phase and not issued(actions)
    assert st.device("shut1").state == ("waiting" if phase == "paused" else "cancelled")


def test_resuming_issues_the_device_whose_window_opened_meanwhile():
    st, _ = start()
    st, _ = advance(st, [Command("pause"), InstallReport("open1", "commit", "ok"), *closed("shut1")], 5, P)
    st, actions = advance(st, [Command("resume")], OPENS, P)
    assert issued(actions) == ["shut1"]


def test_rollback_ignores_windows_and_cancels_waiting_devices_never_issued():
    st, _ = start()
    st, actions = advance(st, [Command("rollback"), *closed("open1", "shut1")], 5, P)
    rolled = [(a.device, a.action) for a in actions if isinstance(a, Issue)]
    assert rolled == [("open1", "rollback")]  # its window is closed now: a rollback goes anyway
    assert states(st) == {"open1": "rolling_back", "shut1": "cancelled"}


def test_rollback_tells_a_waiting_device_that_was_issued_before_to_roll_back():
    st, _ = start()
    # open1's install times out, and by then its window has closed: the retry waits
    st, actions = advance(st, closed("shut1", "open1"), P.install_timeout_s + 1, P)
    assert st.device("open1").state == "waiting" and st.device("open1").attempts == 1 and not issued(actions)
    st, actions = advance(st, [Command("rollback"), *closed("shut1", "open1")], P.install_timeout_s + 2, P)
    assert [(a.device, a.action, a.bundle) for a in actions if isinstance(a, Issue)] == [("open1", "rollback", OLD)]


def test_a_rollout_created_with_ignore_windows_issues_everyone():
    st, actions = start(Policy(ignore_windows=True))
    assert issued(actions) == ["open1", "shut1"]


def test_the_canary_is_taken_from_a_group_whose_window_is_open():
    pol = Policy(cohorts=("1", "100%"), soak_s=0)
    st, actions = advance(RolloutState(NEW), [*seen("a1", "z9"), *closed("a1")], 0, pol)
    assert issued(actions) == ["z9"] and st.device("a1").cohort is None


def test_a_waiting_device_seen_running_the_target_is_installed():
    st, _ = start()
    st, _ = advance(st, [*seen("shut1", active=NEW), *closed("shut1")], 5, P)
    assert st.device("shut1").state == "installed"


def test_a_waiting_device_that_comes_back_to_a_completed_rollout_reopens_it():
    st, _ = advance(RolloutState(NEW), [*seen("open1"), *seen("shut1", online=False), *closed("shut1")], 0, P)
    st, _ = advance(st, [InstallReport("open1", "commit", "ok"), *closed("shut1")], 5, P)
    assert st.phase == "completed"  # its only waiting device is offline: it blocks nothing
    st, actions = advance(st, seen("shut1"), OPENS, P)
    assert st.phase == "running" and issued(actions) == ["shut1"]


def test_an_app_hold_says_so_and_moves_the_timeout_to_the_end_of_the_hold():
    pol = Policy(install_timeout_s=100, max_hold_s=3600)
    st, _ = advance(RolloutState(NEW), seen("open1"), 0, pol)
    hold = InstallReport("open1", "switch", "progress", hold_until=1800, hold_reason="surgery in progress")
    st, _ = advance(st, [hold], 10, pol)
    d = st.device("open1")
    assert d.state == "installing" and d.reason == "held by app until 1970-01-01 00:30 UTC: surgery in progress"
    st, actions = advance(st, [], 1800 + 99, pol)
    assert st.device("open1").state == "installing" and not issued(actions)
    st, actions = advance(st, [], 1800 + 100, pol)
    assert issued(actions) == ["open1"]  # no switch by then: retried like any timeout


def test_a_hold_longer_than_the_policy_allows_is_capped():
    pol = Policy(install_timeout_s=100, max_hold_s=600, max_retries=0)
    st, _ = advance(RolloutState(NEW), seen("open1"), 0, pol)
    st, _ = advance(st, [InstallReport("open1", "switch", "progress", hold_until=10**9)], 10, pol)
    assert "until 1970-01-01 00:10 UTC" in st.device("open1").reason
    st, _ = advance(st, [], 10 + 600 + 100, pol)
    assert st.device("open1").state == "timed_out"


@pytest.mark.parametrize(
    ("bad", "needle"),
    [({"ignore_windows": "yes"}, "ignore_windows must be true/false"), ({"max_hold_s": -1}, "max_hold_s")],
)
def test_bad_window_policy_fields_are_refused_naming_them(bad, needle):
    with pytest.raises(PolicyError, match=needle):
        Policy.from_dict(bad)
