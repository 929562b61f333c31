"""The HTTP contract: the seed's /predict, the tensor API, and every kind of bad input -> 4xx."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .conftest import (
    DECODER_CRASHERS,
    IMAGE_8x8,
    Setup,
    Tiny,
    client_for,
    decoder_crasher,
    drop,
    make_archive,
    png,
    png_declaring,
    portal_of,
    service_of,
    tiny_model,
)


def gradient() -> np.ndarray:
    return (np.arange(64).reshape(8, 8) * 4).astype(np.uint8)


def test_predict_answers_the_seed_contract_with_the_exact_model_output(served: Any, tiny: Tiny) -> None:
    px = gradient()
    r = served.post("/predict", files={"file": ("digit.png", png(px), "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    expected = tiny.expected(px[None, :, :, None] / 255.0)
    assert np.allclose(np.array(body["predictions"]), expected, atol=1e-5)
    assert body["model"]["name"] == "tiny" and body["model"]["version"] == "1"
    assert len(body["model"]["digest"]) == 64
    best = int(expected[0].argmax())
    assert body["top"][0] == {"index": best, "label": f"class{best}", "score": body["top"][0]["score"]}
    assert [t["score"] for t in body["top"]] == sorted((t["score"] for t in body["top"]), reverse=True)


def test_top_labels_follow_an_ids_labels_file_on_every_request(setup: Setup, trust: Any, tiny: Tiny) -> None:
    # pycoral's "id name" form with class 3 missing: the gap is named by its id, and the names
    # (built once per model, cloud/spec.py class_names) are the same on the second request
    labels = [f"{i}  c{i}" for i in range(10) if i != 3]
    drop(setup.bundles, make_archive(trust.targets_key, "tiny", "1", tiny.onnx, labels=labels))
    with client_for(setup, trust) as client:
        for _ in range(2):
            r = client.post("/predict?top_k=10", files={"file": ("digit.png", png(gradient()), "image/png")})
            assert r.status_code == 200, r.text
            top = r.json()["top"]
            assert sorted(t["index"] for t in top) == list(range(10))
            assert all(t["label"] == ("3" if t["index"] == 3 else f"c{t['index']}") for t in top)


def _structure(doc: Any) -> Any:
    """What an app's parser sees of a JSON document: its keys, nesting and list lengths, every
    value replaced by its kind."""
    if isinstance(doc, dict):
        return {k: _structure(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_structure(v) for v in doc]
    return "number" if isinstance(doc, (int, float)) and not isinstance(doc, bool) else type(doc).__name__


def test_classifier_answers_have_one_shape_on_device_and_cloud(served: Any, tiny: Tiny, tmp_path: Path) -> None:
    """The same classifier through the agent's serving code (the bytes its local API sends) and
    the cloud's: the same keys, nesting and lengths, ``predictions`` ``[N, K]`` with one row from
    both (the agent's used to be flat), the same scores and ``top``; only the who-answered fields
    differ, so an app moves between the device and the cloud by changing the base URL."""
    from agent.runtime import Model
    from agent.serve import Serving, parse_request
    from agent.telemetry import Recorder
    from protocol.messages import BundleInfo

    (tmp_path / "model.onnx").write_bytes(tiny.onnx)
    (tmp_path / "labels.txt").write_text("".join(f"class{i}\n" for i in range(10)))
    spec = {"task": "classification", "num_classes": 10, "preprocess": IMAGE_8x8, "labels": "labels.txt"}
    roles = {"onnx": "model.onnx", "labels": "labels.txt"}
    model = Model.open(tmp_path, "model.onnx", "onnx", BundleInfo("0" * 64, "tiny", "1"), spec, roles)
    serving = Serving(Recorder(), None, None, lambda d, w: None)
    serving.swap(model)
    data = png(gradient())
    try:
        for query in ("", "top_k=3"):
            answer = serving.answer(parse_request("image/png", data, query=query))
            device = json.loads(answer.body())
            r = served.post(f"/predict?{query}", files={"file": ("x.png", data, "image/png")})
            assert r.status_code == 200, r.text
            cloud = r.json()
            assert device.pop("bundle")["name"] == cloud.pop("model")["name"] == "tiny"  # who answered: differs
            assert device.pop("served_by") == "onnx" and isinstance(device.pop("latency_ms"), float)
            assert _structure(device) == _structure(cloud), (device, cloud)
            assert np.shape(device["predictions"]) == np.shape(cloud["predictions"]) == (1, 10)
            assert np.allclose(device["predictions"], cloud["predictions"], atol=1e-6)
            assert [t["index"] for t in device["top"]] == [t["index"] for t in cloud["top"]]
            assert len(cloud["top"]) == (3 if query else 5)
    finally:
        model.close()


def test_larger_colour_jpeg_is_converted_and_resized_like_the_spec_says(served: Any, tiny: Tiny) -> None:
    rgb = np.zeros((32, 48, 3), dtype=np.uint8)
    rgb[:, :24] = (200, 10, 10)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=95)
    r = served.post("/predict", files={"file": ("x.jpg", buf.getvalue(), "image/jpeg")})
    assert r.status_code == 200, r.text
    img = Image.open(io.BytesIO(buf.getvalue())).convert("L").resize((8, 8))
    x = np.asarray(img, dtype=np.float32)[None, :, :, None] / 255.0
    assert np.allclose(np.array(r.json()["predictions"]), tiny.expected(x), atol=1e-5)


def test_not_an_image_is_a_400_and_the_service_keeps_serving(served: Any) -> None:
    r = served.post("/predict", files={"file": ("x.png", b"definitely not a png", "image/png")})
    assert r.status_code == 400
    assert r.json()["code"] == "bad_input" and "not an image" in r.json()["detail"]
    truncated = png(gradient())[:40]
    r = served.post("/predict", files={"file": ("t.png", truncated, "image/png")})
    assert r.status_code == 400, r.text
    r = served.post("/predict", files={"file": ("ok.png", png(gradient()), "image/png")})
    assert r.status_code == 200


def test_missing_file_field_or_wrong_encoding_is_a_400_naming_the_field(served: Any) -> None:
    r = served.post("/predict", data={"image": "x"})
    assert r.status_code == 400 and "file" in r.json()["detail"]
    r = served.post("/predict", content=b"raw", headers={"content-type": "image/png"})
    assert r.status_code == 400 and "multipart" in r.json()["detail"]


def test_json_tensor_predict_returns_every_row(served: Any, tiny: Tiny) -> None:
    x = np.random.default_rng(1).random((3, 8, 8, 1)).astype(np.float32)
    r = served.post("/v1/models/tiny/predict", json={"inputs": x.tolist()})
    assert r.status_code == 200, r.text
    out = np.array(r.json()["outputs"]["scores"])
    assert out.shape == (3, 10)
    assert np.allclose(out, tiny.expected(x), atol=1e-5)


def test_binary_tensor_round_trip_with_shape_and_dtype_headers(served: Any, tiny: Tiny) -> None:
    x = np.random.default_rng(2).random((2, 8, 8, 1)).astype("<f4")
    r = served.post(
        "/v1/models/tiny/predict",
        content=x.tobytes(),
        headers={
            "content-type": "application/octet-stream",
            "x-tensor-shape": "2,8,8,1",
            "x-tensor-dtype": "float32",
            "accept": "application/octet-stream",
        },
    )
    assert r.status_code == 200, r.text
    assert r.headers["x-tensor-shape"] == "2,10" and r.headers["x-tensor-dtype"] == "float32"
    assert r.headers["x-model-name"] == "tiny"
    out = np.frombuffer(r.content, dtype="<f4").reshape(2, 10)
    assert np.allclose(out, tiny.expected(x), atol=1e-5)


def test_wrong_shape_dtype_or_length_is_a_400_naming_the_problem(served: Any) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"json": {"inputs": np.zeros((1, 8, 8)).tolist()}}, "3 dims"),
        ({"json": {"inputs": np.zeros((1, 8, 7, 1)).tolist()}}, "does not fit"),
        ({"json": {"inputs": [[1, 2], [3]]}}, "rectangular"),
        ({"json": {"inputs": [["a"]]}}, "rectangular"),
        ({"json": {"values": []}}, '"inputs"'),
        ({"content": b'{"inputs": [NaN]}', "headers": {"content-type": "application/json"}}, "finite"),
        ({"content": b"{nope", "headers": {"content-type": "application/json"}}, "not valid JSON"),
        ({"json": {"inputs": np.full((1, 8, 8, 1), 1e39).tolist()}}, "float32"),
        (
            {
                "content": np.full((1, 8, 8, 1), np.inf, "<f4").tobytes(),
                "headers": {"content-type": "application/octet-stream", "x-tensor-shape": "1,8,8,1"},
            },
            "infinite",
        ),
        (
            {
                "content": np.zeros((1, 8, 8, 1), "<f8").tobytes(),
                "headers": {
                    "content-type": "application/octet-stream",
                    "x-tensor-shape": "1,8,8,1",
                    "x-tensor-dtype": "float64",
                },
            },
            "takes float32",
        ),
        (
            {
                "content": b"\0" * 10,
                "headers": {"content-type": "application/octet-stream", "x-tensor-shape": "1,8,8,1"},
            },
            "needs 256",
        ),
        ({"content": b"\0" * 256, "headers": {"content-type": "application/octet-stream"}}, "X-Tensor-Shape"),
        (
            {
                "content": b"\0" * 256,
                "headers": {"content-type": "application/octet-stream", "x-tensor-shape": "one,8"},
            },
            "integers",
        ),
    ]
    for kwargs, needle in cases:
        r = served.post("/v1/models/tiny/predict", **kwargs)
        assert r.status_code == 400, (kwargs, r.text)
        assert needle in r.json()["detail"], (needle, r.json())
    r = served.post("/v1/models/tiny/predict", content=b"x", headers={"content-type": "text/plain"})
    assert r.status_code == 415 and "application/json" in r.json()["detail"]
    assert served.get("/healthz").status_code == 200


def test_unknown_model_or_version_is_a_404_listing_what_is_served(served: Any) -> None:
    r = served.post("/v1/models/nope/predict", json={"inputs": []})
    assert r.status_code == 404 and "'tiny'" in r.json()["detail"]
    r = served.post("/v1/models/tiny/versions/9/predict", json={"inputs": []})
    assert r.status_code == 404 and "['1']" in r.json()["detail"]
    r = served.post("/predict?model=nope", files={"file": ("a.png", png(gradient()), "image/png")})
    assert r.status_code == 404
    assert served.get("/v2/unknown").status_code == 404


def test_oversized_body_is_a_413_before_anything_parses_it(setup: Setup, trust: Any, tiny: Tiny) -> None:
    drop(setup.bundles, make_archive(trust.targets_key, "tiny", "1", tiny.onnx))
    with client_for(setup, trust, max_body_bytes=3000) as client:
        big = np.zeros((4, 8, 8, 1), np.float32)  # 1 KiB as bytes
        r = client.post("/v1/models/tiny/predict", json={"inputs": np.zeros((8, 8, 8, 1)).tolist()})
        assert r.status_code == 413 and "3000" in r.json()["detail"]
        r = client.post("/predict", files={"file": ("a.png", b"\0" * 5000, "image/png")})
        assert r.status_code == 413
        r = client.post(
            "/v1/models/tiny/predict",
            content=big.tobytes(),
            headers={"content-type": "application/octet-stream", "x-tensor-shape": "4,8,8,1"},
        )
        assert r.status_code == 200


def test_image_with_too_many_pixels_is_refused_from_its_header(served: Any) -> None:
    huge = Image.new("L", (5000, 4000))  # 20 MP > 16 MP limit; compresses to a few KB
    buf = io.BytesIO()
    huge.save(buf, format="PNG")
    r = served.post("/predict", files={"file": ("big.png", buf.getvalue(), "image/png")})
    assert r.status_code == 413 and "20000000" in r.json()["detail"]


def test_tensor_model_refuses_images_and_image_model_serves_tensors(setup: Setup, trust: Any) -> None:
    model = tiny_model(("N", 4))
    drop(setup.bundles, make_archive(trust.targets_key, "vec", "1", model.onnx, preprocess={"kind": "tensor"}))
    with client_for(setup, trust) as client:
        r = client.post("/predict", files={"file": ("a.png", png(gradient()), "image/png")})
        assert r.status_code == 400 and "takes tensors" in r.json()["detail"]
        r = client.post("/v1/models/vec/predict", json={"inputs": [[1, 2, 3, 4]]})
        assert r.status_code == 200
        assert np.allclose(r.json()["outputs"]["scores"], model.expected(np.array([[1, 2, 3, 4.0]])), atol=1e-5)


def test_nchw_rgb_model_gets_channels_first_input(setup: Setup, trust: Any) -> None:
    model = tiny_model(("N", 3, 8, 8))
    pre = {"kind": "image", "height": 8, "width": 8, "channels": 3, "scale": 1 / 255.0, "offset": -0.5}
    drop(setup.bundles, make_archive(trust.targets_key, "rgb", "1", model.onnx, preprocess=pre))
    rgb = np.random.default_rng(3).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    with client_for(setup, trust) as client:
        r = client.post("/predict", files={"file": ("a.png", png(rgb), "image/png")})
        assert r.status_code == 200, r.text
        x = (rgb.astype(np.float32) / 255.0 - 0.5).transpose(2, 0, 1)[None]
        assert np.allclose(r.json()["predictions"], model.expected(x), atol=1e-5)
        info = client.get("/v1/models").json()["models"][0]
        assert info["image"]["layout"] == "nchw"


def test_several_models_without_a_default_refuse_predict_naming_the_models_and_the_setting(
    setup: Setup, trust: Any, tiny: Tiny
) -> None:
    drop(setup.bundles, make_archive(trust.targets_key, "a", "1", tiny.onnx))
    drop(setup.bundles, make_archive(trust.targets_key, "b", "1", tiny_model(seed=5).onnx))
    with client_for(setup, trust) as client:
        img = {"file": ("a.png", png(gradient()), "image/png")}
        r = client.post("/predict", files=img)
        detail = r.json()["detail"]
        assert r.status_code == 400 and "?model=" in detail, detail
        assert "(a, b)" in detail and "--default-model" in detail and "EDGEFLEET_CLOUD_DEFAULT_MODEL" in detail
        r = client.post("/predict?model=b", files=img)
        assert r.status_code == 200 and r.json()["model"]["name"] == "b"


def test_a_second_unrelated_model_leaves_the_seed_predict_on_the_default_model(
    setup: Setup, trust: Any, tiny: Tiny
) -> None:
    img = {"file": ("a.png", png(gradient()), "image/png")}
    drop(setup.bundles, make_archive(trust.targets_key, "a", "1", tiny.onnx))
    with client_for(setup, trust, default_model="a") as client:
        assert client.post("/predict", files=img).json()["model"]["name"] == "a"
    drop(setup.bundles, make_archive(trust.targets_key, "b", "1", tiny_model(seed=5).onnx))
    with client_for(setup, trust, default_model="a") as client:
        r = client.post("/predict", files=img)
        assert r.status_code == 200 and r.json()["model"]["name"] == "a"
        assert client.post("/predict?model=b", files=img).json()["model"]["name"] == "b"


def test_a_default_model_that_is_not_served_is_a_404_naming_it_and_the_served_models(
    setup: Setup, trust: Any, tiny: Tiny
) -> None:
    drop(setup.bundles, make_archive(trust.targets_key, "a", "1", tiny.onnx))
    drop(setup.bundles, make_archive(trust.targets_key, "b", "1", tiny_model(seed=5).onnx))
    with client_for(setup, trust, default_model="digits") as client:
        r = client.post("/predict", files={"file": ("a.png", png(gradient()), "image/png")})
        detail = r.json()["detail"]
        assert r.status_code == 404 and "'digits'" in detail and "--default-model" in detail, detail
        assert "a, b" in detail


def test_health_is_always_up_and_ready_needs_a_verified_model(setup: Setup, trust: Any, tiny: Tiny) -> None:
    with client_for(setup, trust) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        r = client.get("/readyz")
        assert r.status_code == 503 and "no verified model" in r.json()["detail"]
        r = client.post("/predict", files={"file": ("a.png", png(gradient()), "image/png")})
        assert r.status_code == 503
    drop(setup.bundles, make_archive(trust.targets_key, "tiny", "1", tiny.onnx))
    with client_for(setup, trust) as client:
        assert client.get("/readyz").status_code == 200


def test_api_keys_are_required_per_key_and_counted_by_slot(setup: Setup, trust: Any, tiny: Tiny) -> None:
    drop(setup.bundles, make_archive(trust.targets_key, "tiny", "1", tiny.onnx))
    keys = ["alice:" + "a" * 20, "bob:" + "b" * 20]
    with client_for(setup, trust, api_keys=keys) as client:
        x = {"inputs": np.zeros((1, 8, 8, 1)).tolist()}
        r = client.post("/v1/models/tiny/predict", json=x)
        assert r.status_code == 401 and "X-API-Key" in r.json()["detail"]
        r = client.post("/v1/models/tiny/predict", json=x, headers={"x-api-key": "c" * 20})
        assert r.status_code == 401 and "not recognised" in r.json()["detail"]
        assert client.post("/v1/models/tiny/predict", json=x, headers={"x-api-key": "a" * 20}).status_code == 200
        r = client.post("/v1/models/tiny/predict", json=x, headers={"authorization": "Bearer " + "b" * 20})
        assert r.status_code == 200
        assert client.get("/v1/models").status_code == 401
        for open_path in ("/healthz", "/readyz", "/metrics"):
            assert client.get(open_path).status_code == 200
        metrics = client.get("/metrics").text
        assert 'edgefleet_cloud_key_requests_total{slot="1"} 1.0' in metrics
        assert 'edgefleet_cloud_key_requests_total{slot="2"} 1.0' in metrics


def test_an_unauthenticated_metrics_scrape_learns_neither_key_names_nor_secrets(
    setup: Setup, trust: Any, tiny: Tiny
) -> None:
    drop(setup.bundles, make_archive(trust.targets_key, "tiny", "1", tiny.onnx))
    keys = {"acme-payments-prod": "p" * 24, "partner_bigcorp": "q" * 24}
    with client_for(setup, trust, api_keys=[f"{n}:{s}" for n, s in keys.items()]) as client:
        x = {"inputs": np.zeros((1, 8, 8, 1)).tolist()}
        for secret in keys.values():
            assert client.post("/v1/models/tiny/predict", json=x, headers={"x-api-key": secret}).status_code == 200
        client.post("/v1/models/tiny/predict", json=x, headers={"x-api-key": "r" * 24})  # a wrong key: 401
        r = client.get("/metrics")  # no key: /metrics is open to anyone who can reach the port
        assert r.status_code == 200
        for name, secret in keys.items():
            assert name not in r.text and secret not in r.text
        assert "acme" not in r.text and "bigcorp" not in r.text
        assert 'edgefleet_cloud_key_requests_total{slot="1"} 1.0' in r.text


def test_metrics_show_latency_batches_queue_counts_and_errors(served: Any) -> None:
    served.post("/predict", files={"file": ("a.png", png(gradient()), "image/png")})
    served.post("/v1/models/tiny/predict", json={"inputs": np.zeros((3, 8, 8, 1)).tolist()})
    served.post("/predict", files={"file": ("a.png", b"junk", "image/png")})
    text = served.get("/metrics").text
    assert 'edgefleet_cloud_request_seconds_count{route="/predict",status="200"} 1.0' in text
    assert 'edgefleet_cloud_request_seconds_count{route="/predict",status="400"} 1.0' in text
    assert 'edgefleet_cloud_batch_size_sum{model="tiny"} 4.0' in text
    assert 'edgefleet_cloud_queue_depth{model="tiny",version="1"} 0.0' in text
    assert 'edgefleet_cloud_predictions_total{model="tiny",version="1"} 4.0' in text
    assert 'edgefleet_cloud_errors_total{code="bad_input"} 1.0' in text
    assert "edgefleet_cloud_models_loaded 1.0" in text


def test_one_key_cannot_take_all_the_capacity(setup: Setup, trust: Any, tiny: Tiny) -> None:
    import threading

    drop(setup.bundles, make_archive(trust.targets_key, "tiny", "1", tiny.onnx))
    alice, bob = {"x-api-key": "a" * 20}, {"x-api-key": "b" * 20}
    gate, started = threading.Event(), threading.Event()

    def held() -> np.ndarray:
        started.set()
        gate.wait(30)
        return np.zeros((1, 8, 8, 1), np.float32)

    body = {"inputs": np.zeros((1, 8, 8, 1)).tolist()}
    with client_for(
        setup, trust, api_keys=["alice:" + "a" * 20, "bob:" + "b" * 20], per_key_inflight=1, workers=1
    ) as client:
        batcher = service_of(client).catalog.default("tiny").batcher
        blocker = portal_of(client).start_task_soon(batcher.submit_lazy, held, (1, 8, 8, 1))
        assert started.wait(30)
        answers: dict[str, int] = {}
        first = threading.Thread(
            target=lambda: answers.__setitem__(
                "alice1", client.post("/v1/models/tiny/predict", json=body, headers=alice).status_code
            )
        )
        first.start()
        while batcher.depth < 1:  # alice's first request is queued behind the blocker
            gate.wait(0.01)
        r = client.post("/v1/models/tiny/predict", json=body, headers=alice)
        assert r.status_code == 429 and "'alice' already has 1 requests in flight" in r.json()["detail"]
        other = threading.Thread(
            target=lambda: answers.__setitem__(
                "bob", client.post("/v1/models/tiny/predict", json=body, headers=bob).status_code
            )
        )
        other.start()
        while batcher.depth < 2:  # bob is admitted and queued
            gate.wait(0.01)
        gate.set()
        first.join(30)
        other.join(30)
        blocker.result(30)
        assert answers == {"alice1": 200, "bob": 200}
        assert client.post("/v1/models/tiny/predict", json=body, headers=alice).status_code == 200


def test_integer_input_models_get_raw_or_quantized_pixels(setup: Setup, trust: Any) -> None:
    from onnx import TensorProto

    u8 = tiny_model(("N", 8, 8, 1), dtype=TensorProto.UINT8, seed=11)
    i8 = tiny_model(("N", 8, 8, 1), dtype=TensorProto.INT8, seed=12)
    pre = dict(IMAGE_8x8, scale=1 / 127.5, offset=-1.0)
    drop(setup.bundles, make_archive(trust.targets_key, "raw", "1", u8.onnx, preprocess=pre))
    drop(
        setup.bundles,
        make_archive(
            trust.targets_key,
            "quant",
            "1",
            i8.onnx,
            preprocess=dict(pre, input_quantization={"scale": 1 / 128, "zero_point": 0}),
        ),
    )
    drop(setup.bundles, make_archive(trust.targets_key, "guess", "1", i8.onnx, preprocess=pre))
    px = gradient()
    with client_for(setup, trust) as client:
        refused = client.get("/v1/models").json()["refused"]
        assert [r["reason"] for r in refused] == ["unsupported_runtime"] and "int8" in refused[0]["detail"]
        img = {"file": ("a.png", png(px), "image/png")}
        r = client.post("/predict?model=raw", files=img)
        assert r.status_code == 200, r.text
        assert np.allclose(r.json()["predictions"], u8.expected(px[None, :, :, None].astype(float)), atol=1e-5)
        r = client.post("/predict?model=quant", files=img)
        q = np.clip(np.rint((px / 127.5 - 1.0) * 128), -128, 127)[None, :, :, None]
        assert np.allclose(r.json()["predictions"], i8.expected(q), atol=1e-5)
        x = np.full((1, 8, 8, 1), 7, np.uint8)
        r = client.post(
            "/v1/models/raw/predict",
            content=x.tobytes(),
            headers={
                "content-type": "application/octet-stream",
                "x-tensor-shape": "1,8,8,1",
                "x-tensor-dtype": "uint8",
            },
        )
        assert np.allclose(r.json()["outputs"]["scores"], u8.expected(x.astype(float)), atol=1e-5)


def test_100000_nested_lists_are_a_400_naming_the_nesting_not_a_server_error(served: Any) -> None:
    # the standard library's parser recursed once per '[' and died with RecursionError (500)
    for depth, needle in (
        (100_000, "nested deeper than 1024 levels"),
        (1000, "nested 1000 deep"),
        (65, "nested 65 deep"),
    ):
        body = b'{"inputs": ' + b"[" * depth + b"]" * depth + b"}"
        r = served.post("/v1/models/tiny/predict", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400, (depth, r.text)
        assert needle in r.json()["detail"], (depth, r.json())
    assert served.post("/v1/models/tiny/predict", json={"inputs": np.zeros((1, 8, 8, 1)).tolist()}).status_code == 200


def test_nan_infinity_and_1e999_in_a_json_body_are_refused_by_name(served: Any) -> None:
    row = np.zeros((1, 8, 8, 1)).tolist()
    for token in ("NaN", "Infinity", "-Infinity", "1e999", "-1e999"):
        text = json.dumps({"inputs": row}).replace("0.0", token, 1)
        for ctype in ("application/json", "Application/JSON; charset=UTF-8"):
            r = served.post("/v1/models/tiny/predict", content=text.encode(), headers={"content-type": ctype})
            assert r.status_code == 400, (token, ctype, r.text)
            assert f"{token} at char" in r.json()["detail"] and "not a finite number" in r.json()["detail"]


def test_image_bombs_and_decoder_crashing_files_are_4xx_and_the_service_keeps_serving(served: Any) -> None:
    for route in ("/predict", "/v1/models/tiny/predict/image"):
        r = served.post(route, files={"file": ("bomb.png", png_declaring(30000, 30000), "image/png")})
        assert r.status_code == 413, r.text
        assert r.json() == {"detail": "bad image: 900000000 exceeds the limit of 16000000", "code": "too_large"}
        for name in DECODER_CRASHERS:
            r = served.post(route, files={"file": (name, decoder_crasher(name), "image/png")})
            assert r.status_code == 400, (name, r.text)
            assert r.json()["code"] == "bad_input", r.json()
    assert served.post("/predict", files={"file": ("ok.png", png(gradient()), "image/png")}).status_code == 200


def test_a_body_over_the_limit_is_a_413_whatever_content_type_or_method_it_claims(
    setup: Setup, trust: Any, tiny: Tiny
) -> None:
    drop(setup.bundles, make_archive(trust.targets_key, "tiny", "1", tiny.onnx))
    over = b'{"inputs": [' + b"0," * 2000 + b"0]}"  # 4 KB of JSON against a 3000-byte limit
    ctypes = (
        "application/json",
        "Application/JSON",
        "application/json; charset=utf-8",
        "application/x+json",
        "APPLICATION/OCTET-STREAM",
        "multipart/form-data; boundary=x",
        "text/plain",
        None,
    )
    with client_for(setup, trust, max_body_bytes=3000) as client:
        for method in ("POST", "PUT", "PATCH", "DELETE", "GET"):
            for ctype in ctypes:
                headers = {"content-type": ctype} if ctype else {}
                for path in ("/v1/models/tiny/predict", "/predict", "/healthz"):
                    r = client.request(method, path, content=over, headers=headers)
                    assert r.status_code == 413, (method, ctype, path, r.text)
                    assert "limit of 3000 bytes" in r.json()["detail"]
        r = client.post(
            "/v1/models/tiny/predict", content=over[:2900] + b"0]}", headers={"content-type": "Application/JSON"}
        )
        assert r.status_code == 400 and "dims" in r.json()["detail"]  # under the limit: parsed, strictly
