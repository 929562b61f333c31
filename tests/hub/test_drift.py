"""Drift that operators can trust, with figures printed (run with ``-s`` to see them).

Reference: 20,000 samples; baseline edges at 10 reference quantiles (as the compiler does);
windows of 500 samples (a merged cohort/device window), 100 windows per case."""

from __future__ import annotations

import numpy as np
import pytest

from hub.drift import Thresholds, assess, verdict
from hub.rollout import DeviceState, Gates, Health, Policy, RolloutState, evaluate_gates
from hub.telemetry import Merged
from hub.web import series
from protocol.baseline import Baseline
from protocol.features import class_edges, input_features
from protocol.sketch import LatencySketch, bin_counts, merge_counts, quantile_edges

WINDOW, WINDOWS, REF_N = 500, 100, 20_000


def rates(ref_values, make_window, rng, th=Thresholds()):
    edges = quantile_edges(list(ref_values), 10)
    ref = bin_counts(edges, ref_values)
    statuses = [verdict("f", ref, bin_counts(edges, make_window(rng)), th).status for _ in range(WINDOWS)]
    return {s: statuses.count(s) / WINDOWS for s in ("ok", "warn", "alert", "insufficient_data")}


def detected(r):
    return r["warn"] + r["alert"]


def test_mean_shifts_are_detected_and_no_shift_rarely_alerts():
    rng = np.random.default_rng(7)
    ref = rng.normal(0, 1, REF_N)
    print(f"\n{'case':<22}{'ok':>7}{'warn':>7}{'alert':>7}   (fraction of {WINDOWS} windows of {WINDOW})")
    table = {}
    for shift in (0.0, 0.25, 0.5, 1.0):
        r = rates(ref, lambda g, s=shift: g.normal(s, 1, WINDOW), rng)
        table[shift] = r
        print(f"{f'mean shift {shift:.2f} sigma':<22}{r['ok']:>7.2f}{r['warn']:>7.2f}{r['alert']:>7.2f}")
    assert table[0.0]["alert"] == 0 and detected(table[0.0]) <= 0.05  # false alerts per 100 windows
    assert detected(table[0.25]) >= 0.75  # measured 0.85 at 500 samples; PSI alone would see 0.00
    assert detected(table[0.5]) >= 0.99 and table[1.0]["alert"] >= 0.99


def test_image_brightness_change_is_detected_on_the_real_feature():
    rng = np.random.default_rng(11)
    pre = {"kind": "image", "channels": 1}

    def images(n, gain):
        base = rng.beta(2, 5, size=(n, 8, 8, 1)) * gain  # float input tensors as the model sees them
        return [input_features(x, pre)["brightness"] for x in np.clip(base, 0, 1)]

    ref = images(REF_N, 1.0)
    print(f"\n{'brightness gain':<22}{'ok':>7}{'warn':>7}{'alert':>7}")
    table = {}
    for gain in (1.0, 1.05, 1.15, 1.3):
        r = rates(ref, lambda g, k=gain: images(WINDOW, k), rng)
        table[gain] = r
        print(f"{f'x{gain:.2f}':<22}{r['ok']:>7.2f}{r['warn']:>7.2f}{r['alert']:>7.2f}")
    assert detected(table[1.0]) <= 0.05 and table[1.0]["alert"] == 0
    assert detected(table[1.15]) >= 0.95 and table[1.3]["alert"] >= 0.95


def test_class_prior_swap_is_detected_on_top1_class():
    rng = np.random.default_rng(3)
    prior = np.array([0.30, 0.05, 0.10, 0.10, 0.10, 0.10, 0.05, 0.10, 0.05, 0.05])
    swapped = prior.copy()
    swapped[[0, 1]] = swapped[[1, 0]]
    edges = class_edges(10)
    ref = bin_counts(edges, rng.choice(10, REF_N, p=prior).astype(float))
    out = {}
    for name, p in (("same prior", prior), ("classes 0<->1 swapped", swapped)):
        st = [
            verdict("top1_class", ref, bin_counts(edges, rng.choice(10, WINDOW, p=p).astype(float))).status
            for _ in range(WINDOWS)
        ]
        out[name] = {s: st.count(s) / WINDOWS for s in ("ok", "warn", "alert")}
        print(f"\n{name:<24} ok {out[name]['ok']:.2f} warn {out[name]['warn']:.2f} alert {out[name]['alert']:.2f}")
    assert out["classes 0<->1 swapped"]["alert"] >= 0.99
    assert out["same prior"]["alert"] == 0


def test_a_window_with_too_few_samples_says_insufficient_data_never_drift():
    ref = [100] * 11
    wildly_shifted = [0] * 10 + [99]
    v = verdict("f", ref, wildly_shifted, Thresholds(min_samples=100))
    assert v.status == "insufficient_data" and v.psi is None
    assert verdict("f", ref, [0] * 10 + [100], Thresholds(min_samples=100)).status == "alert"


