"""A real Prometheus (the Debian package) scrapes a real hub, agent and cloud on loopback
(issue 17): every target is up, our alert rules load and evaluate, every dashboard query parses,
and Prometheus's HTTP API answers an inference counter and a latency quantile that agree with
the requests this test made."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from demo.client import png_bytes, post_image
from demo.launcher import Fleet, free_port, tail, wait_port
from protocol.sketch import HISTOGRAM_BOUNDS_S

from ..agent.bundles import MNV1, coral_bundle
from ..cloud.conftest import drop, make_archive, tiny_model
from ..conftest import serving_process
from .test_monitoring import DASHBOARDS, PROM, panels

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def wait_for(what: str, check: Callable[[], Any], timeout: float = 120, logs: Callable[[], str] = str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})\n{logs()}")


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, **params: str) -> dict[str, Any]:
        q = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{q}", timeout=30) as r:
            doc = json.loads(r.read())
        assert doc["status"] == "success", doc
        return doc["data"]  # type: ignore[no-any-return]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.get("/api/v1/query", query=expr)["result"]  # type: ignore[no-any-return]

    def scalar(self, expr: str) -> float | None:
        res = self.query(expr)
        return float(res[0]["value"][1]) if res else None


@pytest.fixture
def prometheus_exe() -> str:
    exe = shutil.which("prometheus")
    if exe is None:
        pytest.skip("prometheus not installed (apt-get install prometheus; scripts/test-deps.sh)")
    return exe


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(tmp_path / "fleet")
    try:
        f.start_broker()
        f.init_keys()
        f.start_hub()
        yield f
    finally:
        f.stop_all()


@pytest.fixture
def cloud(tmp_path: Path, trust: Any) -> Iterator[str]:
    bundles = tmp_path / "cloud-bundles"
    bundles.mkdir()
    (tmp_path / "root.json").write_bytes(trust.root_bytes)
    drop(bundles, make_archive(trust.targets_key, "tiny", "1", tiny_model().onnx))
    port = free_port()
    argv = [sys.executable, "-m", "cloud", "serve", "--bundles", str(bundles), "--root", str(tmp_path / "root.json")]
    with serving_process([*argv, "--port", str(port)], port, tmp_path / "cloud.log") as url:
        yield url


def start_prometheus(exe: str, tmp: Path, targets: dict[str, str]) -> tuple[subprocess.Popen[bytes], str, Path]:
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(p) for p in sorted((PROM / "rules").glob("*.yml"))],
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [t]}]} for job, t in targets.items()],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = tmp / "prometheus.log"
    argv = [
        exe,
        f"--config.file={tmp / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=tmp)
    wait_port(port, 60, proc, "prometheus")
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:  # it listens before its storage is open, answering 503 until then
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=5) as r:
                return r.status == 200
        except urllib.error.HTTPError as exc:
            exc.close()
            return False
        except OSError:
            return False

    wait_for("prometheus ready", ready, 60, lambda: tail(log, 30))
    return proc, url, log


def predict(port: int, n: int) -> list[float]:
    """``n`` answers from the agent's local API; their latency in seconds as the agent says."""
    out = []
    for i in range(n):
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/predict",
            data=np.full((1, 128, 128, 3), i * 10 % 256, np.uint8).tobytes(),
            headers={
                "Content-Type": "application/octet-stream",
                "X-Tensor-Shape": "1,128,128,3",
                "X-Tensor-Dtype": "uint8",
            },
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            answer = json.loads(r.read())
        assert answer["served_by"] == "cpu", answer
        out.append(answer["latency_ms"] / 1000)
    return out


def bucket_of(seconds: float) -> int:
    return sum(1 for b in HISTOGRAM_BOUNDS_S if b < seconds)


