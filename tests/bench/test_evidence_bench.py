"""``python -m bench evidence`` on a small fleet: it runs, prints its three figures, and its own
check (the cache's evidence equal to a full read's) holds on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("db", ["sqlite", "postgres"])
def test_the_evidence_bench_judges_what_a_full_read_judges_and_prints_its_ratios(db: str) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench", "evidence", "--devices", "40", "--hours", "0.2", "--rounds", "2", "--db", db],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "every device's evidence equal to the baseline's" in run.stdout
    doc = json.loads((REPO / "bench" / "results" / "evidence.json").read_text())
    assert doc["params"]["devices"] == 40 and doc["params"]["db"] == db
    assert doc["params"]["windows"] == 40 * (72 + 6) + 2 * 4  # the history, a minute each, two batches
    assert {c["case"] for c in doc["cases"] if "case" in c} == {"ours", "baseline", "limit"}