@pytest.mark.parametrize("seed", range(5))
def test_merging_device_summaries_equals_summarising_the_union(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(0, 1, 300), rng.normal(0.3, 1.2, 700)
    edges = quantile_edges(list(rng.normal(0, 1, 1000)), 10)
    assert merge_counts(bin_counts(edges, a), bin_counts(edges, b)) == bin_counts(edges, np.concatenate([a, b]))
    la, lb, lu = LatencySketch(), LatencySketch(), LatencySketch()
    for x in np.abs(a) / 100:
        la.add(float(x))
        lu.add(float(x))
    for x in np.abs(b) / 100:
        lb.add(float(x))
        lu.add(float(x))
    m = la.merge(lb)
    assert m.counts == lu.counts and m.count == lu.count
    assert m.quantile(0.95) == lu.quantile(0.95) and m.quantile(0.5) == lu.quantile(0.5)


def test_thresholds_per_model_and_feature_and_hub_overrides_apply_in_order():
    baseline = Baseline.from_dict(
        {
            "schema": 1,
            "samples": 1000,
            "inputs": {
                "brightness": {"edges": [0.5], "ref": [500, 500], "thresholds": {"psi_alert": 5.0}},
                "mean_c0": {"edges": [0.5], "ref": [500, 500]},
            },
            "thresholds": {"psi_warn": 0.1, "psi_alert": 0.25, "min_samples": 10},
        }
    )
    window = {"inputs": {"brightness": [300, 0], "mean_c0": [300, 0]}}
    rep = assess(baseline, [window])
    assert rep.to_dict()["features"]["inputs.brightness"]["status"] == "warn"  # per-feature: alert at 5.0
    assert rep.to_dict()["features"]["inputs.mean_c0"]["status"] == "alert"
    rep = assess(baseline, [window], {"inputs.mean_c0": {"min_samples": 1000}})
    assert rep.to_dict()["features"]["inputs.mean_c0"]["status"] == "insufficient_data"
    assert rep.status == "warn"
    assert assess(baseline, []).status == "insufficient_data"


AGREE = Baseline.from_dict(
    {
        "schema": 1,
        "samples": 1000,
        "inputs": {
            "brightness": {"edges": [0.25, 0.5, 0.75], "ref": [250, 250, 250, 250]},
            "mean_c0": {"edges": [0.5], "ref": [500, 500], "thresholds": {"psi_alert": 5.0}},
        },
        "thresholds": {"psi_warn": 0.1, "psi_alert": 0.25, "min_samples": 100},
    }
)


def _gate(key: str, counts: list[int]):
    """The rollout gate's drift result for one installed device that sent ``counts``."""
    st = RolloutState(
        "b" * 64,
        devices=(DeviceState("d", "installed", 0),),
        baseline=AGREE.refs(),
        drift_thresholds=AGREE.thresholds_for(""),
        feature_thresholds={k: AGREE.thresholds_for(k) for k in AGREE.features()},
    )
    policy = Policy(gates=Gates(max_p95_ratio=None, max_error_rate=None))
    health = {"d": Health("d", inferences=sum(counts), drift={key: counts})}
    return next(g for g in evaluate_gates(st, st.devices, health, policy) if g.name == "drift")


@pytest.mark.parametrize(
    "key, counts, status",
    [
        ("inputs.brightness", [100, 100, 100, 100], "ok"),
        ("inputs.brightness", [160, 100, 80, 60], "warn"),
        ("inputs.brightness", [0, 0, 0, 300], "alert"),
        ("inputs.brightness", [0, 0, 0, 50], "insufficient_data"),  # below min_samples
        # the feature's own psi_alert (5.0): the gate once judged it by the model's 0.25 (a breach)
        ("inputs.mean_c0", [300, 0], "warn"),
    ],
)
def test_device_page_alerts_chart_and_gate_judge_a_window_alike(key, counts, status):
    """One rule (protocol.sketch.drift_verdict, thresholds by Baseline.thresholds_for): the
    device page and the alert scan (hub.drift.assess, via hub.telemetry), the dashboard's PSI
    chart and the rollout gate see the same PSI and agree on alert / not alert."""
    side, name = key.split(".")
    page = assess(AGREE, [{side: {name: counts}}]).to_dict()["features"][key]
    one = series.Window(0, "b" * 64, Merged(drift={key: {len(counts): list(counts)}}))  # one window alone
    chart = series.drift([one], lambda _digest: AGREE)["drift_psi"][key][0]
    gate = _gate(key, counts)
    assert page["status"] == status
    if page["psi"] is None:
        assert chart is None and gate.status == "insufficient_data"
    else:
        assert chart == round(page["psi"], 4) and gate.value == page["psi"]
        assert gate.status == ("breach" if status == "alert" else "pass")
