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


def _ingest(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``python -m bench ingest ARGS``, which must exit 0 (a run that loses messages exits 1)."""
    out = subprocess.run(
        [sys.executable, "-m", "bench", "ingest", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return out


@pytest.mark.skipif(shutil.which("mosquitto") is None, reason="mosquitto is not installed")
def test_two_rounds_store_every_message_and_report_their_medians():
    out = _ingest("--quick", "--rounds", "2", "--devices", "20")
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


@pytest.mark.skipif(shutil.which("mosquitto") is None, reason="mosquitto is not installed")
def test_install_reports_are_stored_and_acked_like_windows_and_written_apart() -> None:
    """``--kind report``: a fleet's install reports (progress, then the steps after the download
    back to back) through the same hub path, every one stored as a report row and acked; the
    result goes to its own file, not over the telemetry figures."""
    before = RESULT.read_bytes() if RESULT.exists() else None
    _ingest("--quick", "--rounds", "1", "--devices", "20", "--kind", "report")
    doc = json.loads((RESULT.parent / "ingest_report.json").read_text())
    assert doc["params"]["kind"] == "report"
    for c in doc["cases"][1:]:
        assert c["stored"] == 2000 and c["acked"] == 2000 and c["lost"] == 0, c
    assert (RESULT.read_bytes() if RESULT.exists() else None) == before


@pytest.mark.skipif(shutil.which("mosquitto") is None, reason="mosquitto is not installed")
def test_a_busy_thread_in_the_hubs_process_is_measured_at_the_hubs_switch_interval_and_at_cpythons() -> None:
    """``--busy``: ours and the baseline both run beside a thread that never pauses, ours at the
    hub's switch interval and the baseline at CPython's 5 ms; the limit is the idle raw
    subscriber; nothing is lost either way, and the result goes to its own file."""
    from hub.server import SWITCH_INTERVAL_S

    before = RESULT.read_bytes() if RESULT.exists() else None
    out = _ingest("--quick", "--rounds", "1", "--devices", "20", "--busy", timeout=900)
    doc = json.loads((RESULT.parent / "ingest_busy.json").read_text())
    limit, ours, base = doc["cases"]
    assert limit["case"] == "raw subscriber (limit)" and "busy" not in limit
    assert ours["case"] == "hub, batched commits, a busy thread (ours)"
    assert ours["switch_interval_s"] == pytest.approx(SWITCH_INTERVAL_S)
    assert base["switch_interval_s"] == pytest.approx(0.005) and "baseline" in base["case"]
    for c in (ours, base):
        assert c["stored"] == 2000 and c["acked"] == 2000 and c["lost"] == 0, c
        assert c["busy_loops"] > 0, c  # the busy thread did run beside the hub
    assert doc["params"]["switch_interval_s"] == {"ours": ours["switch_interval_s"], "baseline": 0.005}
    assert "ours/baseline" in out.stdout
    assert (RESULT.read_bytes() if RESULT.exists() else None) == before


def test_a_fleets_install_reports_follow_an_installs_order_and_parse_as_reports() -> None:
    from bench.ingest import _report_payloads
    from protocol.messages import parse_report

    msgs = _report_payloads(3, 17)
    assert len(msgs) == 51
    first = [parse_report(p) for t, p in msgs if t == "ef/v1/dev/bench-0001/report"]
    assert [r.seq for r in first] == list(range(1, 18))
    assert [r.stage for r in first[9:16]] == ["download", "download", "verify", "stage", "selftest", "switch", "commit"]
    assert first[10].status == "ok" and first[9].progress == 0.9
    assert first[16].desired_seq == 2 and first[15].desired_seq == 1
