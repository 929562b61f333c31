"""Every Coral model's ONNX twin served by the cloud, held to LiteRT run directly on the same
pixels, within the tolerance its twin was verified to; a model whose twin was withheld is
refused with the reason; a non-classifier's outputs are never ranked as class scores; the
cloud's answer is the agent's (same schema, values within the twin's limits); bad parameters and
sessions are a 400 naming what is wrong."""

from __future__ import annotations

import base64
import io
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from protocol import answers
from protocol.signature import TensorSpec
from tests.coral_imports import CASES, NON_CLASSIFIERS, image_bytes, imported, litert, manifest, pixels, step

from .conftest import Setup, client_for, drop

pytestmark = pytest.mark.slow  # the first run imports ten Coral models (ONNX twins included)


@pytest.fixture(scope="module")
def bundles(coral_models: Path) -> dict[str, Path]:
    return {k: imported(k, coral_models) for k in CASES}


def _cpu(bundle: Path) -> Path:
    roles = {a.role: a.name for a in manifest(bundle).artifacts}
    return bundle / (roles.get("tflite_int8") or roles["tflite_float"])


def _twin(bundle: Path) -> bool:
    return manifest(bundle).artifact("onnx") is not None


def _reference(coral: Path, key: str, bundle: Path) -> list[np.ndarray]:
    pre = manifest(bundle).model["preprocess"]
    px = pixels(coral, CASES[key], pre["height"], pre["width"], pre["channels"])
    return litert(_cpu(bundle), px)


