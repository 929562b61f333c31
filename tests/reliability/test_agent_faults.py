"""Agent-side checks: serving never fails across model switches, and the checklist items whose
proofs live beside the agent's code (tests/agent) are listed in scripts/reliability_report.py."""

from __future__ import annotations

from pathlib import Path

from ..agent.test_serve import switch_under_load


def test_zero_failed_requests_during_100_model_switches_under_load(coral_models: Path, figure):
    answered, failures = switch_under_load(coral_models, switches=100)
    figure(
        "switch",
        "100 model switches while 4 clients send tensors and JPEGs to the local API",
        "failed requests",
        f"{len(failures)} of {answered}",
        "0",
        not failures,
    )
    assert not failures and answered >= 300
