"""One merge of stored telemetry windows (hub.telemetry.merge) behind the summaries, the device
page, the alert scan, the rollout gates and the dashboard's charts."""

from __future__ import annotations

from hub.models import TelemetryWindow
from hub.telemetry import merge
from protocol.baseline import Baseline, Feature
from protocol.sketch import LatencySketch


def window(ms: float, drift: dict | None = None, shadow: dict | None = None, latency: dict | None = None):
    sk = LatencySketch()
    for _ in range(10):
        sk.add(ms / 1000)
    return TelemetryWindow(
        device="d",
        seq=1,
        window_start=0,
        window_end=10,
        bundle="b" * 64,
        inferences=10,
        errors=1,
        cpu=9,
        latency=sk.to_dict() if latency is None else latency,
        drift=drift or {},
        shadow=shadow,
        received=10,
    )


def test_merge_adds_counts_sketches_drift_bins_and_shadow_comparisons():
    shadow = {"samples": 10, "errors": 0, "agreement": 0.5, "latency_delta_ms": 1.0}
    m = merge([window(5, {"inputs": {"f": [1, 2]}}, shadow), window(50, {"inputs": {"f": [3, 4]}}, shadow)])
    assert m.windows == 2 and m.counts == {"inferences": 20, "errors": 2, "tpu": 0, "cpu": 18, "cloud": 0}
    assert m.sketch.count == 20 and m.drift == {"inputs.f": {2: [4, 6]}}
    assert (m.shadow_agree, m.shadow_total) == (10, 20)


def test_windows_binned_on_other_edges_never_mix_with_the_baselines_bins():
    rows = [
        window(5, {"inputs": {"f": [1, 2, 3]}}),
        window(5, {"inputs": {"f": [5, 5]}}),
        window(5, {"inputs": {"f": [1, 1]}}),
    ]
    base = Baseline(10, {"f": Feature((0.5,), (5, 5))})
    m = merge(rows)
    assert m.drift_for(base) == {"inputs.f": [6, 6]}  # in any order: the odd window is left out
    assert merge(reversed(rows)).drift_for(base) == {"inputs.f": [6, 6]}


def test_a_part_that_does_not_parse_leaves_out_only_that_part():
    bad_sketch = window(5, {"inputs": {"f": [1, 2]}}, latency={"b": {"0": 1}, "n": 7})
    bad_shadow = window(5, shadow={"samples": "many"})
    m = merge([bad_sketch, bad_shadow, window(5)])
    assert m.sketch.count == 20 and m.counts["inferences"] == 30  # the bad sketch's window still counts
    assert m.drift == {"inputs.f": {2: [1, 2]}} and m.shadow_total == 0
