"""The hub's /metrics by Prometheus's conventions (issue 17): promtool finds nothing to lint with
every series present; fleet latency is a histogram of the telemetry windows' sketches labelled by
model, version and rollout cohort; counters for inferences, errors, fallbacks and installs; the
series of a bundle no device runs are dropped at the next scrape."""

from __future__ import annotations

import math
import shutil
import subprocess

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from hub.server import Hub
from hub.transport import MemoryPublisher
from protocol.sketch import HISTOGRAM_BOUNDS_S

from .conftest import TOKEN
from .helpers import report, status, telemetry
from .test_api import push

POLICY = {"cohorts": ["1", "100%"], "soak_s": 3600, "on_breach": "pause"}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, keyed by (name, sorted labels)."""
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


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus's histogram_quantile over cumulative (le, count) pairs: linear in the bucket."""
    total = buckets[-1][1]
    rank = q * total
    lower, below = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return lower
            return lower + (le - lower) * (rank - below) / (count - below)
        lower, below = le, count
    raise AssertionError("unreachable")


def latency_buckets(text: str, **labels: str) -> list[tuple[float, float]]:
    found = []
    for (name, lbls), v in samples(text).items():
        d = dict(lbls)
        if name == "edgefleet_fleet_latency_seconds_bucket" and all(d.get(k) == x for k, x in labels.items()):
            found.append((float(d["le"]), v))
    return sorted(found)


@pytest.fixture
def canary(client: TestClient, memhub: tuple[Hub, MemoryPublisher], bundle_dir) -> dict:
    """Two devices on digits 1.0.0; digits 2.0.0 rolled out in cohorts of 1 then everyone, the
    canary installed and serving it, the rollout soaking (still active)."""
    hub, _ = memhub
    old = push(client, bundle_dir(version="1.0.0"))
    new = push(client, bundle_dir(version="2.0.0", created=2))
    act = (old["digest"], old["name"], old["version"])
    hub.ingest.handle([(f"ef/v1/dev/{d}/status", status(d, active=act)) for d in ("a", "b")])
    r = client.post("/api/v1/rollouts", json={"bundle": new["digest"], "target": {"all": True}, "policy": POLICY})
    assert r.status_code == 201, r.text
    (pick,) = [d["device_id"] for d in r.json()["devices"] if d["cohort"] == 0]
    other = "b" if pick == "a" else "a"
    hub.ingest.handle([(f"ef/v1/dev/{pick}/report", report(pick, 1, 1, bundle=new["digest"]))])
    hub.ingest.handle(
        [(f"ef/v1/dev/{pick}/status", status(pick, active=(new["digest"], new["name"], new["version"]), ts=1001))]
    )
    return {"old": old, "new": new, "canary": pick, "other": other, "rollout": r.json()["id"]}


def test_hub_metrics_pass_promtool_with_every_series_present(client, memhub, canary):
    hub, _ = memhub
    hub.ingest.handle(
        [
            (f"ef/v1/dev/{canary['canary']}/telemetry", telemetry(canary["canary"], 1, canary["new"]["digest"])),
            (
                f"ef/v1/dev/{canary['other']}/telemetry",
                telemetry(canary["other"], 1, canary["old"]["digest"], errors=1, cloud=2),
            ),
            ("ef/v1/dev/a/telemetry", b"{not json"),
        ]
    )
    text = client.get("/metrics").text
    for name in (
        "edgefleet_fleet_latency_seconds_bucket",
        "edgefleet_fleet_inferences_total",
        "edgefleet_fleet_errors_total",
        "edgefleet_fleet_fallbacks_total",
        "edgefleet_fleet_installs_total",
        "edgefleet_hub_rollout_info",
        "edgefleet_hub_rollouts",
        "edgefleet_hub_devices",
    ):
        assert f"\n{name}{{" in text, f"{name} missing from /metrics"
    res = promtool_lint(text)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip() == "" and res.stderr.strip() == ""


def test_the_old_quantile_gauge_fails_promtool_so_the_lint_can_fail():
    text = (
        "# HELP edgefleet_fleet_latency_seconds Latency\n# TYPE edgefleet_fleet_latency_seconds gauge\n"
        'edgefleet_fleet_latency_seconds{bundle="abc",quantile="0.95"} 0.01\n'
    )
    res = promtool_lint(text)
    assert res.returncode == 3 and 'non-summary metrics should not have "quantile" label' in res.stdout + res.stderr