def test_prometheus_scrapes_hub_agent_and_cloud_and_answers_counters_and_quantiles(
    tmp_path: Path, fleet: Fleet, cloud: str, coral_models: Path, prometheus_exe: str
):
    pushed = fleet.push(coral_bundle(tmp_path / "mnv1", coral_models, MNV1, name="mnv1", version="1"))
    fleet.start_agent("prom-dev", telemetry_interval=1.0, extra="http_metrics = true\n")
    agent_port = fleet.agent_port("prom-dev")

    def logs() -> str:
        return "\n".join(f"--- {p.name}\n{tail(p.log, 15)}" for p in fleet.procs)

    def device() -> dict[str, Any]:
        items = fleet.api("GET", "/api/v1/devices?limit=10")["items"]
        return next((d for d in items if d["device_id"] == "prom-dev"), {})

    wait_for("the agent online", lambda: device().get("online"), logs=logs)
    rollout = fleet.api("POST", "/api/v1/rollouts", {"bundle": pushed["digest"], "target": {"all": True}})
    wait_for(
        "the agent serving mnv1",
        lambda: (device().get("active_bundle") or {}).get("digest") == pushed["digest"],
        logs=logs,
    )
    # once it completes no active rollout owns the device: its windows are cohort "none" (while it
    # ran, the device's empty windows were counted under cohort "0")
    wait_for(
        "the rollout completed",
        lambda: fleet.api("GET", f"/api/v1/rollouts/{rollout['id']}")["phase"] == "completed",
        logs=logs,
    )

    hub_target = fleet.hub_url.removeprefix("http://")
    cloud_target = cloud.removeprefix("http://")
    proc, url, log = start_prometheus(
        prometheus_exe,
        tmp_path,
        {"edgefleet-hub": hub_target, "edgefleet-agent": f"127.0.0.1:{agent_port}", "edgefleet-cloud": cloud_target},
    )
    prom = Prometheus(url)

    def prom_logs() -> str:
        return tail(log, 30) + "\n" + logs()

    try:
        wait_for(
            "every target up",
            lambda: (
                {r["metric"]["job"]: r["value"][1] for r in prom.query("up")}
                == {"edgefleet-hub": "1", "edgefleet-agent": "1", "edgefleet-cloud": "1"}
            ),
            logs=prom_logs,
        )

        # two batches: the second lands after Prometheus has seen the first, so rate() sees it
        first = predict(agent_port, 6)
        fleet_total = "sum(edgefleet_fleet_inferences_total)"
        wait_for("the hub's counter at 6", lambda: prom.scalar(fleet_total) == 6.0, logs=prom_logs)
        second = predict(agent_port, 24)
        latencies = sorted(first + second)
        wait_for("the hub's counter at 30", lambda: prom.scalar(fleet_total) == 30.0, logs=prom_logs)

        # the same requests, counted by the agent itself (scraped on its own schedule) and by the
        # hub from telemetry
        agent_total = 'sum(edgefleet_agent_inferences_total{model="mnv1", version="1", path="cpu"})'
        wait_for("the agent's counter at 30", lambda: prom.scalar(agent_total) == 30.0, logs=prom_logs)
        by_labels = prom.query("sum by (model, version, cohort, path) (edgefleet_fleet_inferences_total) > 0")
        assert [(r["metric"], r["value"][1]) for r in by_labels] == [
            ({"model": "mnv1", "version": "1", "cohort": "none", "path": "cpu"}, "30")
        ]
        assert prom.scalar("sum(edgefleet_fleet_errors_total)") == 0.0
        assert prom.scalar("sum(edgefleet_fleet_latency_seconds_count)") == 30.0

        # the fleet's p95: over everything, and over the last minutes (rate), both agree with
        # what the agent answered within the histogram's resolution (half-octave buckets)
        true_p95 = latencies[math.ceil(0.95 * len(latencies)) - 1]
        since_start = prom.scalar("histogram_quantile(0.95, sum by (le) (edgefleet_fleet_latency_seconds_bucket))")
        assert since_start is not None and abs(bucket_of(since_start) - bucket_of(true_p95)) <= 1, (
            since_start,
            true_p95,
        )
        recent = prom.query(
            "histogram_quantile(0.95, sum by (le, model, version) (rate(edgefleet_fleet_latency_seconds_bucket[5m])))"
        )
        assert len(recent) == 1 and recent[0]["metric"] == {"model": "mnv1", "version": "1"}
        p95_recent = float(recent[0]["value"][1])
        assert math.isfinite(p95_recent) and abs(bucket_of(p95_recent) - bucket_of(true_p95)) <= 1
        agent_p95 = prom.scalar(
            'histogram_quantile(0.95, sum by (le) (edgefleet_agent_latency_seconds_bucket{path="cpu"}))'
        )
        assert agent_p95 is not None and abs(bucket_of(agent_p95) - bucket_of(true_p95)) <= 1

        # the cloud: four predictions, counted
        px = (np.arange(64).reshape(8, 8) * 4).astype(np.uint8)
        for _ in range(4):
            assert "predictions" in post_image(f"{cloud}/predict", png_bytes(px))
        wait_for(
            "the cloud's counter at 4",
            lambda: prom.scalar('sum(edgefleet_cloud_predictions_total{model="tiny"})') == 4.0,
            logs=prom_logs,
        )

        # our alert rules load into a real Prometheus and evaluate without error
        def rules_health() -> dict[str, str]:
            groups = prom.get("/api/v1/rules")["groups"]
            return {r["name"]: r["health"] for g in groups for r in g["rules"]}

        health = wait_for("every rule evaluated", lambda: (h := rules_health()) and "unknown" not in h.values() and h)
        assert set(health.values()) == {"ok"}, health
        assert "EdgefleetLatencyRegression" in health

        # every dashboard query parses and evaluates here (Grafana's variables filled in)
        for path in DASHBOARDS:
            board = json.loads(path.read_text())
            for p in panels(board):
                for t in p.get("targets", []):
                    expr = t["expr"].replace("$__rate_interval", "1m").replace("$__range", "1h")
                    prom.query(expr.replace("$model", ".*"))  # asserts status success
        models = prom.get("/api/v1/label/model/values", **{"match[]": "edgefleet_fleet_devices_on_bundle"})
        assert models == ["mnv1"]
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
