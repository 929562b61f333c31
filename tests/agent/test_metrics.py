"""The agent's opt-in /metrics (issue 17): off by default (404), on with ``http_metrics = true``;
what the serving path answered, counted request by request, in the text format promtool accepts;
series of bundles before the previous one dropped; installs counted by result and reason."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.config import from_dict
from agent.errors import ConfigError
from agent.localapi import make_server
from agent.metrics import AgentMetrics
from agent.runtime import LiteRTBackend, Model
from agent.serve import Serving
from agent.telemetry import Recorder
from protocol.messages import BundleInfo
from protocol.sketch import HISTOGRAM_BOUNDS_S

from .bundles import MNV1

PRE = {"kind": "image", "height": 128, "width": 128, "channels": 3, "scale": 1 / 128, "offset": -1.0}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def promtool_lint(text: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.skip("promtool not installed (apt-get install prometheus; scripts/test-deps.sh)")
    return subprocess.run([exe, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)


def serve(coral_models: Path, metrics: AgentMetrics | None) -> Iterator[tuple[int, Serving]]:
    model = Model(LiteRTBackend(coral_models / MNV1), BundleInfo("a" * 64, "mnv1", "1"), PRE)
    serving = Serving(Recorder(metrics), None, None, lambda d, w: None)
    serving.swap(model)
    srv = make_server("127.0.0.1", 0, serving, lambda: {"device": "t"}, metrics)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield int(srv.server_address[1]), serving
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def with_metrics(coral_models: Path) -> Iterator[tuple[int, Serving]]:
    yield from serve(coral_models, AgentMetrics())


@pytest.fixture
def without_metrics(coral_models: Path) -> Iterator[tuple[int, Serving]]:
    yield from serve(coral_models, None)


def predict(port: int) -> None:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/predict",
        data=np.zeros((1, 128, 128, 3), np.uint8).tobytes(),
        headers={
            "Content-Type": "application/octet-stream",
            "X-Tensor-Shape": "1,128,128,3",
            "X-Tensor-Dtype": "uint8",
        },
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 200


def scrape(port: int) -> tuple[str, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        return r.headers["Content-Type"], r.read().decode()


def test_metrics_are_off_by_default_and_the_route_is_404(without_metrics):
    port, _ = without_metrics
    with pytest.raises(urllib.error.HTTPError) as e:
        scrape(port)
    e.value.close()
    assert e.value.code == 404


def test_answered_requests_are_counted_and_promtool_finds_nothing_to_lint(with_metrics):
    port, serving = with_metrics
    for _ in range(7):
        predict(port)
    serving.recorder.record("cpu", 0.0, False)  # what the serving path records when invoke fails
    lbl = (("model", "mnv1"), ("path", "cpu"), ("version", "1"))
    # a request is recorded just after its answer is written (serve.py's after()), so the scrape
    # that follows the last answer can come first: read again until the seventh is in
    deadline = time.monotonic() + 30
    while True:
        ctype, text = scrape(port)
        got = samples(text)
        if got.get(("edgefleet_agent_inferences_total", lbl)) == 7.0 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert ctype.startswith("text/plain; version=0.0.4")
    assert got[("edgefleet_agent_inferences_total", lbl)] == 7.0
    assert got[("edgefleet_agent_errors_total", lbl)] == 1.0
    assert got[("edgefleet_agent_latency_seconds_count", lbl)] == 7.0
    assert got[("edgefleet_agent_fallbacks_total", (("model", "mnv1"), ("version", "1")))] == 0.0
    bounds = sorted(float(dict(k)["le"]) for n, k in got if n == "edgefleet_agent_latency_seconds_bucket")
    assert bounds == [*HISTOGRAM_BOUNDS_S, float("inf")]
    assert 0 < got[("edgefleet_agent_latency_seconds_sum", lbl)] < 7 * 5.0
    res = promtool_lint(text)
    assert res.returncode == 0 and not (res.stdout + res.stderr).strip(), res.stdout + res.stderr


def test_the_metrics_route_keeps_the_connection_open_and_takes_only_get(with_metrics):
    port, _ = with_metrics
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\nPOST /metrics HTTP/1.1\r\nHost: a\r\n\r\n")
        data = b""
        while data.count(b"HTTP/1.1 ") < 2 or not data.rstrip().endswith(b"}"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 OK") and b"HTTP/1.1 405 Method Not Allowed" in data
    assert b"Allow: GET" in data


def test_only_the_active_bundle_and_the_one_before_keep_series():
    m = AgentMetrics()
    for v in ("1", "2", "3"):
        m.set_active(("mnv1", v))
        m.observe(("mnv1", v), "tpu", 0.002, True)
    text = m.render().decode()
    assert 'version="1"' not in text and 'version="2"' in text and 'version="3"' in text


def test_installs_are_counted_by_result_and_reason_and_progress_is_not():
    m = AgentMetrics()
    m.install("download", "progress", "ok")
    m.install("commit", "ok", "ok")
    m.install("verify", "failed", "bad_signature")
    m.install("rollback", "ok", "selftest_failed")
    got = samples(m.render().decode())
    installs = {
        (dict(k)["result"], dict(k)["reason"]): v for (n, k), v in got.items() if n == "edgefleet_agent_installs_total"
    }
    assert installs == {("installed", "ok"): 1, ("failed", "bad_signature"): 1, ("rolled_back", "selftest_failed"): 1}
    res = promtool_lint(m.render().decode())
    assert res.returncode == 0, res.stdout + res.stderr


def test_http_metrics_is_off_unless_set_and_must_be_a_bool(tmp_path: Path):
    root = tmp_path / "root.json"
    root.write_text("{}")
    base = {"device_id": "d1", "broker": "mqtt://127.0.0.1:1883", "state_dir": str(tmp_path), "root": str(root)}
    assert from_dict(base).http_metrics is False
    assert from_dict({**base, "http_metrics": True}).http_metrics is True
    with pytest.raises(ConfigError, match=r"http_metrics: expected bool, got 'yes'"):
        from_dict({**base, "http_metrics": "yes"})
