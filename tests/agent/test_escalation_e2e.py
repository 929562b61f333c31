"""Escalation to the cloud by confidence end to end: a real agent process over the real broker,
a real cloud fallback process (edgefleet-cloud), the cloud killed and replaced by a socket that
never answers, then brought back (agent.escalation, agent.serve)."""

from __future__ import annotations

import json
import re
import shutil
import socket
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import free_port, serving_process

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KEY = "s3cret-s3cret-s3cret"
ZEROS = json.dumps({"inputs": np.zeros((1, 8, 8, 1)).tolist()}).encode()


class Cloud:
    """The cloud fallback as a process on a fixed port, which the test can stop and start again."""

    def __init__(self, tmp_path: Path, trust: Any, digits_bundle: Path) -> None:
        bundles = tmp_path / "cloud-bundles"
        bundles.mkdir()
        _, _, archive = trust.sign_dir(digits_bundle)
        (bundles / "digits.efb").write_bytes(archive)
        (tmp_path / "cloud-root.json").write_bytes(trust.root_bytes)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.argv = [sys.executable, "-m", "cloud", "serve", "--bundles", str(bundles)]
        self.argv += ["--root", str(tmp_path / "cloud-root.json"), "--port", str(self.port), "--poll", "0"]
        self.argv += ["--api-key", f"agents:{KEY}"]
        self.log = tmp_path / "cloud.log"
        self._ctx: Any = None

    def start(self) -> None:
        self._ctx = serving_process(self.argv, self.port, self.log)
        self._ctx.__enter__()

    def stop(self) -> None:
        if self._ctx is not None:
            self._ctx.__exit__(None, None, None)
            self._ctx = None


@pytest.fixture
def cloud(tmp_path: Path, trust: Any, digits_bundle: Path) -> Iterator[Cloud]:
    c = Cloud(tmp_path, trust, digits_bundle)
    c.start()
    yield c
    c.stop()


