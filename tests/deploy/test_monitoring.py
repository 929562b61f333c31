"""deploy/prometheus and deploy/grafana (issue 17): promtool accepts the config and the rules and
the rules pass their unit tests; the dashboards are well-formed provisioned Grafana JSON whose
every query (and every alert rule) names only metrics the hub, an agent and the cloud export,
read from their real /metrics; both are wired into docker-compose.yml."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient

from agent.metrics import AgentMetrics
from hub import keys as hub_keys
from hub.server import build
from hub.transport import MemoryPublisher

from ..cloud.conftest import Setup as CloudSetup, client_for, drop, make_archive, tiny_model
from ..hub.conftest import hub_config
from ..hub.helpers import status, telemetry
from .test_compose import compose, run_config

REPO = Path(__file__).resolve().parents[2]
PROM = REPO / "deploy" / "prometheus"
GRAFANA = REPO / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
DATASOURCE_UID = "edgefleet-prometheus"
PANEL_TYPES = {"timeseries", "stat", "table", "row"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.skip("promtool not installed (apt-get install prometheus; scripts/test-deps.sh)")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120, cwd=REPO)


def test_prometheus_config_and_its_rule_files_pass_promtool():
    res = promtool("check", "config", str(PROM / "prometheus.yml"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS: 1 rule files found" in res.stdout
    res = promtool("check", "rules", *map(str, sorted((PROM / "rules").glob("*.yml"))))
    assert res.returncode == 0, res.stdout + res.stderr


def test_the_alert_rules_pass_their_unit_tests():
    tests = sorted((PROM / "tests").glob("*.yml"))
    assert tests
    res = promtool("test", "rules", *map(str, tests))
    assert res.returncode == 0, res.stdout + res.stderr


def test_the_issue_asks_for_these_alerts():
    doc = yaml.safe_load((PROM / "rules" / "edgefleet.yml").read_text())
    names = {r["alert"] for g in doc["groups"] for r in g["rules"]}
    for alert in (
        "EdgefleetDeviceOffline",
        "EdgefleetDrift",
        "EdgefleetLatencyRegression",
        "EdgefleetRolloutPaused",
        "EdgefleetRolloutGateBreached",
        "EdgefleetCloudSaturated",
    ):
        assert alert in names
    tested = (PROM / "tests" / "edgefleet_test.yml").read_text()
    for alert in names:
        assert f"alertname: {alert}" in tested, f"{alert} has no promtool unit test"


# ---- what the services really export -------------------------------------------------------


def exported_names(text: str) -> set[str]:
    """Every series name an exposition can carry, from its # TYPE lines (present even before a
    labelled metric has its first sample)."""
    names: set[str] = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
        if kind == "histogram":  # no series carries the bare name
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        elif kind == "summary":
            names |= {name, f"{name}_sum", f"{name}_count"}
        else:
            names.add(name)
    return names


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, trust: Any) -> set[str]:
    tmp = tmp_path_factory.mktemp("exported")
    hub_keys.init(tmp / "keys")
    hub = build(hub_config(tmp, tmp / "keys"), publisher=MemoryPublisher(), with_broker=False)
    try:
        hub.ingest.handle([("ef/v1/dev/d/status", status("d")), ("ef/v1/dev/d/telemetry", telemetry("d", 1))])
        with TestClient(hub.app) as c:
            hub_text = c.get("/metrics").text
    finally:
        hub.fleet.engine.dispose()
    agent = AgentMetrics()
    agent.set_active(("digits", "1"))
    agent.observe(("digits", "1"), "cpu", 0.01, True)
    agent_text = agent.render().decode()
    (tmp / "bundles").mkdir()
    (tmp / "root.json").write_bytes(trust.root_bytes)
    setup = CloudSetup(tmp / "bundles", tmp / "root.json")
    drop(setup.bundles, make_archive(trust.targets_key, "tiny", "1", tiny_model().onnx))
    with client_for(setup, trust) as c:
        assert c.post("/v1/models/tiny/predict", json={"inputs": np.zeros((1, 8, 8, 1)).tolist()}).status_code == 200
        cloud_text = c.get("/metrics").text
    names = exported_names(hub_text) | exported_names(agent_text) | exported_names(cloud_text)
    assert {"edgefleet_fleet_latency_seconds_bucket", "edgefleet_agent_inferences_total"} <= names
    assert "edgefleet_cloud_predictions_total" in names
    return names | {"up"}  # Prometheus's own, per target


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: ours by prefix, and any identifier that
    opens a selector ``{`` or a range ``[`` (label names inside braces are followed by ``=``)."""
    found = set(re.findall(r"\b(edgefleet_[a-z0-9_]+)", expr))
    found |= {m for m in re.findall(r"\b([a-zA-Z_][a-zA-Z0-9_]*)\s*[\{\[]", expr) if not m.startswith("__")}
    return found


def test_metric_names_are_found_in_selectors_and_bare():
    expr = 'sum by (le) (rate(foo_bucket{a="b"}[5m])) / edgefleet_x_total * up{job="j"}'
    assert metric_names(expr) == {"foo_bucket", "edgefleet_x_total", "up"}


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in board["panels"]:
        yield p
        yield from p.get("panels", [])


