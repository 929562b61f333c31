"""A real agent process serving an Edge TPU bundle to concurrent apps while its (fake) Edge TPU
hangs, recovers, then fails every invoke: no request fails, the answers say which runtime
served, the TPU comes back after a retry, and telemetry reports the reason code."""

from __future__ import annotations

import threading

import pytest

from .bundles import MNV1, MNV1_TPU, coral_bundle

pytestmark = pytest.mark.integration


def test_a_hung_then_failing_edge_tpu_drops_no_request_from_concurrent_apps(
    tmp_path, coral_models, trust, hub, make_agent
):
    control = tmp_path / "tpu-mode"
    control.write_text("ok")
    agent = make_agent("coral1", tpu_invoke_timeout_s=1.0, tpu_retry_s=1.0, tpu_retry_max_s=1.0)
    agent.env.update(EDGEFLEET_AGENT_EDGETPU_DRIVER="tests.agent.faketpu:DRIVER", EDGEFLEET_TEST_FAKE_TPU=str(control))
    agent.start()
    bundle = coral_bundle(tmp_path / "b", coral_models, MNV1_TPU, role="tflite_edgetpu", cpu_twin=MNV1)
    env, _, archive = trust.sign_dir(bundle)
    pub = hub.publish_bundle(env, archive)
    hub.desire(agent.device, pub)
    staged = hub.report(agent.device, "stage", "ok", pub.ref.digest)
    assert "model_edgetpu.tflite on edgetpu" in staged.detail
    hub.report(agent.device, "commit", "ok", pub.ref.digest)

    image = (coral_models / "cat_720p.jpg").read_bytes()
    code, first = agent.predict_image(image)
    assert code == 200 and first["served_by"] == "edgetpu"
    label = first["top"][0]["label"]

    served: list[str] = []
    failed: list[tuple[int, object]] = []
    stop = threading.Event()
    lock = threading.Lock()

    def app() -> None:
        while not stop.is_set():
            code, out = agent.predict_image(image)
            with lock:
                if code == 200 and out["top"][0]["label"] == label:
                    served.append(out["served_by"])
                else:
                    failed.append((code, out))

    def count(runtime: str) -> int:
        with lock:
            return served.count(runtime)

    apps = [threading.Thread(target=app) for _ in range(4)]
    for t in apps:
        t.start()
    try:
        hub.wait(lambda: count("edgetpu") >= 20, 60, "answers from the TPU")
        control.write_text("hang")
        hub.wait(lambda: count("cpu") >= 20, 60, "answers from the CPU while the TPU hangs")
        st = agent.http("GET", "/v1/status")[1]
        assert st["accelerator"]["runtime"] == "cpu" and st["accelerator"]["reason"] == "timeout"
        hub.wait(
            lambda: any(t.accelerator and t.accelerator.reason == "timeout" for t in hub.telemetry),
            30,
            "telemetry with the failover reason",
        )
        control.write_text("ok")  # replugged: the next retry finds it and serving goes back
        on_tpu = count("edgetpu")
        hub.wait(lambda: count("edgetpu") >= on_tpu + 20, 60, "answers from the TPU again")
        control.write_text("error")
        on_cpu = count("cpu")
        hub.wait(lambda: count("cpu") >= on_cpu + 20, 60, "answers from the CPU while the TPU errs")
        st = agent.http("GET", "/v1/status")[1]
        assert st["accelerator"]["reason"] == "errors" and st["accelerator"]["failovers"] == 2
        hub.wait(
            lambda: any(t.accelerator and t.accelerator.reason == "errors" for t in hub.telemetry),
            30,
            "telemetry with the second failover's reason",
        )
    finally:
        stop.set()
        for t in apps:
            t.join(60)
        control.write_text("ok")
    assert not failed, failed[:3]
    tel = [t.accelerator for t in hub.telemetry if t.accelerator is not None]
    assert {a.reason for a in tel} >= {"timeout", "errors"}
    assert all(a.temp_c is None for a in tel)  # no apex driver here: no reading, never a made-up one