@pytest.fixture(scope="module")
def served(bundles: dict[str, Path], trust: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("cloud-tasks")
    setup = Setup(root / "bundles", root / "root.json")
    setup.bundles.mkdir()
    setup.root.write_bytes(trust.root_bytes)
    files = {key: drop(setup.bundles, trust.sign_dir(b)[2]) for key, b in bundles.items()}
    with client_for(setup, trust) as client:
        yield client, files


def _image(
    client: Any, key: str, data: bytes, path: str = "/predict", query: str = "", headers: dict[str, str] | None = None
) -> Any:
    url = f"{path}?model={key}" if path == "/predict" else path
    if query:
        url += ("&" if "?" in url else "?") + query
    b = uuid.uuid4().hex
    body = f'--{b}\r\nContent-Disposition: form-data; name="file"; filename="x.bmp"\r\n\r\n'.encode() + data
    body += f"\r\n--{b}--\r\n".encode()
    head = {"content-type": f"multipart/form-data; boundary={b}", **(headers or {})}
    return client.post(url, content=body, headers=head)


def agreement(key: str, got: list[np.ndarray], ref: list[np.ndarray], step_size: float) -> dict[str, float]:
    """The figures the twin's parity was judged by (compiler.parity), on this one input."""
    task = CASES[key].task
    a, b = got[0].astype(np.float64).reshape(-1), ref[0].astype(np.float64).reshape(-1)
    if task == "segmentation":
        return {"pixel_agreement": float((a == b).mean())}
    if task == "keypoints":
        pa, pb = a.reshape(-1, 3), b.reshape(-1, 3)
        return {
            "keypoint_distance_mean": float(np.linalg.norm(pa[:, :2] - pb[:, :2], axis=1).mean()),
            "score_mean_diff": float(abs(pa[:, 2].mean() - pb[:, 2].mean())),
        }
    figures = {"max_step_diff": float(np.abs(a - b).max() / step_size) if step_size else float(np.abs(a - b).max())}
    figures["cosine"] = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    if task == "classification":
        figures["top1_same"] = float(a.argmax() == b.argmax())
    return figures


@pytest.mark.parametrize("key", list(CASES))
def test_each_coral_model_is_answered_by_its_twin_as_litert_does_or_refused_with_the_reason(
    key: str, bundles: dict[str, Path], served: Any, coral_models: Path
) -> None:
    client, files = served
    bundle, c = bundles[key], CASES[key]
    if not _twin(bundle):
        why = manifest(bundle).model["twin"]["reason"]
        r = _image(client, key, image_bytes(coral_models, c))
        assert r.status_code == 404, r.text
        assert r.json()["detail"] == (
            f"model {key!r} is not served: bundle {key} 1.0.0 ({files[key].name}) has no ONNX twin: "
            f"the compiler withheld it: {why}"
        )
        return
    r = _image(client, key, image_bytes(coral_models, c), query="raw=true")
    assert r.status_code == 200, r.text
    doc = r.json()
    ref = _reference(coral_models, key, bundle)
    if c.task == "classification":
        got = [np.asarray(doc["predictions"], np.float32)]
        assert got[0].shape == (1, ref[0].size) and "tensors" not in doc
    else:
        assert "predictions" not in doc and "top" not in doc and doc["task"] == c.task and "tensors" not in doc
        outs = manifest(bundle).model["signature"]["outputs"]
        specs = [TensorSpec.from_dict(t, "t") for t in outs if t["role"] != "state"]
        got = [
            answers.dequantize(sp, np.asarray(t["values"], t["dtype"])) for sp, t in zip(specs, doc["raw"], strict=True)
        ]
        assert [t["shape"] for t in doc["raw"]] == [list(v.shape) for v in ref[: len(got)]]
    fig = agreement(key, got, ref, step(_cpu(bundle)))
    twin = manifest(bundle).model["twin"]
    if c.task == "classification":
        assert fig["top1_same"] == 1.0 and fig["max_step_diff"] <= twin["limits"]["max_step_diff"], fig
    elif c.task == "embedding":
        assert fig["cosine"] >= twin["limits"]["min_cosine"] and fig["max_step_diff"] <= 32, fig
    elif c.task == "segmentation":
        assert fig["pixel_agreement"] >= twin["limits"]["min_pixel_agreement"], fig
    elif c.task == "keypoints":
        assert fig["keypoint_distance_mean"] <= twin["limits"]["max_keypoint_distance"], fig
        assert fig["score_mean_diff"] < 0.05, fig


@pytest.mark.parametrize("key", [k for k in NON_CLASSIFIERS])
def test_no_output_of_a_non_classifier_is_ever_ranked_as_class_scores(
    key: str, bundles: dict[str, Path], served: Any, coral_models: Path
) -> None:
    """The defect: non-classifier outputs answered as ``predictions`` and ranked in ``top``. On
    every predict route: the seed's /predict, the image route, the tensor route."""
    client, _ = served
    bundle, c = bundles[key], CASES[key]
    if not _twin(bundle):
        pytest.skip(f"{key}: the cloud does not serve it (twin withheld)")
    pre = manifest(bundle).model["preprocess"]
    px = pixels(coral_models, c, pre["height"], pre["width"], pre["channels"])
    docs = [
        _image(client, key, image_bytes(coral_models, c)),
        _image(client, key, image_bytes(coral_models, c), f"/v1/models/{key}/predict/image"),
        client.post(
            f"/v1/models/{key}/predict",
            content=px.tobytes(),
            headers={"content-type": "application/octet-stream", "x-tensor-shape": ",".join(map(str, px.shape))},
        ),
    ]
    for r in docs:
        assert r.status_code == 200, r.text
        doc = r.json()
        assert "predictions" not in doc and "top" not in doc and "outputs" not in doc and "tensors" not in doc
        assert doc["task"] == c.task and doc["model"]["name"] == key
        assert set(doc) & {"detections", "classes", "keypoints", "embedding"}
    assert docs[0].json() == docs[1].json()


@pytest.mark.parametrize("key", ["movenet", "mnv2", "deeplab", "embedding"])
def test_the_agent_and_the_cloud_give_the_same_answer(
    key: str, bundles: dict[str, Path], served: Any, coral_models: Path
) -> None:
    """One builder (protocol.answers) and the same parameters: the same keys, names and labels
    from either, values within the limits the twin was verified to, so an app can move between
    the device and the cloud by changing only the base URL."""
    from agent.serve import Serving, parse_request
    from agent.telemetry import Recorder
    from tests.agent.test_tasks import open_model

    client, _ = served
    c = CASES[key]
    data = image_bytes(coral_models, c)
    query = {"classification": "top_k=3", "segmentation": "mask=png"}.get(c.task, "")
    cloud = _image(client, key, data, query=query).json()
    serving = Serving(Recorder(), None, None, lambda d, w: None)
    serving.swap(open_model(bundles[key]))
    local = serving.predict(parse_request("image/bmp", data, query=query))
    assert set(local) - {"served_by", "bundle", "latency_ms"} == set(cloud) - {"model"}
    assert local["task"] == cloud["task"] == c.task
    limits = manifest(bundles[key]).model["twin"]["limits"]
    if c.task == "classification":
        assert [t["index"] for t in local["top"]] == [t["index"] for t in cloud["top"]]
        assert [t["label"] for t in local["top"]] == [t["label"] for t in cloud["top"]] and len(local["top"]) == 3
        assert np.shape(local["predictions"]) == np.shape(cloud["predictions"]) == (1, 1001)  # the seed's [N, K]
    elif c.task == "keypoints":
        assert [k["name"] for k in local["keypoints"]] == [k["name"] for k in cloud["keypoints"]]
        pa = np.array([[k["y_normalized"], k["x_normalized"]] for k in local["keypoints"]])
        pb = np.array([[k["y_normalized"], k["x_normalized"]] for k in cloud["keypoints"]])
        assert np.linalg.norm(pa - pb, axis=1).mean() <= limits["max_keypoint_distance"]
        assert local["image"] == cloud["image"]
    elif c.task == "segmentation":
        fa = {x["label"]: x["fraction"] for x in local["classes"]}
        fb = {x["label"]: x["fraction"] for x in cloud["classes"]}
        disagree = 1 - limits["min_pixel_agreement"]
        assert all(abs(fa.get(k, 0) - fb.get(k, 0)) <= disagree for k in fa.keys() | fb.keys()), (fa, fb)
        ma = np.asarray(Image.open(io.BytesIO(base64.b64decode(local["mask"]["data"]))))
        mb = np.asarray(Image.open(io.BytesIO(base64.b64decode(cloud["mask"]["data"]))))
        assert (ma == mb).mean() >= limits["min_pixel_agreement"]
    elif c.task == "embedding":
        a, b = np.asarray(local["embedding"]), np.asarray(cloud["embedding"])
        assert float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) >= limits["min_cosine"]
        assert abs(local["norm"] - cloud["norm"]) <= 0.01 * local["norm"]


