"""Sketches merge exactly and the drift math says what it should."""

from __future__ import annotations

import math
import random

import pytest

from protocol.errors import BadPayload
from protocol.sketch import (
    DriftThresholds,
    LatencySketch,
    bin_counts,
    drift_verdict,
    js_divergence,
    ks_bound,
    merge_all,
    merge_counts,
    psi,
    quantile_edges,
)


def test_latency_quantiles_are_within_bucket_error_of_exact():
    rng = random.Random(1)
    values = [rng.lognormvariate(-5, 0.6) for _ in range(20_000)]
    s = LatencySketch()
    for v in values:
        s.add(v)
    values.sort()
    for q in (0.5, 0.95, 0.99):
        exact = values[int(q * (len(values) - 1))]
        assert abs(s.quantile(q) - exact) / exact < 0.05, q


def test_merging_device_sketches_equals_sketching_the_union():
    rng = random.Random(2)
    a_vals = [rng.uniform(0.001, 0.05) for _ in range(500)]
    b_vals = [rng.uniform(0.01, 0.2) for _ in range(700)]
    a, b, union = LatencySketch(), LatencySketch(), LatencySketch()
    for v in a_vals:
        a.add(v)
        union.add(v)
    for v in b_vals:
        b.add(v)
        union.add(v)
    merged = a.merge(b)
    assert merged.counts == union.counts and merged.count == union.count
    assert LatencySketch.from_dict(merged.to_dict()).counts == union.counts


def test_sketch_from_wire_rejects_inconsistent_counts():
    with pytest.raises(BadPayload, match="sum to 3, n says 4"):
        LatencySketch.from_dict({"b": {"1": 3}, "n": 4, "sum": 0.1, "min": 0.0, "max": 0.1})


def test_drift_math_on_identical_and_shifted_histograms():
    rng = random.Random(3)
    ref_vals = [rng.gauss(0, 1) for _ in range(5000)]
    edges = quantile_edges(ref_vals, 10)
    ref = bin_counts(edges, ref_vals)
    same = bin_counts(edges, [rng.gauss(0, 1) for _ in range(2000)])
    shifted = bin_counts(edges, [rng.gauss(1, 1) for _ in range(2000)])
    assert psi(ref, same) < 0.05 and psi(ref, shifted) > 0.25
    assert js_divergence(ref, same) < js_divergence(ref, shifted) <= 1
    assert ks_bound(ref, shifted) > 0.3
    assert drift_verdict(ref, shifted).status == "alert"
    assert drift_verdict(ref, same).status == "ok"


def test_small_window_says_insufficient_data_never_drift():
    ref = [100, 100, 100]
    verdict = drift_verdict(ref, [0, 0, 50], DriftThresholds(min_samples=100))
    assert verdict.status == "insufficient_data" and verdict.psi is None


def test_window_with_wrong_number_of_bins_is_a_bad_payload():
    with pytest.raises(BadPayload, match="window has 2 bins, baseline has 3"):
        psi([1, 2, 3], [1, 2])
    assert merge_counts([1, 2], [3, 4]) == [4, 6]


def test_a_sketch_becomes_prometheus_buckets_with_every_value_at_or_below_its_bound():
    from protocol.sketch import HISTOGRAM_BOUNDS_S

    values = [1e-7, 0.0002, 0.0003, 0.001, 0.0099, 0.01, 0.05, 0.3, 2.0, 8.0, 9.0, 3600.0]
    sk = LatencySketch()
    for v in values:
        sk.add(v)
    counts = sk.histogram()
    assert len(counts) == len(HISTOGRAM_BOUNDS_S) + 1 and sum(counts) == len(values)
    # the bucket each value is counted in is the first bound at or above it, or the one before
    # it when the value's sketch bucket straddles nothing (bounds fall on sketch edges)
    bounds = (*HISTOGRAM_BOUNDS_S, math.inf)
    expected = [0] * len(bounds)
    for v in values:
        expected[next(j for j, b in enumerate(bounds) if v <= b * (1 + 1e-5))] += 1
    assert counts == expected


def test_merging_many_at_once_equals_merging_one_by_one():
    def sk(ms: float, n: int) -> LatencySketch:
        out = LatencySketch()
        out.add(ms / 1000, n)
        return out

    parts = [sk(ms, n) for ms, n in ((1, 3), (40, 1), (7, 9), (0.01, 2))]
    one_by_one = sk(5, 5)
    for p in parts:
        one_by_one = one_by_one.merge(p)
    assert merge_all(sk(5, 5), parts) == one_by_one
    assert merge_all(LatencySketch(), []) == LatencySketch()
