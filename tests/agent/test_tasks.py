"""Every kind of model a Coral fleet runs, imported by the compiler and answered by the local API
(the agent's own server and serving path, in this process) in its task's form, held to LiteRT
run directly on the same input and computed here with numpy: a classifier's class scores, a
detector's boxes in pixels of the image sent, a segmenter's pixel counts, MoveNet's keypoints
(and Coral's reference CSV), the embedding and its norm; never a non-classifier's outputs ranked
as class scores; stateful models answer each request without a session from their initial state."""

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
from PIL import Image

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
    def __init__(self, url: str, model: Model, serving: Serving) -> None:
        self.url, self.model, self.serving = url, model, serving

    def post(self, body: bytes, headers: dict[str, str], query: str = "") -> tuple[int, Any]:
        url = f"{self.url}/v1/predict" + (f"?{query}" if query else "")
        req = urllib.request.Request(url, data=body, method="POST", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def image(self, data: bytes, query: str = "", headers: dict[str, str] | None = None) -> tuple[int, Any]:
        b = uuid.uuid4().hex
        body = (
            f'--{b}\r\nContent-Disposition: form-data; name="file"; filename="x.bmp"\r\n\r\n'.encode()
            + data
            + f"\r\n--{b}--\r\n".encode()
        )
        return self.post(body, {"Content-Type": f"multipart/form-data; boundary={b}", **(headers or {})}, query)

    def tensor(self, raw: np.ndarray, query: str = "", headers: dict[str, str] | None = None) -> tuple[int, Any]:
        head = {
            "Content-Type": "application/octet-stream",
            "X-Tensor-Shape": ",".join(str(d) for d in raw.shape),
            "X-Tensor-Dtype": raw.dtype.name,
            **(headers or {}),
        }
        return self.post(raw.tobytes(), head, query)


@contextmanager
def local_api(bundle: Path, cloud: Any = None) -> Iterator[LocalApi]:
    """The agent's local API (agent.localapi over agent.serve) serving ``bundle`` on a free port."""
    model = open_model(bundle)
    serving = Serving(Recorder(), cloud, None, lambda d, w: None)
    serving.swap(model)
    srv = make_server("127.0.0.1", 0, serving, lambda: {"device": "t"})
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield LocalApi(f"http://127.0.0.1:{srv.server_address[1]}", model, serving)
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


def _ask_raw(api: LocalApi, coral: Path, c: Case, bundle: Path, query: str = "") -> tuple[int, Any]:
    if c.tensor:
        return api.tensor(request_input(coral, c, bundle), query)
    return api.image(image_bytes(coral, c), query)


def ask(api: LocalApi, coral: Path, c: Case, bundle: Path, query: str = "") -> dict[str, Any]:
    code, doc = _ask_raw(api, coral, c, bundle, query)
    assert code == 200, doc
    return doc  # type: ignore[no-any-return]


def original_size(coral: Path, c: Case) -> tuple[int, int]:
    with Image.open(coral / c.image) as img:
        return img.size


def held_to_reference(c: Case, doc: dict[str, Any], ref: list[np.ndarray], size: tuple[int, int]) -> None:
    """``doc`` (the answer of ``c``'s model with ``score_threshold=0``) against the LiteRT outputs
    ``ref``, with the answer computed here independently of protocol.answers."""
    w, h = size
    assert doc["task"] == c.task and "predictions" not in doc and "top" not in doc and "tensors" not in doc
    if c.task == "detection":
        boxes, classes, scores, count = ref[0].reshape(-1, 4), ref[1].reshape(-1), ref[2].reshape(-1), ref[3]
        n = int(count.reshape(-1)[0])
        order = sorted(range(n), key=lambda i: (-scores[i], i))
        assert [d["score"] for d in doc["detections"]] == pytest.approx([float(scores[i]) for i in order])
        assert [d["class_id"] for d in doc["detections"]] == [int(classes[i]) + 1 for i in order]  # pbtxt ids
        names = {1: "sedan", 2: "pickup_suv_van", 3: "large_veh_bus"}
        assert all(d["label"] == names.get(d["class_id"], str(d["class_id"])) for d in doc["detections"])
        for d, i in zip(doc["detections"], order, strict=True):
            ymin, xmin, ymax, xmax = np.clip(boxes[i], 0, 1)
            want = {"xmin": xmin * w, "ymin": ymin * h, "xmax": xmax * w, "ymax": ymax * h}
            assert d["box"] == pytest.approx(want, rel=1e-6, abs=1e-4)
        assert doc["image"] == {"width": w, "height": h}
    elif c.task == "segmentation":
        mask = ref[0].reshape(-1)
        counts = np.bincount(mask)
        assert {x["class_id"]: x["pixels"] for x in doc["classes"]} == {i: int(n) for i, n in enumerate(counts) if n}
        assert sum(x["fraction"] for x in doc["classes"]) == pytest.approx(1.0)
    elif c.task == "keypoints":
        pts = ref[0].reshape(17, 3)
        got = np.array([[k["y"] / h, k["x"] / w, k["score"]] for k in doc["keypoints"]])
        np.testing.assert_allclose(got, pts, rtol=1e-5, atol=1e-6)
        assert doc["keypoints"][0]["name"] == "nose" and doc["keypoints"][16]["name"] == "right_ankle"
    elif c.task == "embedding":
        np.testing.assert_allclose(np.asarray(doc["embedding"]), ref[0].reshape(-1), rtol=1e-6, atol=1e-6)
        assert doc["norm"] == pytest.approx(float(np.linalg.norm(ref[0].astype(np.float64))), rel=1e-6)
    else:
        raise AssertionError(f"no reference for {c.task}")


@pytest.mark.parametrize("key", list(CASES))
def test_each_coral_model_answers_through_the_local_api_as_litert_does(
    key: str, bundles: dict[str, Path], coral_models: Path
) -> None:
    c, bundle = CASES[key], bundles[key]
    sig = manifest(bundle).model["signature"]
    assert sig["task"] == c.task
    ref = litert(bundle / _artifact(bundle), request_input(coral_models, c, bundle))
    if c.task == "classification":
        with local_api(bundle) as api:
            doc = ask(api, coral_models, c, bundle)
        scores = np.asarray(doc["predictions"], np.float32)
        assert scores.shape == (1, ref[0].size)  # [N, K], one row: the cloud's shape too
        assert np.abs(scores - ref[0].reshape(1, -1)).max() <= step(bundle / _artifact(bundle)) + 1e-6
        assert doc["top"][0]["index"] == int(ref[0].argmax())
        assert "tensors" not in doc and doc["task"] == "classification"
        return
    with local_api(bundle) as api:
        doc = ask(api, coral_models, c, bundle, "score_threshold=0&raw=true" if c.task == "detection" else "raw=true")
    held_to_reference(c, doc, ref, original_size(coral_models, c))
    # raw=true: every answer output as the model gave it, by name and role
    answer = [t for t in sig["outputs"] if t["role"] != "state"]
    assert [(t["name"], t["role"]) for t in doc["raw"]] == [(t["name"], t["role"]) for t in answer]
    quantized = litert(bundle / _artifact(bundle), request_input(coral_models, c, bundle), False)
    for t, want in zip(doc["raw"], quantized, strict=False):  # state outputs come last in these models
        got = np.asarray(t["values"])
        assert list(got.shape) == t["shape"] == list(want.shape) and t["dtype"] == want.dtype.name
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
    points = np.array([[k["y_normalized"], k["x_normalized"], k["score"]] for k in doc["keypoints"]])
    assert 0.45 < points[:, 2].mean() < 0.6, points[:, 2].mean()
    assert doc["score"] == pytest.approx(points[:, 2].mean())
    # Coral's own expected outputs for this image (resized their way): the same pose, same confidence
    ref = np.loadtxt(coral_models / "movenet_single_pose_lightning_ptq_reference.csv", delimiter=",", skiprows=1)
    assert abs(points[:, 2].mean() - ref[:, 3].mean()) < 0.1
    # keypoint by keypoint (COCO order), where both are confident: measured 0.003-0.034 of the
    # image apart (mean 0.014; Coral resized the image its own way)
    sure = (points[:, 2] > 0.3) & (ref[:, 3] > 0.3)
    assert sure.sum() >= 8, sure
    dist = np.hypot(points[sure, 0] - ref[sure, 5], points[sure, 1] - ref[sure, 4])
    assert dist.max() < 0.05 and dist.mean() < 0.02, dist


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
        one = ask(api, coral_models, traffic, bundles["traffic"], "score_threshold=0")
        assert api.image((coral_models / "traffic_0002.bmp").read_bytes())[0] == 200
        again = ask(api, coral_models, traffic, bundles["traffic"], "score_threshold=0")
    assert one["detections"] == again["detections"] and one["detections"]
    assert one["state"] == again["state"] == "reset"


class ClassScoresCloud:
    """A cloud fallback that answers class scores whatever the model (an old edgefleet-cloud)."""

    def predict(self, req: Any, model_name: str | None) -> dict[str, Any]:
        return {"predictions": [[0.1] * 160], "top": [{"index": 3, "label": "3", "score": 0.9}]}


class TaskCloud:
    """A cloud fallback that answers in the task's own form (what edgefleet-cloud does)."""

    def __init__(self, task: str) -> None:
        self.task = task

    def predict(self, req: Any, model_name: str | None) -> dict[str, Any]:
        return {"task": self.task, "marker": [0.5], "model": {"name": model_name}}


class TensorsCloud:
    """A cloud fallback that answers the neutral tensors form (an older edgefleet-cloud)."""

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
    assert doc["task"] == c.task and set(doc) & {"detections", "classes", "keypoints", "embedding"}
    # the cloud answers instead (the local model fails): class scores for this model are refused...
    with local_api(bundle, ClassScoresCloud()) as api:
        api.model.backend.invoke_all = _fail  # type: ignore[method-assign]
        code, out = _ask_raw(api, coral_models, c, bundle)
    assert code == 503 and "its outputs are not class scores" in out["detail"], out
    # ...so is another form than the local model's...
    with local_api(bundle, TensorsCloud()) as api:
        api.model.backend.invoke_all = _fail  # type: ignore[method-assign]
        code, out = _ask_raw(api, coral_models, c, bundle)
    assert code == 503 and f"answered a tensors answer for {key}, a {c.task} model" in out["detail"], out
    # ...and the task's own form passes through as it came
    with local_api(bundle, TaskCloud(c.task)) as api:
        api.model.backend.invoke_all = _fail  # type: ignore[method-assign]
        code, out = _ask_raw(api, coral_models, c, bundle)
    assert code == 200 and out["served_by"] == "cloud" and out["marker"] == [0.5] and out["task"] == c.task
    assert "predictions" not in out and "top" not in out


def _fail(raw: np.ndarray, state: Any = None) -> list[np.ndarray]:
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
    points = np.array([[k["y_normalized"], k["x_normalized"], k["score"]] for k in doc["keypoints"]])
    ref = litert(
        bundles["movenet"] / _artifact(bundles["movenet"]),
        request_input(coral_models, CASES["movenet"], bundles["movenet"]),
    )
    np.testing.assert_allclose(points, ref[0].reshape(17, 3), rtol=1e-6, atol=1e-6)
    assert 0.45 < points[:, 2].mean() < 0.6


@pytest.mark.integration
def test_a_real_agent_answers_detection_in_pixels_and_keeps_a_session(
    bundles: dict[str, Path], coral_models: Path, trust: Any, hub: Any, make_agent: Any
) -> None:
    """Hub archive -> download, self-test, install -> local API of a real agent process: the
    detector's boxes in pixels with the label map's names, a session carried over two frames,
    an unknown session refused. (deeplab cannot take this path yet: its signed manifest makes a
    desired document of 331680 bytes, over the agent's 262144-byte limit.)"""
    c, bundle = CASES["traffic"], bundles["traffic"]
    env, _, archive = trust.sign_dir(bundle)
    pub = hub.publish_bundle(env, archive)
    agent = make_agent("traffic").start()
    hub.desire(agent.device, pub)
    hub.report(agent.device, "commit", "ok", pub.ref.digest)
    ref = litert(bundle / _artifact(bundle), request_input(coral_models, c, bundle))
    data = image_bytes(coral_models, c)
    start = {"X-Session-Id": "cam-1", "X-Session-Reset": "true"}
    code, doc = agent.predict_image(data, "/v1/predict?score_threshold=0", start)
    assert code == 200 and doc["served_by"] == "cpu" and doc["session"] == {"id": "cam-1", "step": 1}, doc
    held_to_reference(c, doc, ref, original_size(coral_models, c))
    code, doc = agent.predict_image(data, "/v1/predict?score_threshold=0", {"X-Session-Id": "cam-1"})
    assert code == 200 and doc["session"]["step"] == 2, doc
    code, doc = agent.predict_image(data, "/v1/predict", {"X-Session-Id": "cam-2"})
    assert code == 422 and "session 'cam-2' is not held here" in doc["detail"], doc


def test_the_segmentation_mask_png_is_litert_s_class_map(bundles: dict[str, Path], coral_models: Path) -> None:
    import base64
    import io

    c, bundle = CASES["deeplab"], bundles["deeplab"]
    ref = litert(bundle / _artifact(bundle), request_input(coral_models, c, bundle))
    with local_api(bundle) as api:
        doc = ask(api, coral_models, c, bundle, "mask=png")
    assert doc["mask"]["format"] == "png" and doc["mask"]["bit_depth"] == 8
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(doc["mask"]["data"]))))
    assert mask.shape == (513, 513)
    np.testing.assert_array_equal(mask, ref[0].reshape(mask.shape))
