"""The benchmark stage on the device: self-test, then the candidate timed beside the current
model on the same inputs, with real LiteRT models (agent.benchmark)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.benchmark import run
from agent.runtime import LiteRTBackend
from protocol.benchmark import BenchmarkReport, BenchmarkRequest

from .bundles import MNV1, MNV2, selftest_doc


def _ticks(step_ms: dict[int, float]) -> Iterator[float]:
    """A clock whose every second reading is ``step`` ms after the first: the timed invokes
    take exactly what the table says, in the order candidate, current, candidate..."""
    t, i = 0.0, 0
    while True:
        yield t
        t += step_ms[i % 2] / 1000.0
        yield t
        i += 1


def test_benchmark_reports_p50_p95_of_both_models_on_the_candidates_selftest_vectors(coral_models: Path):
    cand = LiteRTBackend(coral_models / MNV1)
    cur = LiteRTBackend(coral_models / MNV1)
    clock = _ticks({0: 3.0, 1: 2.0})
    report = run(
        BenchmarkRequest("sha-c", 20),
        cand,
        cur,
        selftest_doc(coral_models / MNV1, coral_models, 128),
        lambda: next(clock),
    )
    assert report.ok, report.detail
    assert report.candidate is not None and report.current is not None
    assert (report.candidate.n, report.current.n) == (20, 20)
    assert report.candidate.p95_ms == pytest.approx(3.0) and report.current.p95_ms == pytest.approx(2.0)
    assert report.p95_ratio == pytest.approx(1.5)
    assert report.inputs == "selftest vectors (1)"
    assert BenchmarkReport.from_dict(report.to_dict()).to_dict() == report.to_dict()


def test_a_bigger_candidate_measures_slower_than_the_small_model_it_would_replace(coral_models: Path):
    cand = LiteRTBackend(coral_models / MNV2)
    cur = LiteRTBackend(coral_models / MNV1)
    report = run(BenchmarkRequest("sha-big", 15), cand, cur, selftest_doc(coral_models / MNV2, coral_models, 224))
    assert report.ok, report.detail
    assert report.candidate is not None and report.current is not None
    # MobileNet v2 1.0 @224 does ~20x the multiply-adds of v1 0.25 @128: its p95 is larger
    assert report.candidate.p95_ms > report.current.p95_ms
    assert "differs from the candidate's" in report.inputs  # 224x224 vectors do not fit a 128x128 input


def test_candidate_failing_its_selftest_is_not_timed(coral_models: Path):
    cand = LiteRTBackend(coral_models / MNV1)
    doc = selftest_doc(coral_models / MNV1, coral_models, 128)
    doc["cases"][0]["expected"] = [[255 - v for v in doc["cases"][0]["expected"][0]]]
    report = run(BenchmarkRequest("sha-c", 5), cand, LiteRTBackend(coral_models / MNV1), doc)
    assert not report.ok and report.detail.startswith("selftest failed:")
    assert report.candidate is None and report.p95_ratio is None


def test_device_serving_nothing_says_there_is_nothing_to_compare_with(coral_models: Path):
    cand = LiteRTBackend(coral_models / MNV1)
    report = run(BenchmarkRequest("sha-c", 5), cand, None, selftest_doc(coral_models / MNV1, coral_models, 128))
    assert not report.ok and "no current model" in report.detail