def escalating_agent(
    make_agent: Any, hub: Any, trust: Any, digits_bundle: Path, cloud: Cloud, name: str, **policy: Any
) -> Any:
    env, _, archive = trust.sign_dir(digits_bundle)
    pub = hub.publish_bundle(env, archive)
    agent = make_agent(name, cloud_url=cloud.url, cloud_api_key=KEY, http_metrics=True)
    table = {"escalate_to": pub.ref.name, "threshold": 1.0, **policy}
    with open(agent.config, "a") as f:  # a TOML table after the top-level keys
        f.write("[escalation]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items()))
    agent.start()
    hub.desire(agent.device, pub)
    hub.report(agent.device, "commit", "ok", pub.ref.digest)
    return agent


def ask(agent: Any) -> dict[str, Any]:
    code, out = agent.http("POST", "/v1/predict", ZEROS, {"Content-Type": "application/json"})
    assert code == 200, out
    return out  # type: ignore[no-any-return]


def test_unsure_answers_go_to_the_cloud_and_a_down_cloud_opens_the_breaker_until_a_probe_succeeds(
    make_agent: Any, hub: Any, trust: Any, digits_bundle: Path, cloud: Cloud
) -> None:
    agent = escalating_agent(
        make_agent, hub, trust, digits_bundle, cloud, "esc", timeout_ms=3000, failures=2, window_s=600, cooldown_s=1
    )
    out = ask(agent)
    assert out["served_by"] == "cloud" and out["escalated"] is True, out
    assert 0 <= out["confidence"] < 1.0 and [len(r) for r in out["predictions"]] == [10]

    # the cloud dies; a socket that accepts connections and never answers takes its port
    cloud.stop()
    hole = socket.socket()
    hole.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    hole.bind(("127.0.0.1", cloud.port))
    hole.listen(64)
    try:
        outs = [ask(agent) for _ in range(2)]
        assert [(o["served_by"], o["escalation"]) for o in outs] == [("cpu", "timeout")] * 2, outs
        assert "timed out" in outs[0]["escalation_error"]
        hole.setblocking(False)
        while True:  # the two attempts that timed out
            try:
                hole.accept()[0].close()
            except BlockingIOError:
                break
        out = ask(agent)
        assert (out["served_by"], out["escalation"]) == ("cpu", "breaker_open"), out
        with pytest.raises(BlockingIOError):  # the breaker is open: no connection was even tried
            hole.accept()
    finally:
        hole.close()

    cloud.start()  # back: once the cool-down is over, the next unsure request is the probe
    deadline = time.monotonic() + 60
    while (out := ask(agent)).get("escalation") in ("breaker_open", "failed", "timeout"):
        assert time.monotonic() < deadline, out
        time.sleep(0.2)
    assert out["served_by"] == "cloud" and out["escalated"] is True, out
    assert ask(agent)["served_by"] == "cloud"  # closed again

    def totals() -> dict[str, int]:
        windows = [t for t in hub.telemetry if t.device == "esc"]
        keys = ("escalated", "escalation_failed", "escalation_breaker_open")
        return {k: sum(t.counts.get(k, 0) for t in windows) for k in keys}

    hub.wait(lambda: totals()["escalated"] >= 3, 30, "telemetry counting the escalations")
    total = totals()
    assert total["escalation_failed"] >= 2 and total["escalation_breaker_open"] >= 1, total
    with urllib.request.urlopen(f"http://127.0.0.1:{agent.port}/metrics", timeout=30) as r:
        text = r.read().decode()
    failed = re.search(r'edgefleet_agent_escalations_total\{outcome="escalation_failed"\} (\d+)', text)
    assert failed is not None and int(failed.group(1)) >= 2, text


def test_an_exhausted_upload_budget_answers_locally_with_the_reason(
    make_agent: Any, hub: Any, trust: Any, digits_bundle: Path, cloud: Cloud
) -> None:
    agent = escalating_agent(
        make_agent, hub, trust, digits_bundle, cloud, "esc-budget", timeout_ms=5000, requests_per_minute=1
    )
    first, second = ask(agent), ask(agent)
    assert first["served_by"] == "cloud" and first["escalated"] is True, first
    assert (second["served_by"], second["escalation"]) == ("cpu", "budget"), second
    assert second["confidence"] < 1.0


def test_the_bundles_own_policy_applies_when_the_agent_config_has_none(
    tmp_path: Path, make_agent: Any, hub: Any, trust: Any, digits_bundle: Path, cloud: Cloud
) -> None:
    from protocol.bundle import MANIFEST_FILE
    from protocol.codec import canonical
    from protocol.signing import Envelope

    bundle = tmp_path / "digits-escalating"
    shutil.copytree(digits_bundle, bundle)
    env = Envelope.parse((bundle / MANIFEST_FILE).read_bytes())
    doc = json.loads(env.payload)
    doc["model"]["signature"]["escalation"] = {"escalate_to": doc["name"], "threshold": 1.0, "timeout_ms": 5000}
    (bundle / MANIFEST_FILE).write_bytes(Envelope(env.payload_type, canonical(doc), ()).to_bytes())
    env, _, archive = trust.sign_dir(bundle)
    pub = hub.publish_bundle(env, archive)
    agent = make_agent("esc-bundle", cloud_url=cloud.url, cloud_api_key=KEY).start()
    hub.desire(agent.device, pub)
    hub.report(agent.device, "commit", "ok", pub.ref.digest)
    out = ask(agent)
    assert out["served_by"] == "cloud" and out["escalated"] is True, out

    env, _, archive = trust.sign_dir(digits_bundle)  # the same model without the field: no escalation
    plain = hub.publish_bundle(env, archive)
    hub.desire(agent.device, plain)
    hub.report(agent.device, "commit", "ok", plain.ref.digest)
    out = ask(agent)
    assert out["served_by"] == "cpu" and "escalation" not in out and "confidence" not in out, out
