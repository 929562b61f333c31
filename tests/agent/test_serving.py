"""The local inference API: real models, real images, bad input answered clearly, cloud fallback."""

from __future__ import annotations

import io
import json
import sys

import numpy as np
import pytest
from PIL import Image

from tests.conftest import free_port, serving_process

from .bundles import MNV1_TPU, coral_bundle

pytestmark = pytest.mark.integration


def _digit_png(value: int = 255) -> bytes:
    img = Image.new("L", (8, 8), 0)
    for y in range(1, 7):
        img.putpixel((4, y), value)  # a vertical stroke, roughly a "1"
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def digits_agent(trust, hub, make_agent, digits_bundle):
    env, _, archive = trust.sign_dir(digits_bundle)
    pub = hub.publish_bundle(env, archive)
    agent = make_agent("digits").start()
    hub.desire(agent.device, pub)
    hub.report(agent.device, "commit", "ok", pub.ref.digest)
    return agent, pub


def test_digits_bundle_from_the_compiler_serves_tensors_and_images(digits_agent):
    agent, pub = digits_agent
    code, out = agent.http(
        "POST",
        "/v1/predict",
        json.dumps({"inputs": np.zeros((1, 8, 8, 1)).tolist()}).encode(),
        {"Content-Type": "application/json"},
    )
    assert code == 200, out
    assert np.shape(out["predictions"]) == (1, 10) and abs(sum(out["predictions"][0]) - 1) < 0.05  # [N, K]
    assert out["bundle"] == {"digest": pub.ref.digest, "name": pub.ref.name, "version": pub.ref.version}
    code, out = agent.predict_image(_digit_png(), path="/predict")  # the seed-compatible alias
    assert code == 200 and out["served_by"] == "cpu" and out["top"][0]["label"] in [str(i) for i in range(10)]
    code, st = agent.http("GET", "/v1/status")
    assert code == 200 and st["active"]["digest"] == pub.ref.digest and st["state"] == "serving"


@pytest.mark.parametrize(
    "ctype, body, status, needle",
    [
        ("application/json", b"{not json", 400, "not valid JSON"),
        ("application/json", b'{"inputs": [NaN]}', 400, "NaN is not a JSON number"),
        ("application/json", b'{"x": 1}', 422, "'inputs' field"),
        ("application/json", b'{"inputs": [1, 2, 3]}', 422, "needs 64"),
        ("application/json", b'{"inputs": "cat"}', 422, "nested list"),
        (
            "multipart/form-data; boundary=zz",
            b'--zz\r\nContent-Disposition: form-data; name="img"\r\n\r\nxx\r\n--zz--\r\n',
            422,
            "no field named 'file'",
        ),
        ("image/png", b"this is not a png", 422, "not a readable image"),
        ("text/plain", b"hello", 422, "unsupported Content-Type"),
    ],
)
def test_bad_request_gets_a_clear_error_and_the_agent_keeps_serving(digits_agent, ctype, body, status, needle):
    agent, pub = digits_agent
    code, out = agent.http("POST", "/v1/predict", body, {"Content-Type": ctype})
    assert code == status and needle in out["detail"], out
    code, out = agent.predict_image(_digit_png())
    assert code == 200


def test_unknown_route_and_no_model_are_reported_not_crashed(make_agent, hub):
    agent = make_agent("empty").start()
    code, out = agent.http("GET", "/v2/nothing")
    assert code == 404 and "no route" in out["detail"]
    code, out = agent.http("GET", "/healthz")
    assert code == 503 and out["model"] is False
    code, out = agent.predict_image(_digit_png())
    assert code == 503 and "no local model installed" in out["detail"] and "no cloud fallback" in out["detail"]


@pytest.fixture
def cloud(tmp_path, trust, digits_bundle):
    bundles = tmp_path / "cloud-bundles"
    bundles.mkdir()
    _, _, archive = trust.sign_dir(digits_bundle)
    (bundles / "digits.efb").write_bytes(archive)
    (tmp_path / "cloud-root.json").write_bytes(trust.root_bytes)
    port = free_port()
    argv = [sys.executable, "-m", "cloud", "serve", "--bundles", str(bundles)]
    argv += ["--root", str(tmp_path / "cloud-root.json"), "--port", str(port), "--poll", "0"]
    argv += ["--api-key", "agents:s3cret-s3cret-s3cret"]
    with serving_process(argv, port, tmp_path / "cloud.log") as url:
        yield url