def test_window_latency_becomes_a_histogram_by_model_version_and_cohort(client, memhub, canary):
    hub, _ = memhub
    new, old = canary["new"], canary["old"]
    # the canary on 2.0.0 is slow (p95 ~ 50 ms), the other device on 1.0.0 fast (10 ms)
    slow = (0.010,) * 90 + (0.050,) * 10
    hub.ingest.handle(
        [
            (f"ef/v1/dev/{canary['canary']}/telemetry", telemetry(canary["canary"], 1, new["digest"], slow * 3)),
            (f"ef/v1/dev/{canary['other']}/telemetry", telemetry(canary["other"], 1, old["digest"], (0.01,) * 50)),
        ]
    )
    text = client.get("/metrics").text
    got = samples(text)
    canary_series = latency_buckets(text, model="digits", version="2.0.0", cohort="0")
    assert canary_series and canary_series[-1] == (math.inf, 300.0)
    assert [le for le, _ in canary_series[:-1]] == list(HISTOGRAM_BOUNDS_S)
    p95 = histogram_quantile(0.95, canary_series)
    assert 0.046 < p95 < 0.066  # 50 ms lies in the (46.3 ms, 65.5 ms] bucket
    p50 = histogram_quantile(0.5, canary_series)
    assert 0.008 < p50 < 0.0116
    # the device not yet in an open cohort runs the old model: cohort "none"
    old_series = latency_buckets(text, model="digits", version="1.0.0", cohort="none")
    assert old_series[-1][1] == 50.0 and histogram_quantile(0.95, old_series) < 0.0116
    key = (("cohort", "0"), ("model", "digits"), ("path", "cpu"), ("version", "2.0.0"))
    assert got[("edgefleet_fleet_inferences_total", key)] == 300.0
    assert got[("edgefleet_fleet_latency_seconds_sum", key[:2] + key[3:])] == pytest.approx(3 * (0.9 + 0.5))
    info = {dict(lbl)["rollout"]: dict(lbl) for (n, lbl), v in got.items() if n == "edgefleet_hub_rollout_info"}
    assert info[canary["rollout"]]["version"] == "2.0.0" and info[canary["rollout"]]["previous_version"] == "1.0.0"
    assert got[("edgefleet_hub_rollouts", (("phase", "running"),))] == 1.0


def test_a_replayed_window_is_counted_once(client, memhub, canary):
    hub, _ = memhub
    msg = telemetry(canary["other"], 7, canary["old"]["digest"], (0.01,) * 20)
    hub.ingest.handle([(f"ef/v1/dev/{canary['other']}/telemetry", msg)] * 3)
    got = samples(client.get("/metrics").text)
    key = (("cohort", "none"), ("model", "digits"), ("version", "1.0.0"))
    assert got[("edgefleet_fleet_latency_seconds_count", key)] == 20.0


def test_installs_are_counted_by_result_and_reason(client, memhub, canary):
    hub, _ = memhub
    other = canary["other"]
    hub.ingest.handle(
        [
            (f"ef/v1/dev/{other}/report", report(other, 5, 1, stage="download", status="progress")),
            (f"ef/v1/dev/{other}/report", report(other, 6, 1, stage="verify", status="failed", reason="bad_signature")),
        ]
    )
    got = samples(client.get("/metrics").text)
    installs = {
        dict(lbl)["result"] + "/" + dict(lbl)["reason"]: v
        for (n, lbl), v in got.items()
        if n == "edgefleet_fleet_installs_total"
    }
    assert installs == {"installed/ok": 1.0, "failed/bad_signature": 1.0}


def test_series_of_a_bundle_no_device_runs_are_dropped_at_the_next_scrape(client, memhub, canary):
    hub, _ = memhub
    old = canary["old"]
    other = canary["other"]
    hub.ingest.handle([(f"ef/v1/dev/{other}/telemetry", telemetry(other, 1, old["digest"]))])
    assert latency_buckets(client.get("/metrics").text, version="1.0.0")
    new = canary["new"]
    hub.ingest.handle(
        [(f"ef/v1/dev/{other}/status", status(other, active=(new["digest"], new["name"], new["version"]), ts=1002))]
    )
    text = client.get("/metrics").text
    assert not latency_buckets(text, version="1.0.0")
    assert 'model="digits",version="1.0.0"' not in text  # fleet series and devices_on_bundle alike
    assert latency_buckets(text, version="2.0.0") == []  # nobody has sent a 2.0.0 window yet


def test_a_window_of_a_bundle_the_registry_does_not_know_is_labelled_unknown(client, memhub):
    hub, _ = memhub
    stranger = "f" * 64
    dev = "kitchen-cam-7"
    hub.ingest.handle([(f"ef/v1/dev/{dev}/status", status(dev, active=(stranger, "made-up", "9")))])
    hub.ingest.handle([(f"ef/v1/dev/{dev}/telemetry", telemetry(dev, 1, stranger))])
    text = client.get("/metrics").text
    assert latency_buckets(text, model="unknown", version="unknown", cohort="none")
    assert "made-up" not in text and stranger[:12] not in text
    # no device names, tokens or secrets in any label
    assert dev not in text and TOKEN not in text and "test-" not in text


def test_a_batch_folded_per_key_equals_adding_its_windows_one_by_one():
    """Ingest feeds the fleet series once per (model, version, cohort) a batch (add_batch): the
    buckets, sum and counters are what adding each window gives."""
    from hub.metrics import FleetSeries
    from protocol.sketch import LatencySketch

    def sk(ms: float, n: int) -> LatencySketch:
        s = LatencySketch()
        s.add(ms / 1000, n)
        return s

    a, b = ("m", "1", "0"), ("m", "2", "none")
    windows = [
        (a, sk(3, 4), {"inferences": 4, "cpu": 4, "errors": 1}),
        (b, sk(40, 2), {"inferences": 2, "tpu": 2}),
        (a, sk(0.2, 7), {"inferences": 7, "cloud": 3, "cpu": 4}),
        (a, LatencySketch(), {"inferences": 0}),
    ]
    one, batch = FleetSeries(), FleetSeries()
    for key, sketch, counts in windows:
        one.add(key, sketch, counts)
    batch.add_batch(windows)

    def dump(fs: FleetSeries) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in fs.collect() for s in f.samples}

    assert dump(batch) == dump(one)
    assert len(dump(one)) > 10