def dashboard_queries() -> Iterator[tuple[str, str]]:
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for p in panels(board):
            for t in p.get("targets", []):
                yield f"{path.name}: {p['title']}", t["expr"]
        for v in board["templating"]["list"]:
            yield f"{path.name}: variable {v['name']}", v["query"]["query"]


def rule_queries() -> Iterator[tuple[str, str]]:
    for path in sorted((PROM / "rules").glob("*.yml")):
        for g in yaml.safe_load(path.read_text())["groups"]:
            for r in g["rules"]:
                yield f"{path.name}: {r.get('alert') or r.get('record')}", r["expr"]


def test_every_dashboard_query_and_alert_rule_names_only_metrics_the_services_export(exported: set[str]):
    checked = 0
    for where, expr in [*dashboard_queries(), *rule_queries()]:
        names = metric_names(expr.replace("label_values(", "label_values_("))
        names |= set(re.findall(r"label_values\((\w+)", expr))
        names.discard("label_values_")
        missing = names - exported
        assert not missing, f"{where}: {sorted(missing)} not exported by the hub, the agent or the cloud"
        checked += 1
    assert checked > 40


def test_a_query_naming_a_metric_nobody_exports_is_caught(exported: set[str]):
    assert metric_names("rate(edgefleet_fleet_latency_seconds[5m])") - exported == {"edgefleet_fleet_latency_seconds"}


# ---- the dashboards are provisioned Grafana JSON -------------------------------------------


def test_there_are_fleet_rollout_and_cloud_dashboards():
    assert [p.name for p in DASHBOARDS] == ["cloud.json", "fleet.json", "rollout.json"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_each_dashboard_is_well_formed_grafana_json(path: Path):
    board = json.loads(path.read_text())
    assert board["uid"].startswith("edgefleet-") and len(board["uid"]) <= 40 and board["title"]
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    assert "id" not in board or board["id"] is None  # provisioned: Grafana assigns ids
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for p in panels(board):
        assert p["type"] in PANEL_TYPES, p["type"]
        g = p["gridPos"]
        assert all(isinstance(g[k], int) and g[k] >= 0 for k in "xywh") and g["w"] >= 1 and g["x"] + g["w"] <= 24
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": DATASOURCE_UID}, p["title"]
        assert p["targets"], f"{p['title']} has no query"
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs))
        for t in p["targets"]:
            assert t["expr"].strip() and t["datasource"]["uid"] == DATASOURCE_UID
    for v in board["templating"]["list"]:
        assert v["datasource"]["uid"] == DATASOURCE_UID and v["query"]["query"].startswith("label_values(")


def test_dashboard_uids_are_unique():
    uids = [json.loads(p.read_text())["uid"] for p in DASHBOARDS]
    assert len(uids) == len(set(uids))


def test_the_provisioning_files_parse_and_name_the_datasource_and_the_dashboards():
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert ds["apiVersion"] == 1
    (source,) = ds["datasources"]
    assert source["uid"] == DATASOURCE_UID and source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    prov = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "edgefleet.yml").read_text())
    (provider,) = prov["providers"]
    assert provider["type"] == "file" and prov["apiVersion"] == 1
    grafana = compose()["services"]["grafana"]
    mounts = {spec.split(":")[1]: spec.split(":")[0] for spec in grafana["volumes"]}
    assert mounts[provider["options"]["path"]] == "./deploy/grafana/dashboards"
    assert mounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"


# ---- docker-compose ------------------------------------------------------------------------


def test_compose_runs_prometheus_on_this_config_scraping_the_services_ports():
    services = compose()["services"]
    prom = services["prometheus"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in prom["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    targets = {j["job_name"]: t for j in config["scrape_configs"] for sc in j["static_configs"] for t in sc["targets"]}
    assert targets == {"edgefleet-hub": "hub:8000", "edgefleet-cloud": "cloud:8100", "edgefleet-agent": "agent:8500"}
    for job, target in targets.items():
        name, port = target.split(":")
        assert any(str(p).endswith(f":{port}") for p in services[name]["ports"]), (job, services[name]["ports"])
    agent_toml = (REPO / "deploy" / "agent" / "agent.compose.toml").read_text()
    assert re.search(r"^http_metrics = true\b", agent_toml, re.M)  # else the agent target is a 404


def test_compose_refuses_to_start_grafana_without_an_admin_password():
    ok = run_config({"EDGEFLEET_HUB_TOKEN": "t0ken", "EDGEFLEET_CLOUD_API_KEYS": "app:s3cret"})
    assert ok.returncode == 0, ok.stderr
    assert "prometheus:" in ok.stdout and "grafana:" in ok.stdout
    res = run_config(
        {"EDGEFLEET_HUB_TOKEN": "t0ken", "EDGEFLEET_CLOUD_API_KEYS": "app:s3cret", "GRAFANA_ADMIN_PASSWORD": ""}
    )
    assert res.returncode != 0 and "GRAFANA_ADMIN_PASSWORD" in res.stderr
