"""One simulated device's telemetry recorder without a broker (``SimDevice.serve`` + ``window``):
the injected cloud fallbacks, shadow disagreement and fractional drift show in its windows, and
a bundle's own regression (``per_bundle``) applies only while that bundle is active."""

from __future__ import annotations

import random
from pathlib import Path

from agent.slots import SlotRecord
from protocol.signing import Root
from protocol.sketch import LatencySketch
from sim.bundle import BASELINE
from sim.config import Inference, SimConfig
from sim.device import SimDevice

REFS = {side: {n: list(f["ref"]) for n, f in BASELINE[side].items()} for side in ("inputs", "outputs")}  # type: ignore[attr-defined]
A = SlotRecord("a" * 64, "m", "1.0.0", "model_int8.tflite", "cpu")
B = SlotRecord("b" * 64, "m", "1.1.0", "model_int8.tflite", "cpu")


def device(inf: Inference) -> SimDevice:
    cfg = SimConfig("127.0.0.1", 1883, Path("unused.json"), devices=1)
    d = SimDevice("s-0", cfg, Root(1, 0, {}, {}), None, random.Random(3), inf)  # type: ignore[arg-type]
    d.serve(A, REFS)
    return d


def test_a_window_counts_cloud_fallbacks_and_shadow_agreement_at_their_injected_rates():
    d = device(Inference(cloud_rate=0.2, shadow_agreement=0.9))
    d.infer(5000)
    w = d.window(0)
    assert w.bundle == A.digest and w.counts["inferences"] == 5000
    assert 0.17 < w.counts["cloud"] / 5000 < 0.23
    assert w.counts["cloud"] + w.counts["cpu"] == 5000
    assert w.shadow is not None and w.shadow.samples == 5000
    assert 0.88 < (w.shadow.agreement or 0) < 0.92


def test_a_device_without_a_shadow_model_sends_no_shadow_record():
    d = device(Inference())
    d.infer(100)
    assert d.window(0).shadow is None


def test_a_fractional_drift_moves_that_share_of_the_values_one_bin_up():
    d = device(Inference(drift=0.5))
    d.infer(20000)
    got = d.window(0).drift["outputs"]["top1_class"]
    # reference 1/3 each; half of each bin moves up, the last bin keeps its own
    assert abs(got[0] / 20000 - 1 / 6) < 0.02
    assert abs(got[2] / 20000 - (1 / 3 + 1 / 6)) < 0.02


def test_a_bundles_own_regression_applies_only_while_it_is_served():
    d = device(Inference(latency_ms=8.0, sigma=0.01))
    d.per_bundle[B.digest] = Inference(latency_ms=8.0, sigma=0.01, slowdown=2.0)
    d.infer(200)
    before = d.window(0).latency
    d.serve(B, REFS)
    d.infer(200)
    after = d.window(10)
    assert after.bundle == B.digest and d.slots.previous == A
    ratio = (LatencySketch.from_dict(after.latency).quantile(0.5) or 0) / (
        LatencySketch.from_dict(before).quantile(0.5) or 1
    )
    assert 1.8 < ratio < 2.2
