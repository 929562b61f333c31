"""The walking skeleton over real processes: mosquitto, the hub on SQLite, agent subprocesses.

A real digits bundle is pushed (the hub signs it), rolled out to two agents, each agent installs
it and serves held-out digits; telemetry reaches the hub's database. An agent handed a bundle
signed by an unknown key rejects it with a reason code and keeps serving its model.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from demo.client import png_bytes, post_image, top1
from demo.launcher import Fleet, tail
from protocol.bundle import ChunkPlan, digest_of
from protocol.messages import BundleRef, Desired, parse_report
from protocol.signing import SigningKey
from protocol.topics import Kind, Topic

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def wait_for(what: str, check: Callable[[], Any], fleet: Fleet, timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    logs = "\n".join(f"--- {p.name}\n{tail(p.log, 15)}" for p in fleet.procs)
    raise AssertionError(f"timed out waiting for {what}\n{logs}")


def device(fleet: Fleet, name: str) -> dict[str, Any]:
    items = fleet.api("GET", "/api/v1/devices?limit=100")["items"]
    return next((d for d in items if d["device_id"] == name), {})


def active_digest(dev: dict[str, Any]) -> str | None:
    active = dev.get("active_bundle") or {}
    return active.get("digest")


def holdout() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    pixels = np.round(d.images[-100:] * 255 / 16).astype(np.uint8)
    return pixels, d.target[-100:]


def test_bundle_rolls_out_to_two_agents_and_telemetry_reaches_the_database(fleet, digits_bundle):
    pushed = fleet.push(digits_bundle)
    digest = pushed["digest"]
    for name in ("dev-a", "dev-b"):
        fleet.start_agent(name, telemetry_interval=1.0)
    wait_for("both agents online", lambda: all(device(fleet, n).get("online") for n in ("dev-a", "dev-b")), fleet)

    fleet.api("POST", "/api/v1/rollouts", {"bundle": digest, "target": {"all": True}})
    for name in ("dev-a", "dev-b"):
        wait_for(
            f"{name} reports the bundle installed", lambda n=name: active_digest(device(fleet, n)) == digest, fleet
        )

    xs, ys = holdout()
    correct = 0
    for name in ("dev-a", "dev-b"):
        port = fleet.agent_port(name)
        for x, y in zip(xs[:20], ys[:20], strict=True):
            answer = post_image(f"http://127.0.0.1:{port}/v1/predict", png_bytes(x))
            assert "error" not in answer, answer
            assert answer["bundle"]["digest"] == digest and answer["served_by"] == "cpu"
            correct += int(top1(answer) == int(y))
    assert correct >= 30, f"only {correct}/40 held-out digits right: the served model is not the trained one"

    db = fleet.state / "hub.db"

    def telemetry_rows() -> int:
        with sqlite3.connect(db) as con:
            tables = [r[0] for r in con.execute("select name from sqlite_master where type='table'")]
            table = next(t for t in tables if "telemetry" in t)
            return con.execute(f"select count(*) from {table}").fetchone()[0]

    wait_for("telemetry rows in the hub database", telemetry_rows, fleet)
    wait_for(
        "hub counts the 20 inferences of dev-a",
        lambda: (device(fleet, "dev-a").get("telemetry") or {}).get("inferences", 0) >= 20,
        fleet,
    )


def test_agent_rejects_a_bundle_signed_by_an_unknown_key_and_keeps_serving(fleet, digits_bundle, trust):
    pushed = fleet.push(digits_bundle)
    fleet.start_agent("dev-c", telemetry_interval=1.0)
    wait_for("agent online", lambda: device(fleet, "dev-c").get("online"), fleet)
    fleet.api("POST", "/api/v1/rollouts", {"bundle": pushed["digest"], "target": {"devices": ["dev-c"]}})
    wait_for("good bundle installed", lambda: active_digest(device(fleet, "dev-c")) == pushed["digest"], fleet)

    # An attacker with broker access but not the hub's key: a re-signed bundle and desired doc.
    rogue = SigningKey.generate()
    env, arts, archive = trust.sign_dir(digits_bundle, keys=[rogue])
    plan = ChunkPlan.of(archive, 64 * 1024)
    doc = Desired(
        "dev-c",
        10_000,
        int(time.time()),
        int(time.time()) + 600,
        "install",
        BundleRef(digest_of(env), "digits", "evil", plan),
    ).seal([rogue])

    reports: list[Any] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="attacker")
    client.on_message = lambda c, u, m: reports.append(parse_report(m.payload))
    host, port = fleet.broker_url.removeprefix("mqtt://").split(":")
    client.connect(host, int(port))
    client.subscribe(str(Topic.for_device(Kind.REPORT, "dev-c")), qos=1)
    client.loop_start()
    try:
        for i in range(len(plan.chunks)):
            client.publish(
                str(Topic.chunk(plan.sha256, i)),
                archive[i * plan.chunk_size : (i + 1) * plan.chunk_size],
                qos=1,
                retain=True,
            )
        client.publish(str(Topic.for_device(Kind.DESIRED, "dev-c")), doc, qos=1, retain=True).wait_for_publish()
        rejection = wait_for(
            "a rejection with reason unknown_key",
            lambda: next((r for r in reports if r.reason == "unknown_key"), None),
            fleet,
        )
        assert rejection.status == "failed"
    finally:
        client.loop_stop()
        client.disconnect()

    assert fleet.procs[-1].alive, "agent died after a rogue bundle"
    answer = post_image(f"http://127.0.0.1:{fleet.agent_port('dev-c')}/v1/predict", png_bytes(holdout()[0][0]))
    assert answer["bundle"]["digest"] == pushed["digest"]
