"""Issue 12 end to end: every model in ``../shared/models/coral`` imported by the compiler, pushed
to a real hub (which signs it), rolled out to ONE real agent process over a real Mosquitto (each
model in turn), and answered through the agent's local API on its CPU, through the agent's cloud
fallback (a real ``edgefleet-cloud`` process serving the bundle's ONNX twin) and by that cloud
directly; every answer held to LiteRT run here on the same input (and MoveNet to Coral's own
reference CSV), within the quantization step, or the twin's verified limits for the cloud. A
model whose twin the compiler withheld gets a 404 from the cloud naming why (a 503 naming it from
the agent); the broken model is refused at import in one line naming the op. No non-classifier
answer carries class scores (``predictions``/``top``), and bad requests per task are a 4xx naming
the problem.

The agent's latency budget is 0.001 ms, so after its first local answer on a freshly installed
model (the moving average is reset on every switch) the next request goes to the cloud fallback:
the one way to make a real agent process use the cloud without breaking its model. No inference
takes a microsecond, so the routing is not a wall-clock race.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from demo.launcher import Fleet, LaunchError
from protocol import answers
from protocol.bundle import ChunkPlan, digest_of
from protocol.messages import MAX_MESSAGE_BYTES, BundleRef, Desired
from protocol.signature import TensorSpec
from tests.agent.test_tasks import held_to_reference, original_size, request_input
from tests.cloud.test_tasks import agreement
from tests.conftest import REPO
from tests.coral_imports import (
    BROKEN,
    CASES,
    COCOMPILED,
    NON_CLASSIFIERS,
    Case,
    image_bytes,
    imported,
    imported_edgetpu,
    litert,
    manifest,
    step,
)
from tests.integration.test_walking_skeleton import active_digest, device, wait_for

# the first run after a change to compiler/ or protocol/ imports ten Coral models (~10 min on a busy 2-core machine)
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1800)]

DEVICE = "coral-dev"
FAKE_HUB_CHUNK = 16 * 1024  # tests/agent/fakehub.py's chunk size: the smallest the agent tests use


@pytest.fixture(scope="module")
def bundles(coral_models: Path) -> dict[str, Path]:
    return {k: imported(k, coral_models) for k in CASES}


@pytest.fixture(scope="module")
def coral_fleet(tmp_path_factory: pytest.TempPathFactory, bundles: dict[str, Path]) -> Iterator[tuple[Fleet, str]]:
    """A private Mosquitto, the hub, the cloud fallback on the hub's archive store, one agent
    that falls back to it: shared by every model of the module."""
    f = Fleet(tmp_path_factory.mktemp("coral-fleet"))
    try:
        f.start_broker()
        f.init_keys()
        f.start_hub()
        cloud = f.start_cloud()
        f.start_agent(DEVICE, telemetry_interval=1.0, extra=f'cloud_url = "{cloud}"\nlatency_budget_ms = 0.001\n')
        wait_for("agent online", lambda: device(f, DEVICE).get("online"), f)
        yield f, cloud
    finally:
        f.stop_all()


def _artifact(bundle: Path) -> Path:
    roles = {a.role: a.name for a in manifest(bundle).artifacts}
    return bundle / (roles.get("tflite_int8") or roles["tflite_float"])


def _post(url: str, c: Case, bundle: Path, coral: Path, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """``c``'s input as an app sends it: the image file as multipart, or the LSTM's raw tensor."""
    if c.tensor:
        raw = request_input(coral, c, bundle)
        body, head = raw.tobytes(), {"Content-Type": "application/octet-stream"}
        head.update({"X-Tensor-Shape": ",".join(map(str, raw.shape)), "X-Tensor-Dtype": raw.dtype.name})
    else:
        body, head = _multipart(image_bytes(coral, c))
    return _http(url, body, {**head, **(headers or {})})


def _multipart(data: bytes) -> tuple[bytes, dict[str, str]]:
    b = uuid.uuid4().hex
    body = f'--{b}\r\nContent-Disposition: form-data; name="file"; filename="x.bmp"\r\n\r\n'.encode() + data
    return body + f"\r\n--{b}--\r\n".encode(), {"Content-Type": f"multipart/form-data; boundary={b}"}


def _http(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _query(c: Case) -> str:
    """score_threshold=0: every detection, as held_to_reference computes them; raw=true: every
    answer output as the model gave it (the twin's, through the cloud), to hold to LiteRT."""
    return {"classification": "", "detection": "score_threshold=0&raw=true"}.get(c.task, "raw=true")


def _local_held_to_litert(c: Case, bundle: Path, doc: dict[str, Any], ref: list[np.ndarray], coral: Path) -> None:
    if c.task == "classification":
        scores = np.asarray(doc["predictions"], np.float32)
        assert scores.shape == (1, ref[0].size)  # [N, K], one row: the cloud's shape too
        assert np.abs(scores - ref[0].reshape(1, -1)).max() <= step(_artifact(bundle)) + 1e-6
        assert doc["top"][0]["index"] == int(ref[0].argmax()) and doc["task"] == "classification"
        return
    held_to_reference(c, doc, ref, original_size(coral, c))  # also: no predictions, top or tensors
    if c.task == "keypoints":  # and Coral's own expected outputs for this image (resized their way)
        points = np.array([[k["y_normalized"], k["x_normalized"], k["score"]] for k in doc["keypoints"]])
        csv = np.loadtxt(coral / "movenet_single_pose_lightning_ptq_reference.csv", delimiter=",", skiprows=1)
        sure = (points[:, 2] > 0.3) & (csv[:, 3] > 0.3)
        assert sure.sum() >= 8 and abs(points[:, 2].mean() - csv[:, 3].mean()) < 0.1, (points, csv)
        dist = np.hypot(points[sure, 0] - csv[sure, 5], points[sure, 1] - csv[sure, 4])
        assert dist.max() < 0.05 and dist.mean() < 0.02, dist  # measured 0.034 / 0.014


def _cloud_held_to_litert(c: Case, bundle: Path, doc: dict[str, Any], ref: list[np.ndarray]) -> None:
    """The twin's answer (through the agent or straight from the cloud) within the limits the
    compiler verified the twin to (tests/cloud/test_tasks.py's figures)."""
    limits = manifest(bundle).model["twin"]["limits"]
    if c.task == "classification":
        got = [np.asarray(doc["predictions"], np.float32)]
        assert got[0].shape == (1, ref[0].size)  # [N, K] whether the agent or the cloud answered
    else:
        assert "predictions" not in doc and "top" not in doc and "tensors" not in doc and doc["task"] == c.task
        outs = manifest(bundle).model["signature"]["outputs"]
        specs = [TensorSpec.from_dict(t, "t") for t in outs if t["role"] != "state"]
        got = [
            answers.dequantize(sp, np.asarray(t["values"], t["dtype"])) for sp, t in zip(specs, doc["raw"], strict=True)
        ]
    fig = agreement(c.key, got, ref, step(_artifact(bundle)))
    if c.task == "classification":
        assert fig["top1_same"] == 1.0 and fig["max_step_diff"] <= limits["max_step_diff"], fig
    elif c.task == "embedding":
        assert fig["cosine"] >= limits["min_cosine"], fig
    elif c.task == "segmentation":
        assert fig["pixel_agreement"] >= limits["min_pixel_agreement"], fig
    elif c.task == "keypoints":
        assert fig["keypoint_distance_mean"] <= limits["max_keypoint_distance"], fig
    else:
        raise AssertionError(f"{c.key}: a {c.task} twin was verified, but this test has no limits for it")


# bad requests per task: (query, headers, body) -> the agent's 4xx and a piece of its detail
NOT_AN_IMAGE = b"GIF89a not really"
BAD: dict[str, list[tuple[str, dict[str, str], bytes | None, int, str]]] = {
    "classification": [("top_k=0", {}, None, 422, "request parameter top_k=")],
    "detection": [
        ("score_threshold=2", {}, None, 422, "must be a number in [0, 1]"),
        ("", {"X-Session-Id": "cam-9"}, None, 422, "session 'cam-9' is not held here"),
    ],
    "segmentation": [("mask=gif", {}, None, 422, "request parameter mask=")],
    "keypoints": [
        ("top_k=3", {}, None, 422, "request parameter top_k=3: applies to classification, this model is keypoints")
    ],
    "embedding": [("treshold=1", {}, None, 422, "request parameter treshold=")],
}


def _bad_requests_are_refused(agent: str, c: Case, bundle: Path, coral: Path) -> None:
    cases = list(BAD.get(c.task, []))
    if c.tensor:  # the LSTM takes a uint8 [1,28,28] tensor: a float32 one of another shape is wrong
        bad = np.zeros((1, 3, 3), np.float32)
        head = {"Content-Type": "application/octet-stream", "X-Tensor-Shape": "1,3,3", "X-Tensor-Dtype": "float32"}
        code, doc = _http(agent, bad.tobytes(), head)
        assert 400 <= code < 500 and "[1, 28, 28]" in doc["detail"], (code, doc)
    else:
        cases.append(("", {}, NOT_AN_IMAGE, 422, "image"))
    for query, headers, body, want, detail in cases:
        url = agent + (f"?{query}" if query else "")
        if body is None:
            code, doc = _post(url, c, bundle, coral, headers)
        else:
            data, head = _multipart(body)
            code, doc = _http(url, data, {**head, **headers})
        assert code == want and detail in doc["detail"], (c.key, query, headers, code, doc)


def _roll_out(f: Fleet, digest: str) -> dict[str, Any]:
    """POST /api/v1/rollouts with room to wait: the hub builds the delta from the device's active
    bundle inside the request (31 s from deeplab's 19 MB archive to MoveNet's on a busy 2-core
    machine, past Fleet.api's 30 s)."""
    req = urllib.request.Request(
        f.hub_url + "/api/v1/rollouts",
        data=json.dumps({"bundle": digest, "target": {"devices": [DEVICE]}}).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {f.token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return json.loads(r.read())  # type: ignore[no-any-return]
    except urllib.error.HTTPError as exc:
        raise LaunchError(f"hub POST /api/v1/rollouts -> {exc.code}: {exc.read()[:500]!r}") from None


def _cloud_has_it(cloud: str, key: str) -> bool:
    try:
        with urllib.request.urlopen(f"{cloud}/v1/models", timeout=10) as r:
            return key in r.read().decode()
    except (OSError, ValueError):
        return False


def test_every_coral_bundle_s_desired_document_fits_the_agent_s_message_limit(
    bundles: dict[str, Path], trust: Any
) -> None:
    """deeplab's was 331,680 bytes at the agent tests' 16 KiB chunks (one hash per chunk of an
    80 MB archive, 79 MB of it an indented selftest.json), over the agent's 262,144: a real
    agent never installed it."""
    for key, bundle in bundles.items():
        env, _, archive = trust.sign_dir(bundle)
        m = manifest(bundle)
        ref = BundleRef(digest_of(env), m.name, m.version, ChunkPlan.of(archive, FAKE_HUB_CHUNK), m.requirements)
        doc = Desired(DEVICE, 1, 0, 3600, "install", ref).seal([trust.targets_key])
        assert len(doc) < MAX_MESSAGE_BYTES // 2, f"{key}: desired document {len(doc)} bytes, archive {len(archive)}"


@pytest.mark.parametrize("key", list(CASES))
def test_each_coral_model_answers_through_a_real_agent_and_the_cloud_as_litert_does(
    key: str, bundles: dict[str, Path], coral_fleet: tuple[Fleet, str], coral_models: Path
) -> None:
    f, cloud = coral_fleet
    c, bundle = CASES[key], bundles[key]
    digest = f.push(bundle)["digest"]
    _roll_out(f, digest)
    wait_for(f"{key} installed on {DEVICE}", lambda: active_digest(device(f, DEVICE)) == digest, f, timeout=240)
    agent = f"http://127.0.0.1:{f.agent_port(DEVICE)}/v1/predict"
    ref = litert(_artifact(bundle), request_input(coral_models, c, bundle))
    query = f"?{_query(c)}" if _query(c) else ""

    # 1. bad requests for this task: a 4xx naming what is wrong, before the model runs (so the
    # latency average stays unset: these are checked locally, and the next answer is local too)
    _bad_requests_are_refused(agent, c, bundle, coral_models)

    # 2. the agent's own answer: its first request on the new model runs locally
    code, doc = _post(agent + query, c, bundle, coral_models)
    assert code == 200 and doc["served_by"] == "cpu" and doc["bundle"]["digest"] == digest, doc
    _local_held_to_litert(c, bundle, doc, ref, coral_models)
    if c.task != "classification":
        assert "top" not in doc and "predictions" not in doc

    # 3. the next goes to the cloud fallback (local latency over the 1 us budget)
    twin = manifest(bundle).model["twin"]
    wait_for(f"the cloud knows {key}", lambda: _cloud_has_it(cloud, key), f)
    code, via_agent = _post(agent + query, c, bundle, coral_models)
    code_c, direct = _post(
        f"{cloud}/predict?model={key}" + (f"&{_query(c)}" if _query(c) else ""), c, bundle, coral_models
    )
    if c.tensor:  # the seed's /predict takes images; a tensor goes to the tensor route
        code_c, direct = _post(f"{cloud}/v1/models/{key}/predict", c, bundle, coral_models)
    if manifest(bundle).artifact("onnx") is None:
        assert twin["status"] == "withheld" and twin["reason"], twin
        assert code == 503 and "HTTP 404" in via_agent["detail"] and "has no ONNX twin" in via_agent["detail"], (
            via_agent
        )
        assert code_c == 404, direct
        assert direct["detail"].startswith(f"model {key!r} is not served: bundle {key} 1.0.0 (")
        assert direct["detail"].endswith(f"has no ONNX twin: the compiler withheld it: {twin['reason']}"), direct
    else:
        assert code == 200 and via_agent["served_by"] == "cloud" and via_agent["bundle"]["digest"] == digest, via_agent
        assert code_c == 200 and direct["task"] == c.task, direct
        for answer in (via_agent, direct):
            _cloud_held_to_litert(c, bundle, answer, ref)
            if c.task != "classification":
                assert "top" not in answer and "predictions" not in answer

    # 4. routed to the cloud now, a bad parameter is still the client's 4xx naming it (it was the
    # cloud's 400 relayed as a 503 "cloud fallback ... HTTP 400", or a 503 for a withheld twin)
    code, doc = _post(agent + "?treshold=1", c, bundle, coral_models)
    assert code == 422 and "request parameter treshold=" in doc["detail"], (code, doc)


@pytest.mark.parametrize("key", NON_CLASSIFIERS)
def test_no_output_of_a_non_classifier_is_ranked_as_class_scores_by_the_agent_or_the_cloud(
    key: str, bundles: dict[str, Path], coral_fleet: tuple[Fleet, str], coral_models: Path
) -> None:
    """Whatever is installed now, the cloud answers every non-classifier whose twin it serves in
    its task's form on the seed's /predict, the image route and never with class scores."""
    _, cloud = coral_fleet
    c, bundle = CASES[key], bundles[key]
    if manifest(bundle).artifact("onnx") is None:
        pytest.skip(f"{key}: its twin was withheld (the 404 naming why is asserted above)")
    for url in (f"{cloud}/predict?model={key}", f"{cloud}/v1/models/{key}/predict/image"):
        code, doc = _post(url, c, bundle, coral_models)
        assert code == 200 and doc["task"] == c.task, doc
        assert not {"predictions", "top", "tensors", "outputs"} & set(doc), sorted(doc)


@pytest.mark.parametrize("key", list(COCOMPILED))
def test_each_co_compiled_model_needs_an_edge_tpu_and_is_refused_where_there_is_none(
    key: str, coral_fleet: tuple[Fleet, str], coral_models: Path
) -> None:
    """The pair imports as Edge-TPU-only bundles (``requirements.edgetpu = required``, no CPU
    model, no twin). This agent has no Edge TPU: the hub marks it incompatible naming that, and
    the model it served stays; the cloud's 404 says why it has no twin."""
    f, cloud = coral_fleet
    bundle = imported_edgetpu(key, coral_models)
    m = manifest(bundle)
    assert m.requirements.edgetpu == "required" and m.artifact("onnx") is None
    assert m.artifact("tflite_int8") is None and m.artifact("tflite_float") is None
    before = active_digest(device(f, DEVICE))
    digest = f.push(bundle)["digest"]
    try:
        rollout = _roll_out(f, digest)
    except LaunchError as exc:  # the hub may refuse it up front, naming the Edge TPU
        assert "Edge TPU" in str(exc), exc
    else:

        def refused() -> Any:
            devs = f.api("GET", f"/api/v1/rollouts/{rollout['id']}")["devices"]
            return next((d for d in devs if "Edge TPU" in d["reason"]), None)

        d = wait_for(f"{key} refused on {DEVICE}", refused, f, timeout=120)
        # the hub knows the device's inventory and never sends it (the agent would refuse it too)
        assert d["state"] == "incompatible" and "requires an Edge TPU; device has none" in d["reason"], d
    assert active_digest(device(f, DEVICE)) == before
    wait_for(f"the cloud knows {key}", lambda: _cloud_has_it(cloud, key), f)
    code, doc = _http(f"{cloud}/predict?model={key}", *_multipart(image_bytes(coral_models, CASES["mnv1_025"])))
    assert code == 404 and "has no ONNX twin" in doc["detail"] and "compiled for the Edge TPU" in doc["detail"], doc


def test_the_broken_model_is_refused_at_import_naming_the_op(coral_models: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "compiler", "import", str(coral_models / BROKEN), "--out", str(out), "--quiet"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("edgefleet-compile: error: "), proc.stderr
    assert "LiteRT cannot load it (Encountered unresolved custom op: fake-op-double.)" in lines[-1], lines[-1]
    assert not out.exists()
