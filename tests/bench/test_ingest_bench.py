"""``python -m bench ingest`` end to end on a small load: every round stores and acks every
message, the report holds each round's limit and ours beside the baseline, and the medians it
prints are the rounds' (a bench that lost messages would exit 1)."""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RESULT = Path(__file__).resolve().parents[2] / "bench" / "results" / "ingest.json"


@pytest.mark.skipif(shutil.which("mosquitto") is None, reason="mosquitto is not installed")
def test_two_rounds_store_every_message_and_report_their_medians():
    out = subprocess.run(
        [sys.executable, "-m", "bench", "ingest", "--quick", "--rounds", "2", "--devices", "20"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    doc = json.loads(RESULT.read_text())
    cases = doc["cases"]
    assert [c["case"] for c in cases] == [
        "raw subscriber (limit)",
        "raw subscriber (limit)",
        "hub, batched commits (ours)",
        "hub, batched commits (ours)",
        "hub, commit per message (baseline)",
    ]
    for c in cases:
        assert c["lost"] == 0 and c["messages"] == 2000
    for c in cases[2:]:
        assert c["stored"] == 2000 and c["acked"] == 2000 and c["queue_dropped"] == 0
    assert doc["limit"] == statistics.median(c["msgs_per_s"] for c in cases[:2])
    assert doc["ours"] == statistics.median(c["msgs_per_s"] for c in cases[2:4])
    assert doc["baseline"] == cases[4]["msgs_per_s"]
    assert len(doc["params"]["ours_over_limit_per_round"]) == 2
    assert "per round:" in out.stdout
