"""Every kind of model a Coral fleet runs, imported by the compiler and answered by the local API
(the agent's own server and serving path, in this process), held to LiteRT run directly on the
same input: a classifier's class scores, every other task's outputs by name, never ranked as
class scores; stateful models answer each request from their initial state."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.localapi import make_server
from agent.runtime import Model
from agent.serve import Serving
from agent.telemetry import Recorder
from protocol.bundle import MANIFEST_FILE, digest_of
from protocol.messages import BundleInfo
from protocol.signing import Envelope
from tests.coral_imports import CASES, NON_CLASSIFIERS, Case, image_bytes, imported, litert, manifest, pixels, step

pytestmark = pytest.mark.slow  # the first run imports ten Coral models (ONNX twins included)


@pytest.fixture(scope="module")
def bundles(coral_models: Path) -> dict[str, Path]:
    return {k: imported(k, coral_models) for k in CASES}


def _artifact(bundle: Path) -> str:
    roles = {a.role: a.name for a in manifest(bundle).artifacts}
    return roles.get("tflite_int8") or roles["tflite_float"]


def open_model(bundle: Path) -> Model:
    m = manifest(bundle)
    digest = digest_of(Envelope.parse((bundle / MANIFEST_FILE).read_bytes()))
    roles = {a.role: a.name for a in m.artifacts}
    return Model.open(bundle, _artifact(bundle), "cpu", BundleInfo(digest, m.name, m.version), m.model, roles)


class LocalApi:
    def __init__(self, url: str, model: Model) -> None:
        self.url, self.model = url, model

    def post(self, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
        req = urllib.request.Request(f"{self.url}/v1/predict", data=body, method="POST", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def image(self, data: bytes) -> tuple[int, Any]:
        b = uuid.uuid4().hex
        body = (
            f'--{b}\r\nContent-Disposition: form-data; name="file"; filename="x.bmp"\r\n\r\n'.encode()
            + data
            + f"\r\n--{b}--\r\n".encode()
        )
        return self.post(body, {"Content-Type": f"multipart/form-data; boundary={b}"})

    def tensor(self, raw: np.ndarray) -> tuple[int, Any]:
        headers = {
            "Content-Type": "application/octet-stream",
            "X-Tensor-Shape": ",".join(str(d) for d in raw.shape),
            "X-Tensor-Dtype": raw.dtype.name,
        }
        return self.post(raw.tobytes(), headers)


@contextmanager
def local_api(bundle: Path, cloud: Any = None) -> Iterator[LocalApi]:
    """The agent's local API (agent.localapi over agent.serve) serving ``bundle`` on a free port."""
    model = open_model(bundle)
    serving = Serving(Recorder(), cloud, None, lambda d, w: None)
    serving.swap(model)
    srv = make_server("127.0.0.1", 0, serving, lambda: {"device": "t"})
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield LocalApi(f"http://127.0.0.1:{srv.server_address[1]}", model)
    finally:
        srv.shutdown()
        srv.server_close()
        model.close()


def request_input(coral: Path, c: Case, bundle: Path) -> np.ndarray:
    """The raw input tensor the request amounts to (what the reference is fed)."""
    (feed,) = [t for t in manifest(bundle).model["signature"]["inputs"] if t["role"] != "state"]
    shape = feed["shape"]
    if c.tensor:
        return pixels(coral, c, shape[1], shape[2], 1).reshape(shape)
    return pixels(coral, c, shape[1], shape[2], shape[3])


def _ask_raw(api: LocalApi, coral: Path, c: Case, bundle: Path) -> tuple[int, Any]:
    return api.tensor(request_input(coral, c, bundle)) if c.tensor else api.image(image_bytes(coral, c))


def ask(api: LocalApi, coral: Path, c: Case, bundle: Path) -> dict[str, Any]:
    code, doc = _ask_raw(api, coral, c, bundle)
    assert code == 200, doc
    return doc  # type: ignore[no-any-return]


@pytest.mark.parametrize("key", list(CASES))
def test_each_coral_model_answers_through_the_local_api_as_litert_does(
    key: str, bundles: dict[str, Path], coral_models: Path
) -> None:
    c, bundle = CASES[key], bundles[key]
    sig = manifest(bundle).model["signature"]
    assert sig["task"] == c.task
    ref = litert(bundle / _artifact(bundle), request_input(coral_models, c, bundle))
    with local_api(bundle) as api:
        doc = ask(api, coral_models, c, bundle)
    if c.task == "classification":
        scores = np.asarray(doc["predictions"], np.float32)
        assert scores.shape == (ref[0].size,)
        assert np.abs(scores - ref[0].reshape(-1)).max() <= step(bundle / _artifact(bundle)) + 1e-6
        assert doc["top"][0]["index"] == int(ref[0].argmax())
        assert "tensors" not in doc
        return
    assert "predictions" not in doc and "top" not in doc and doc["task"] == c.task
    answer = [t for t in sig["outputs"] if t["role"] != "state"]
    assert [(t["name"], t["role"]) for t in doc["tensors"]] == [(t["name"], t["role"]) for t in answer]
    for t, want in zip(doc["tensors"], ref, strict=False):  # state outputs come last in these models
        got = np.asarray(t["values"])
        assert list(got.shape) == t["shape"] == list(want.shape)
        if want.dtype.kind in "iu":
            np.testing.assert_array_equal(got, want, err_msg=t["name"])
        else:  # float32 written as its shortest text reads back within an ulp
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=t["name"])


