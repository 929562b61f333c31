"""The rate-rise gates (``hub.rollout_gates._rise``): a cohort's error and cloud-fallback rates
judged against the previous bundle's on the same devices, on by default. Pure: no clock, no I/O."""

from __future__ import annotations

import pytest

from hub.rollout import Gates, Health, Policy, RolloutState, advance

from .test_rollout import NEW, install_all, seen, sketch

STAGED = {"cohorts": ("10", "100%"), "soak_s": 60, "on_breach": "rollback"}


def _cohort(rates: list[tuple[float, float]], n_new: int = 50, n_old: int = 150, errors: bool = False) -> list[Health]:
    """One device per (previous rate, candidate rate), with ``n_new`` candidate and ``n_old``
    previous inferences each; the rate is the cloud-fallback rate (or the error rate)."""
    out = []
    for i, (before, after) in enumerate(rates):
        k1, k0 = round(after * n_new), round(before * n_old)
        out.append(
            Health(
                f"d{i:02}",
                inferences=n_new,
                errors=k1 if errors else 0,
                cloud=0 if errors else k1,
                latency=sketch(10.0, n_new),
                prev_latency=sketch(10.0, n_old),
                prev_inferences=n_old,
                prev_errors=k0 if errors else 0,
                prev_cloud=0 if errors else k0,
            )
        )
    return out


def _judge(hs: list[Health], gates: Gates | None = None):
    policy = Policy(**STAGED, gates=gates or Gates())  # type: ignore[arg-type]
    st, _ = advance(RolloutState(NEW), seen(100), 0, policy)
    st, _ = install_all(st, 1, policy)
    st, _ = advance(st, hs, 12, policy)
    return st


# ten devices whose own normals differ (1-3 %): no fleet-wide limit sits between the best
# devices' normal tripled and the worst devices' normal
NORMALS = [0.01, 0.012, 0.015, 0.018, 0.02, 0.02, 0.022, 0.025, 0.028, 0.03]


def test_a_fallback_rate_tripled_on_every_device_is_rolled_back_by_the_shipped_defaults_on_one_window():
    st = _judge(_cohort([(r, 3 * r) for r in NORMALS]))
    gate = next(g for g in st.gates if g.name == "cloud_fallback_rise")
    assert gate.status == "breach" and st.phase == "rolled_back", gate
    assert "on the same devices" in gate.detail and "before" in gate.detail


def test_an_error_rate_tripled_is_rolled_back_too():
    # under the fleet-wide 5 % error limit on every device but the worst two: the rise gate alone
    st = _judge(_cohort([(r / 2, 3 * r / 2) for r in NORMALS], errors=True, n_new=100, n_old=300))
    assert [g.name for g in st.gates if g.status == "breach"] == ["error_rate_rise"]
    assert st.phase == "rolled_back"


def test_devices_that_fall_back_as_often_as_before_pass_whatever_their_normal():
    st = _judge(_cohort([(r, r) for r in NORMALS]))
    gate = next(g for g in st.gates if g.name == "cloud_fallback_rise")
    assert gate.status == "pass" and st.phase == "running"


@pytest.mark.parametrize(
    "rates,n_new,why",
    [
        # 2 % -> 5 % on one device's 100 inferences: 2.5x, but 5 events could be chance (z ~ 1.3)
        ([(0.02, 0.05)], 100, "chance"),
        # 0.1 % -> 0.3 % over many devices: significant and 3x, but a fifth of a point is no regression
        ([(0.001, 0.003)] * 50, 1000, "min_rise"),
        # 10 % -> 15 %: significant and 5 points, but 1.5x is under the 2x limit
        ([(0.10, 0.15)] * 10, 200, "ratio"),
    ],
)
def test_a_rise_that_is_chance_tiny_or_under_the_ratio_does_not_halt(rates, n_new, why):
    st = _judge(_cohort(rates, n_new=n_new, n_old=3 * n_new))
    gate = next(g for g in st.gates if g.name == "cloud_fallback_rise")
    assert gate.status == "pass" and st.phase == "running", (why, gate)


def test_devices_without_the_previous_bundles_counts_are_no_comparison_and_the_gate_says_so():
    hs = [
        Health(f"d{i:02}", inferences=50, cloud=10, latency=sketch(10.0, 50), prev_latency=sketch(10.0, 150))
        for i in range(10)
    ]
    st = _judge(hs)
    gate = next(g for g in st.gates if g.name == "cloud_fallback_rise")
    assert gate.status == "insufficient_data" and st.phase == "running"
    assert "no device sent telemetry of its previous bundle" in gate.detail


def test_one_device_cannot_halt_a_cohort_with_its_own_rise():
    # d09 sends most of the cohort's inferences, at 10 % where it fell back 2 % before
    hs = _cohort([(0.02, 0.02)] * 9) + _cohort([(0.02, 0.10)], n_new=5000, n_old=1500)[:1]
    hs[-1] = Health(**{**hs[-1].__dict__, "device": "d09"})
    st = _judge(hs)
    gate = next(g for g in st.gates if g.name == "cloud_fallback_rise")
    assert gate.status == "pass" and "breached only with d09" in gate.detail, gate
    assert "one device is not a fleet regression" in gate.detail


def test_the_rise_gates_can_be_turned_off():
    st = _judge(_cohort([(r, 3 * r) for r in NORMALS]), Gates(max_cloud_rate_rise=None, max_error_rate_rise=None))
    assert not any(g.name.endswith("_rise") for g in st.gates) and st.phase == "running"


def test_the_rise_gates_round_trip_through_the_policy_dict():
    p = Policy.from_dict({"gates": {"max_cloud_rate_rise": 1.5, "rise_z": 4.0, "min_rise": 0.02}})
    assert (p.gates.max_cloud_rate_rise, p.gates.rise_z, p.gates.min_rise) == (1.5, 4.0, 0.02)
    assert Policy.from_dict(p.to_dict()) == p
