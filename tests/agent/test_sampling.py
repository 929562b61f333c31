"""agent.sampling: which low-confidence inputs a device keeps, and the caps that bound them."""

from __future__ import annotations

import numpy as np
import pytest

from agent.errors import ConfigError
from agent.sampling import Caps, Policy, confidence, decide

MIN, HOUR, DAY = 60, 3600, 86400
T0 = 1_800_000_000 - 1_800_000_000 % DAY  # a UTC midnight
POLICY = Policy(enabled=True, threshold=0.6, per_minute=2, per_hour=3, per_day=4, disk_bytes=1000, max_input_bytes=500)


def run(policy: Policy, times: list[float], size: int = 10, conf: float = 0.1, disk: int = 0) -> list[str]:
    caps, out = Caps(), []
    for t in times:
        caps, d = decide(policy, caps, conf, size, disk, t)
        out.append(d)
    return out


def test_off_by_default_and_refuses_bad_values_naming_them():
    assert not Policy().enabled and not Policy.from_dict({}).applies_to("digits")
    assert Policy.from_dict({"enabled": True, "models": ["digits"]}).applies_to("digits")
    assert not Policy.from_dict({"enabled": True, "models": ["digits"]}).applies_to("mnv1")
    for bad, named in (
        ({"enabled": "yes"}, "enabled"),
        ({"threshold": 1.5}, "threshold"),
        ({"per_minute": -1}, "per_minute"),
        ({"per_day": 2.5}, "per_day"),
        ({"measure": "vibes"}, "measure"),
        ({"disk_bytes": True}, "disk_bytes"),
        ({"models": "digits"}, "models"),
    ):
        with pytest.raises(ConfigError, match=named):
            Policy.from_dict(bad)


def test_a_confident_answer_is_never_kept_and_counts_against_no_cap():
    caps, d = decide(POLICY, Caps(), 0.6, 10, 0, T0)
    assert (caps, d) == (Caps(), "confident")


def test_the_minute_cap_holds_within_a_minute_and_frees_at_the_next():
    assert run(POLICY, [T0, T0 + 1, T0 + 59, T0 + MIN]) == ["sample", "sample", "minute_cap", "sample"]


def test_the_hour_cap_holds_across_minutes():
    got = run(POLICY, [T0, T0 + MIN, T0 + 2 * MIN, T0 + 3 * MIN, T0 + HOUR])
    assert got == ["sample", "sample", "sample", "hour_cap", "sample"]


def test_the_day_cap_holds_across_hours_and_frees_at_utc_midnight():
    times = [T0 + i * HOUR for i in range(6)] + [T0 + DAY]
    assert run(POLICY, times) == ["sample"] * 4 + ["day_cap", "day_cap", "sample"]


def test_a_refused_sample_does_not_use_up_a_cap():
    caps = Caps()
    caps, d1 = decide(POLICY, caps, 0.1, 10, 995, T0)  # no room on disk
    caps, d2 = decide(POLICY, caps, 0.1, 600, 0, T0)  # too big
    caps, d3 = decide(POLICY, caps, 0.1, 10, 0, T0)
    caps, d4 = decide(POLICY, caps, 0.1, 10, 0, T0)
    assert (d1, d2, d3, d4) == ("disk_cap", "too_big", "sample", "sample")


def test_the_disk_cap_counts_what_is_waiting_for_upload():
    assert run(POLICY, [T0], size=10, disk=990) == ["sample"]
    assert run(POLICY, [T0], size=11, disk=990) == ["disk_cap"]


def test_caps_survive_a_round_trip_and_a_torn_file_starts_fresh():
    caps, _ = decide(POLICY, Caps(), 0.1, 10, 0, T0)
    assert Caps.from_dict(caps.to_dict()) == caps
    assert Caps.from_dict({"minute": "x"}) == Caps() and Caps.from_dict(None) == Caps()


def test_confidence_reuses_the_escalation_measures_and_a_batch_is_its_least_sure_row():
    p = Policy(enabled=True, measure="max_score")
    assert confidence(p, {"task": "classification"}, np.array([0.1, 0.9])) == pytest.approx(0.9)
    batch = np.array([[0.1, 0.9], [0.4, 0.6]])
    assert confidence(p, {"task": "classification"}, batch) == pytest.approx(0.6)
    det = Policy(enabled=True, measure="mean_score")
    assert confidence(det, {"task": "detection", "detections": [{"score": 0.8}, {"score": 0.6}]}, None) == 0.7
    with pytest.raises(ConfigError, match="mean_score"):
        confidence(det, {"task": "classification"}, np.array([0.5, 0.5]))