def test_movenet_gets_raw_pixels_and_finds_the_pose(bundles: dict[str, Path], coral_models: Path) -> None:
    """MoveNet's uint8 input has no quantization parameters: raw pixels 0-255. The compiler used
    to write scale 1/255 and the agent fed a near-black image (mean keypoint score 0.08)."""
    bundle = bundles["movenet"]
    pre = manifest(bundle).model["preprocess"]
    assert (pre["scale"], pre["offset"]) == (1.0, 0.0) and "input_quantization" not in pre
    with local_api(bundle) as api:
        assert api.model.direct  # the decoded pixels are the input tensor
        doc = ask(api, coral_models, CASES["movenet"], bundle)
    (kp,) = doc["tensors"]
    points = np.asarray(kp["values"]).reshape(17, 3)
    assert 0.45 < points[:, 2].mean() < 0.6, points[:, 2].mean()
    # Coral's own expected scores for this image (resized their way): the same pose, same confidence
    ref = np.loadtxt(coral_models / "movenet_single_pose_lightning_ptq_reference.csv", delimiter=",", skiprows=1)
    assert abs(points[:, 2].mean() - ref[:, 3].mean()) < 0.1


def test_stateful_models_answer_each_request_from_their_initial_state(
    bundles: dict[str, Path], coral_models: Path
) -> None:
    """The LSTM keeps its state in variable tensors and the detector takes it as inputs: without
    the reset, one app's request changed the next app's answer (the LSTM's "nine" scored 250/256
    after two other requests instead of 255/256)."""
    lstm, traffic = CASES["lstm"], CASES["traffic"]
    assert manifest(bundles["lstm"]).model["signature"]["stateful"] is True
    with local_api(bundles["lstm"]) as api:
        nine = request_input(coral_models, lstm, bundles["lstm"])
        first = api.tensor(nine)[1]["predictions"]
        for other in (np.full_like(nine, 200), np.zeros_like(nine), nine):
            assert api.tensor(other)[0] == 200
        assert api.tensor(nine)[1]["predictions"] == first
        assert int(np.argmax(first)) == 9
    sig = manifest(bundles["traffic"]).model["signature"]
    assert [t["role"] for t in sig["inputs"]] == ["image", "state", "state"] and sig["stateful"]
    with local_api(bundles["traffic"]) as api:
        one = ask(api, coral_models, traffic, bundles["traffic"])["tensors"]
        assert api.image((coral_models / "traffic_0002.bmp").read_bytes())[0] == 200
        again = ask(api, coral_models, traffic, bundles["traffic"])["tensors"]
    assert one == again


class ClassScoresCloud:
    """A cloud fallback that answers class scores whatever the model (an old edgefleet-cloud)."""

    def predict(self, req: Any, model_name: str | None) -> dict[str, Any]:
        return {"predictions": [[0.1] * 160], "top": [{"index": 3, "label": "3", "score": 0.9}]}


class TensorsCloud:
    def predict(self, req: Any, model_name: str | None) -> dict[str, Any]:
        return {"task": "keypoints", "tensors": [{"name": "k", "role": "keypoints", "shape": [1], "values": [0.5]}]}


@pytest.mark.parametrize("key", NON_CLASSIFIERS)
def test_no_output_of_a_non_classifier_is_ever_ranked_as_class_scores(
    key: str, bundles: dict[str, Path], coral_models: Path
) -> None:
    """The defect: a detector's 160 box coordinates came back as ``predictions`` and were ranked
    in ``top`` (HTTP 200, wrong by construction). Locally and through the cloud fallback alike."""
    c, bundle = CASES[key], bundles[key]
    with local_api(bundle) as api:
        doc = ask(api, coral_models, c, bundle)
    assert "predictions" not in doc and "top" not in doc
    assert doc["task"] == c.task and doc["tensors"]
    # the cloud answers instead (the local model fails): class scores for this model are refused...
    with local_api(bundle, ClassScoresCloud()) as api:
        api.model.backend.invoke_all = _fail  # type: ignore[method-assign]
        code, out = _ask_raw(api, coral_models, c, bundle)
    assert code == 503 and "its outputs are not class scores" in out["detail"], out
    # ...and its tensors pass through as they came
    with local_api(bundle, TensorsCloud()) as api:
        api.model.backend.invoke_all = _fail  # type: ignore[method-assign]
        code, out = _ask_raw(api, coral_models, c, bundle)
    assert code == 200 and out["served_by"] == "cloud" and out["tensors"][0]["values"] == [0.5]
    assert "predictions" not in out and "top" not in out


def _fail(raw: np.ndarray) -> list[np.ndarray]:
    from agent.errors import ModelError

    raise ModelError("invoke failed: device lost")


@pytest.mark.integration
def test_movenet_through_a_real_agent_finds_the_pose(
    bundles: dict[str, Path], coral_models: Path, trust: Any, hub: Any, make_agent: Any
) -> None:
    """The whole path: the hub's signed archive, the agent's download, self-test and install,
    then its local API over HTTP."""
    env, _, archive = trust.sign_dir(bundles["movenet"])
    pub = hub.publish_bundle(env, archive)
    agent = make_agent("pose").start()
    hub.desire(agent.device, pub)
    hub.report(agent.device, "commit", "ok", pub.ref.digest)
    code, doc = agent.predict_image((coral_models / "squat.bmp").read_bytes())
    assert code == 200 and doc["served_by"] == "cpu" and doc["task"] == "keypoints", doc
    assert "predictions" not in doc and "top" not in doc
    (kp,) = doc["tensors"]
    points = np.asarray(kp["values"]).reshape(17, 3)
    ref = litert(
        bundles["movenet"] / _artifact(bundles["movenet"]),
        request_input(coral_models, CASES["movenet"], bundles["movenet"]),
    )
    np.testing.assert_allclose(points, ref[0].reshape(17, 3), rtol=1e-6, atol=1e-6)
    assert 0.45 < points[:, 2].mean() < 0.6