@pytest.mark.slow
def test_device_without_a_usable_model_routes_to_the_cloud_fallback(
    tmp_path, coral_models, trust, hub, make_agent, cloud, digits_bundle
):
    agent = make_agent("fallback", cloud_url=cloud, cloud_api_key="s3cret-s3cret-s3cret").start()
    env, _, archive = trust.sign_dir(coral_bundle(tmp_path / "tpu", coral_models, MNV1_TPU, role="tflite_edgetpu"))
    tpu_only = hub.publish_bundle(env, archive)
    hub.desire(agent.device, tpu_only)
    hub.report(agent.device, "verify", "failed", tpu_only.ref.digest)  # refused: no Edge TPU here
    code, out = agent.predict_image(_digit_png())
    assert code == 200, out
    assert out["served_by"] == "cloud" and np.shape(out["predictions"]) == (1, 10)
    code, _ = agent.http("GET", "/healthz")
    assert code == 200
    tm = hub.wait(
        lambda: [t for t in hub.telemetry if t.device == "fallback" and t.counts.get("cloud")],
        30,
        "telemetry counting a cloud fallback",
    )
    assert tm[0].counts["cloud"] >= 1
    env, _, archive = trust.sign_dir(digits_bundle)
    pub = hub.publish_bundle(env, archive)
    hub.desire(agent.device, pub)
    hub.report(agent.device, "commit", "ok", pub.ref.digest)
    code, out = agent.predict_image(_digit_png())
    assert code == 200 and out["served_by"] == "cpu"
    local = out["predictions"]
    code, out = agent.http(
        "POST",
        "/v1/predict",
        json.dumps({"inputs": np.zeros((1, 8, 8, 1)).tolist()}).encode(),
        {"Content-Type": "application/json"},
    )
    assert code == 200 and out["served_by"] == "cpu"
    assert np.shape(local) == (1, 10)


@pytest.mark.slow
def test_local_path_over_its_latency_budget_routes_to_the_cloud(trust, hub, make_agent, cloud, digits_bundle):
    agent = make_agent(
        "budget", cloud_url=cloud, cloud_api_key="s3cret-s3cret-s3cret", latency_budget_ms=0.000001
    ).start()
    env, _, archive = trust.sign_dir(digits_bundle)
    pub = hub.publish_bundle(env, archive)
    hub.desire(agent.device, pub)
    hub.report(agent.device, "commit", "ok", pub.ref.digest)
    paths = [agent.predict_image(_digit_png())[1]["served_by"] for _ in range(25)]
    assert paths[0] == "cpu"  # measured once locally...
    assert paths[1:20] == ["cloud"] * 19  # ...over budget, so the cloud serves...
    assert "cpu" in paths[20:]  # ...and the local path is probed again now and then


def test_onnx_only_bundle_is_served_by_onnxruntime(tmp_path, trust, hub, make_agent, digits_bundle):
    import shutil
    import time as _time

    import onnxruntime as ort

    from protocol.bundle import MANIFEST_FILE, Artifact, Manifest, Requirements, parse_manifest
    from protocol.signing import Envelope, seal

    src = parse_manifest(Envelope.parse((digits_bundle / MANIFEST_FILE).read_bytes()).payload)
    out = tmp_path / "onnx-only"
    out.mkdir()
    for name in ("model.onnx", "labels.txt"):
        shutil.copyfile(digits_bundle / name, out / name)
    x = np.random.default_rng(0).random((1, 8, 8, 1), dtype=np.float32)
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    y = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    (out / "selftest.json").write_text(
        json.dumps(
            {
                "schema": 1,
                "artifact": "model.onnx",
                "tolerance": 1e-4,
                "max_latency_ms": 1000,
                "cases": [{"input": x.tolist(), "expected": y.tolist()}],
            }
        )
    )
    roles = {"model.onnx": "onnx", "labels.txt": "labels", "selftest.json": "selftest"}
    arts = tuple(Artifact.of(n, r, (out / n).read_bytes()) for n, r in roles.items())
    m = Manifest("digits-onnx", "1", int(_time.time()), arts, Requirements(), model=src.model)
    (out / MANIFEST_FILE).write_bytes(seal("manifest", m.to_dict(), []).to_bytes())
    env, _, archive = trust.sign_dir(out)
    pub = hub.publish_bundle(env, archive)
    agent = make_agent("onnx").start()
    hub.desire(agent.device, pub)
    staged = hub.report(agent.device, "stage", "ok", pub.ref.digest)
    assert "model.onnx on onnx" in staged.detail
    hub.report(agent.device, "commit", "ok", pub.ref.digest)
    code, res = agent.http(
        "POST", "/v1/predict", json.dumps({"inputs": x.tolist()}).encode(), {"Content-Type": "application/json"}
    )
    assert code == 200 and res["served_by"] == "onnx"
    assert np.shape(res["predictions"]) == y.shape and np.allclose(res["predictions"], y, atol=1e-5)


def test_local_api_is_also_served_on_a_unix_socket(tmp_path, make_agent, hub):
    import http.client
    import socket

    class UnixConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.connect(str(sock_path))

    sock_path = tmp_path / "agent.sock"
    agent = make_agent("unix", http_socket=str(sock_path)).start()
    _ = agent.port  # wait until the API is up
    assert oct(sock_path.stat().st_mode & 0o777) == "0o660"
    conn = UnixConnection("localhost")
    try:
        conn.request("GET", "/v1/status")
        resp = conn.getresponse()
        assert resp.status == 200 and json.loads(resp.read())["device"] == "unix"
        conn.request("POST", "/v1/predict", b"{}", {"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 422 and "'inputs'" in json.loads(resp.read())["detail"]
    finally:
        conn.close()