@pytest.mark.parametrize(
    "key, query, headers, message",
    [
        ("deeplab", "score_threshold=0.3", None, "bad parameter score_threshold: 0.3: applies to detection"),
        ("movenet", "top_k=3", None, "bad parameter top_k: 3: applies to classification, this model is keypoints"),
        ("deeplab", "mask=gif", None, "bad parameter mask: 'gif': the one mask format is 'png'"),
        ("mnv2", "top_k=1002", None, "bad parameter top_k: 1002: must be in 1..1001"),
        ("embedding", "treshold=1", None, "bad parameter treshold: '1': is not a parameter of predict"),
        ("movenet", "", {"X-Session-Id": "s1"}, "bad X-Session-Id header: the cloud fallback keeps no state"),
    ],
)
def test_a_bad_parameter_or_a_session_is_a_400_that_names_it(
    key: str, query: str, headers: dict[str, str] | None, message: str, served: Any, coral_models: Path
) -> None:
    client, _ = served
    r = _image(client, key, image_bytes(coral_models, CASES[key]), query=query, headers=headers)
    assert r.status_code == 400 and r.json()["detail"].startswith(message), r.text


def test_a_file_that_is_not_an_image_is_a_400_for_every_task(served: Any) -> None:
    client, _ = served
    for key in ("movenet", "deeplab", "embedding", "mnv2"):
        r = _image(client, key, b"GIF89a not really")
        assert r.status_code == 400 and "not an image" in r.json()["detail"], r.text
