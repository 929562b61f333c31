"""The cloud's /metrics by Prometheus's conventions (issue 17): promtool finds nothing to lint
with predictions, errors, queues and key slots present; saturation is readable as queue depth
over queue capacity per model."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import Setup, Tiny, client_for, drop, make_archive


def promtool_lint(text: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.skip("promtool not installed (apt-get install prometheus; scripts/test-deps.sh)")
    return subprocess.run([exe, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)


def test_cloud_metrics_pass_promtool_and_count_what_was_served(setup: Setup, trust: Any, tiny: Tiny) -> None:
    drop(setup.bundles, make_archive(trust.targets_key, "tiny", "1", tiny.onnx))
    with client_for(setup, trust, api_keys=["app:" + "a" * 20], max_queue=64) as client:
        x = {"inputs": np.zeros((1, 8, 8, 1)).tolist()}
        for _ in range(5):
            r = client.post("/v1/models/tiny/predict", json=x, headers={"x-api-key": "a" * 20})
            assert r.status_code == 200, r.text
        assert client.post("/v1/models/nope/predict", json=x, headers={"x-api-key": "a" * 20}).status_code == 404
        text = client.get("/metrics").text
    got = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    tiny1 = (("model", "tiny"), ("version", "1"))
    assert got[("edgefleet_cloud_predictions_total", tiny1)] == 5.0
    assert got[("edgefleet_cloud_queue_capacity", tiny1)] == 64.0
    assert got[("edgefleet_cloud_queue_depth", tiny1)] == 0.0
    assert got[("edgefleet_cloud_errors_total", (("code", "not_found"),))] == 1.0
    res = promtool_lint(text)
    assert res.returncode == 0 and not (res.stdout + res.stderr).strip(), res.stdout + res.stderr
