"""``python -m bench rollups`` on a small fleet: ours, the baseline and the limit are measured on
the same minute, and ours must write what the baseline folds (a rollup that differs fails the run)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import rollups as bench_rollups

RESULT = Path(__file__).resolve().parents[2] / "bench" / "results" / "rollups.json"


def test_the_bench_rolls_a_minute_three_ways_and_ours_equals_the_baseline(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_rollups.main(["--devices", "30", "--rounds", "1"]) == 0
    doc = json.loads(RESULT.read_text())
    assert doc["params"]["windows"] == 30 * bench_rollups.PER_DEVICE
    assert doc["ours"] > 0 and doc["baseline"] > 0 and doc["limit"] > 0
    assert doc["cases"][-1] == {"ours_equals_baseline": True}
    assert "rollups equal to the baseline's" in capsys.readouterr().out


def test_a_rollup_that_differs_from_the_baseline_fails_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    real = bench_rollups.ours

    def one_window_short(engine: Any) -> tuple[float, list[dict[str, Any]]]:
        took, written = real(engine)
        written[0]["inferences"] -= 1
        return took, written

    monkeypatch.setattr(bench_rollups, "ours", one_window_short)
    assert bench_rollups.main(["--devices", "5", "--rounds", "1"]) == 1
