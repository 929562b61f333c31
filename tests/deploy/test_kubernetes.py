"""deploy/kubernetes/: hub replicas, PostgreSQL and a 3-node EMQX cluster parse, agree with each
other (selectors, ports, names, Secrets) and with the real hub (its CLI, its environment
variables, its shared group), and hold no secret in plain text."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from hub.__main__ import parser
from hub.config import DEFAULTS, ENV_PREFIX, SECRETS, check_shared_group
from hub.credentials import DEVICE_READ, DEVICE_WRITE, max_queued_messages

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "kubernetes"
HUB_ENV = {ENV_PREFIX + k.upper() for k in DEFAULTS} | {ENV_PREFIX + k.upper() + "_FILE" for k in SECRETS}
PLACEHOLDER = re.compile(r"<[^<>]+>")
SECRET_ENV = {ENV_PREFIX + k.upper() for k in SECRETS} | {"EDGEFLEET_HUB_DB"}  # the DB URL holds a password


def manifests() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        out += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return out


def one(kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in manifests() if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def test_the_manifests_hold_hub_replicas_postgres_and_a_three_node_emqx_cluster() -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for d in manifests()}
    assert {
        ("Deployment", "edgefleet-hub"),
        ("Service", "edgefleet-hub"),
        ("StatefulSet", "edgefleet-postgres"),
        ("Service", "edgefleet-postgres"),
        ("StatefulSet", "edgefleet-emqx"),
        ("Service", "edgefleet-broker"),
        ("ConfigMap", "edgefleet-emqx"),
        ("ConfigMap", "edgefleet-hub"),
    } <= kinds
    assert one("Deployment", "edgefleet-hub")["spec"]["replicas"] >= 2
    assert one("StatefulSet", "edgefleet-emqx")["spec"]["replicas"] == 3
    for d in manifests():
        assert d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "edgefleet", d["metadata"]["name"]


def test_every_selector_matches_its_pods_and_every_service_port_a_container_port() -> None:
    docs = manifests()
    workloads = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    for w in workloads:
        labels = w["spec"]["template"]["metadata"]["labels"]
        assert w["spec"]["selector"]["matchLabels"].items() <= labels.items(), w["metadata"]["name"]
        if w["kind"] == "StatefulSet":
            assert ("Service", w["spec"]["serviceName"]) in {(d["kind"], d["metadata"]["name"]) for d in docs}
    for svc in (d for d in docs if d["kind"] == "Service"):
        targets = [
            w
            for w in workloads
            if svc["spec"]["selector"].items() <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(targets) == 1, svc["metadata"]["name"]
        ports = {p["name"]: p["containerPort"] for c in pod_spec(targets[0])["containers"] for p in c["ports"]}
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in ports, (svc["metadata"]["name"], p)
    for pdb in (d for d in docs if d["kind"] == "PodDisruptionBudget"):
        assert any(
            pdb["spec"]["selector"]["matchLabels"].items() <= w["spec"]["template"]["metadata"]["labels"].items()
            for w in workloads
        ), pdb["metadata"]["name"]


def _secret_refs(spec: dict[str, Any]) -> set[tuple[str, str | None]]:
    refs: set[tuple[str, str | None]] = set()
    for c in spec["containers"]:
        for e in c.get("env", []):
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                refs.add((ref["name"], ref["key"]))
    for v in spec.get("volumes", []):
        if "secret" in v:
            refs.add((v["secret"]["secretName"], None))
    return refs


def test_no_secret_in_plain_text_and_every_referenced_secret_is_described() -> None:
    docs = manifests()
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    for name, s in secrets.items():
        assert "data" not in s, name  # base64 is plain text too
        for key, value in s["stringData"].items():
            assert PLACEHOLDER.search(value), f"{name}.{key} holds a value, not a <placeholder>"
            assert PLACEHOLDER.sub("", value).count(":") <= 3, f"{name}.{key}"
    for w in (d for d in docs if d["kind"] in ("Deployment", "StatefulSet")):
        spec = pod_spec(w)
        for name, key in _secret_refs(spec):
            assert name in secrets and (key is None or key in secrets[name]["stringData"]), (name, key)
        for c in spec["containers"]:
            for e in c.get("env", []):
                if e["name"] in SECRET_ENV or e["name"].endswith(("_TOKEN", "_PASSWORD", "_COOKIE")):
                    assert "value" not in e, f"{e['name']} in plain text in {w['metadata']['name']}"


def test_the_hub_runs_a_command_line_and_environment_the_real_hub_accepts() -> None:
    dep = one("Deployment", "edgefleet-hub")
    (c,) = pod_spec(dep)["containers"]
    assert c["args"][0] == "edgefleet-hub"
    ns = parser().parse_args(c["args"][1:])
    assert ns.cmd == "serve" and ns.host == "0.0.0.0"
    http = {p["name"]: p["containerPort"] for p in c["ports"]}["http"]
    assert ns.port == http
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts[ns.keys]["readOnly"] is True and ns.store in mounts
    store = next(v for v in pod_spec(dep)["volumes"] if v["name"] == mounts[ns.store]["name"])
    claim = one("PersistentVolumeClaim", store["persistentVolumeClaim"]["claimName"])
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # every replica serves every bundle
    names = {e["name"] for e in c["env"]}
    config = one("ConfigMap", "edgefleet-hub")["data"]
    for name in names | set(config):
        assert name in HUB_ENV, f"{name} is no setting of hub/config.py"
    assert {"EDGEFLEET_HUB_TOKEN", "EDGEFLEET_HUB_DB", "EDGEFLEET_HUB_BROKER"} <= names
    check_shared_group(config["EDGEFLEET_HUB_SHARED_GROUP"])  # replicas: a shared subscription
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["securityContext"]["readOnlyRootFilesystem"] and pod_spec(dep)["securityContext"]["runAsNonRoot"]


def test_one_housekeeper_does_what_the_replicas_leave_to_it_on_their_database_and_store() -> None:
    config = one("ConfigMap", "edgefleet-hub")["data"]
    assert config["EDGEFLEET_HUB_HOUSEKEEPING"] == "apart"  # the replicas leave it to the housekeeper
    keeper, hub = one("Deployment", "edgefleet-hub-housekeeper"), one("Deployment", "edgefleet-hub")
    assert keeper["spec"]["replicas"] == 1
    (c,) = pod_spec(keeper)["containers"]
    assert c["args"][0] == "edgefleet-hub"
    ns = parser().parse_args(c["args"][1:])
    assert ns.cmd == "housekeep" and ns.port == {p["name"]: p["containerPort"] for p in c["ports"]}["metrics"]
    (h,) = pod_spec(hub)["containers"]
    assert [e for e in c["env"] if e["name"] == "EDGEFLEET_HUB_DB"] == [
        e for e in h["env"] if e["name"] == "EDGEFLEET_HUB_DB"
    ]
    hub_ns = parser().parse_args(h["args"][1:])
    assert (ns.keys, ns.store) == (hub_ns.keys, hub_ns.store)
    volumes = {v["name"]: v for v in pod_spec(keeper)["volumes"]}
    hub_volumes = {v["name"]: v for v in pod_spec(hub)["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    hub_mounts = {m["mountPath"]: m["name"] for m in h["volumeMounts"]}
    for path in (ns.keys, ns.store):
        assert volumes[mounts[path]] == hub_volumes[hub_mounts[path]], path
    for name in {e["name"] for e in c["env"]} | set(config):
        assert name in HUB_ENV, f"{name} is no setting of hub/config.py"


def test_the_hub_reaches_postgres_and_the_broker_by_their_service_names_and_ports() -> None:
    example = one("Secret", "edgefleet-hub")["stringData"]
    pg = one("Service", "edgefleet-postgres")["spec"]["ports"][0]["port"]
    mqtt = {p["name"]: p["port"] for p in one("Service", "edgefleet-broker")["spec"]["ports"]}["mqtt"]
    assert f"@edgefleet-postgres:{pg}/" in example["db"]
    assert f"@edgefleet-broker:{mqtt}" in example["broker"] and example["broker"].startswith("mqtt://hub:")
    cloud = [d for d in yaml.safe_load_all((REPO / "deploy" / "cloud" / "kubernetes.yaml").read_text()) if d]
    (cloud_c,) = next(d for d in cloud if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"]
    hub_port = one("Service", "edgefleet-hub")["spec"]["ports"][0]["port"]
    assert cloud_c["args"][cloud_c["args"].index("--hub") + 1] == f"http://edgefleet-hub:{hub_port}"


def test_emqx_is_configured_with_the_features_the_hub_relies_on() -> None:
    data = one("ConfigMap", "edgefleet-emqx")["data"]
    conf, acl = data["emqx.conf"], data["acl.conf"]
    for needle in (
        "shared_subscription = true",
        "retain_available = true",
        "storage_type = disc",
        "durable_sessions",
        "discovery_strategy = dns",
        "max_packet_size = 1MB",
        f"max_mqueue_len = {max_queued_messages()}",  # a download's whole replay (hub.credentials)
        "no_match = deny",
        "backend = built_in_database",
    ):
        assert needle in conf, needle
    for kind in DEVICE_WRITE:
        assert f'"ef/v1/dev/${{username}}/{kind}"' in acl.split("publish", 1)[1].split("}.")[0], kind
    for kind in DEVICE_READ:
        assert f'"ef/v1/dev/${{username}}/{kind}"' in acl.split("subscribe", 1)[1].split("}.")[0], kind
    assert acl.rstrip().endswith("{deny, all}.")
    sts = one("StatefulSet", "edgefleet-emqx")
    dns = re.search(r'name = "([^"]+)"', conf.split("dns", 1)[1])
    assert dns is not None and dns.group(1).startswith(sts["spec"]["serviceName"] + ".")
    (c,) = pod_spec(sts)["containers"]
    assert re.fullmatch(r"emqx/emqx:5\.8\.\d+", c["image"])  # 5.9+ needs a licence to cluster
    env = {e["name"]: e for e in c["env"]}
    assert (
        sts["spec"]["serviceName"] in env["EMQX_HOST"]["value"]
        and "secretKeyRef" in env["EMQX_NODE__COOKIE"]["valueFrom"]
    )
