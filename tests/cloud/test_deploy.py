"""Deployment files: the Kubernetes manifests and the Dockerfile agree with the real service."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from cloud.__main__ import parser
from cloud.config import ENV_DEFAULT_MODEL
from cloud.guard import OPEN_PATHS

from .conftest import REPO

DEPLOY = REPO / "deploy" / "cloud"


def docs() -> dict[str, dict[str, Any]]:
    loaded = [d for d in yaml.safe_load_all((DEPLOY / "kubernetes.yaml").read_text()) if d]
    return {d["kind"]: d for d in loaded}


def test_manifests_parse_and_hold_deployment_service_and_autoscaler() -> None:
    kinds = docs()
    assert {"Deployment", "Service", "HorizontalPodAutoscaler"} <= set(kinds)
    dep, svc, hpa = kinds["Deployment"], kinds["Service"], kinds["HorizontalPodAutoscaler"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert svc["spec"]["selector"].items() <= labels.items()
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": dep["metadata"]["name"],
    }
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    if "PodDisruptionBudget" in kinds:
        assert kinds["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_deployment_runs_a_command_line_the_real_cli_accepts() -> None:
    dep = docs()["Deployment"]
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[0] == "edgefleet-cloud"
    ns = parser().parse_args(args[1:])
    assert ns.command == "serve" and ns.host == "0.0.0.0"
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["http"]
    assert ns.port == port
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert ns.bundles in mounts and str(Path(ns.root).parent) in mounts
    # the probes hit routes that need no API key
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["path"] in OPEN_PATHS
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    env = {e["name"] for e in container["env"]}
    assert {"EDGEFLEET_CLOUD_API_KEYS", "EDGEFLEET_HUB_TOKEN"} <= env  # secrets never in args
    sec = container["securityContext"]
    assert sec["readOnlyRootFilesystem"] and not sec["allowPrivilegeEscalation"]
    assert dep["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    assert container["resources"]["limits"]["cpu"] == str(ns.workers)  # workers match the CPU quota


def test_dockerfile_is_slim_non_root_with_a_healthcheck_on_the_served_port() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    assert "HEALTHCHECK" in text and "/healthz" in text
    cmd = re.search(r"^CMD \[(.*?)\]\s*$", text.replace("\\\n", " "), re.M | re.S)
    assert cmd is not None
    argv = [a.strip().strip('"') for a in cmd.group(1).split(",")]
    ns = parser().parse_args(argv[1:])
    assert re.search(rf"^EXPOSE {ns.port}$", text, re.M)
    assert "'.[cloud]'" in text  # only the cloud extra: no TensorFlow in the image


def test_every_deploy_file_names_the_default_model_for_the_seeds_predict() -> None:
    (container,) = docs()["Deployment"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env.get(ENV_DEFAULT_MODEL)
    assert re.search(rf"^ENV .*\b{ENV_DEFAULT_MODEL}=\w+", (DEPLOY / "Dockerfile").read_text(), re.M)
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert ENV_DEFAULT_MODEL in compose["services"]["cloud"]["environment"]
