"""Only verified bundles are served: signature, hashes, structure - each refusal has a reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cloud.bundles import read_bundle, read_bundle_bytes
from cloud.errors import BundleRefused
from protocol.signing import SigningKey

from .conftest import Setup, Tiny, client_for, drop, make_archive, png, tiny_model

NOW = 1_800_000_000


def refusal(archive: bytes, trust: Any, now: int | None = None) -> BundleRefused:
    with pytest.raises(BundleRefused) as info:
        read_bundle_bytes(archive, trust.root, now if now is not None else trust.root.expires - 10, "x.efb")
    return info.value


def test_archive_signed_by_an_unknown_key_is_refused(trust: Any, tiny: Tiny) -> None:
    exc = refusal(make_archive(SigningKey.generate(), "tiny", "1", tiny.onnx), trust)
    assert exc.reason == "unknown_key" and "x.efb" in str(exc)


def test_unsigned_archive_is_refused(trust: Any, tiny: Tiny) -> None:
    assert refusal(make_archive(None, "tiny", "1", tiny.onnx), trust).reason == "threshold_not_met"


def test_root_key_is_not_a_targets_key(trust: Any, tiny: Tiny) -> None:
    # root keys sign roots; a bundle they sign directly is not trusted for serving
    exc = refusal(make_archive(trust.root_keys[0], "tiny", "1", tiny.onnx), trust)
    assert exc.reason == "unknown_key"


def test_tampered_model_bytes_are_refused(trust: Any, tiny: Tiny) -> None:
    archive = bytearray(make_archive(trust.targets_key, "tiny", "1", tiny.onnx))
    archive[-200] ^= 0x01  # inside the ONNX artifact (labels are the last ~70 bytes)
    assert refusal(bytes(archive), trust).reason == "hash_mismatch"


def test_truncated_and_extended_archives_are_refused(trust: Any, tiny: Tiny) -> None:
    archive = make_archive(trust.targets_key, "tiny", "1", tiny.onnx)
    assert refusal(archive[:-5], trust).reason == "length_mismatch"
    assert refusal(archive + b"x", trust).reason == "length_mismatch"
    assert refusal(b"ZIP!" + archive[4:], trust).reason == "malformed"


def test_expired_trust_root_refuses_everything(trust: Any, tiny: Tiny) -> None:
    archive = make_archive(trust.targets_key, "tiny", "1", tiny.onnx)
    assert refusal(archive, trust, now=trust.root.expires + 1).reason == "expired"


def test_bundle_without_an_onnx_twin_is_refused(trust: Any) -> None:
    from protocol.bundle import Artifact, Manifest, pack_archive
    from protocol.signing import seal

    data = b"tflite bytes"
    m = Manifest("edgeonly", "1", NOW, (Artifact.of("m.tflite", "tflite_int8", data),))
    env = seal("manifest", m.to_dict(), [trust.targets_key])
    exc = refusal(pack_archive(env, {"m.tflite": data}), trust)
    assert exc.reason == "missing_artifact" and "onnx" in exc.detail


def test_verified_bundle_keeps_only_the_onnx_twin_and_labels(trust: Any, tiny: Tiny, tmp_path: Path) -> None:
    archive = make_archive(
        trust.targets_key, "tiny", "3", tiny.onnx, labels=["zero", "one"], extra={"report.json": b"{}" * 1000}
    )
    path = drop(tmp_path, archive)
    b = read_bundle(path, trust.root, trust.root.expires - 10)
    assert (b.name, b.version, b.onnx, b.labels) == ("tiny", "3", tiny.onnx, ("zero", "one"))
    assert b.source == path.name


def test_signed_but_broken_models_are_refused_at_load_not_at_request(setup: Setup, trust: Any, tiny: Tiny) -> None:
    good = drop(setup.bundles, make_archive(trust.targets_key, "tiny", "1", tiny.onnx))
    bad = [
        make_archive(trust.targets_key, "garbage", "1", b"this is not an onnx graph"),
        make_archive(
            trust.targets_key,
            "misfit",
            "1",
            tiny.onnx,
            preprocess={"kind": "image", "height": 28, "width": 28, "channels": 1},
        ),
        make_archive(trust.targets_key, "twoin", "1", tiny_model(("N", 8, 8, 1)).onnx, preprocess={"kind": "audio"}),
        make_archive(SigningKey.generate(), "evil", "1", tiny.onnx),
    ]
    for archive in bad:
        drop(setup.bundles, archive)
    with client_for(setup, trust) as client:
        listing = client.get("/v1/models").json()
        assert [m["name"] for m in listing["models"]] == ["tiny"]
        reasons = sorted(r["reason"] for r in listing["refused"])
        assert reasons == ["malformed", "malformed", "unknown_key", "unsupported_runtime"]
        details = " | ".join(r["detail"] for r in listing["refused"])
        assert "28x28x1 fits neither NHWC nor NCHW" in details
        assert "'audio'" in details
        r = client.post("/predict", files={"file": ("a.png", png(np.zeros((8, 8), np.uint8)), "image/png")})
        assert r.status_code == 200 and r.json()["model"]["digest"]
        metrics = client.get("/metrics").text
        assert 'edgefleet_cloud_bundles_refused_total{reason="unknown_key"} 1.0' in metrics
    assert good.exists()


def test_model_whose_inference_fails_is_refused_by_the_warm_up(setup: Setup, trust: Any) -> None:
    import onnx
    from onnx import TensorProto, helper

    # Reshape to a fixed 65 elements: loads fine, fails on every real 8x8 input
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["image", "s"], ["scores"])],
        "broken",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 8, 8, 1])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 65])],
        initializer=[onnx.numpy_helper.from_array(np.array([1, 65], np.int64), "s")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    drop(setup.bundles, make_archive(trust.targets_key, "broken", "1", model.SerializeToString()))
    with client_for(setup, trust) as client:
        refused = client.get("/v1/models").json()["refused"]
        assert [r["reason"] for r in refused] == ["inference_failed"]
        assert client.get("/readyz").status_code == 503


@pytest.mark.slow  # the first run builds the digits bundle with TensorFlow (cached afterwards)
def test_the_real_digits_bundle_is_served_and_reads_real_digits(
    setup: Setup, trust: Any, request: pytest.FixtureRequest
) -> None:
    """The compiler's real build (TensorFlow -> tf2onnx) through the seed's /predict."""
    digits_bundle: Path = request.getfixturevalue("digits_bundle")
    _, _, archive = trust.sign_dir(digits_bundle)
    drop(setup.bundles, archive)
    from sklearn.datasets import load_digits

    data = load_digits()
    with client_for(setup, trust) as client:
        info = client.get("/v1/models").json()
        assert len(info["models"]) == 1, info
        name = info["models"][0]["name"]
        hits = 0
        picks = range(0, 1700, 85)  # 20 digits spread over the set
        for i in picks:
            px = (data.images[i] * (255.0 / 16.0)).round().astype(np.uint8)
            r = client.post("/predict", files={"file": ("d.png", png(px), "image/png")})
            assert r.status_code == 200, r.text
            assert r.json()["model"]["name"] == name
            hits += int(r.json()["top"][0]["label"] == str(data.target[i]))
        assert hits >= 16, f"{hits} of 20 digits read correctly"
        x = (data.images[:4] / 16.0).astype(np.float32)[..., None]
        r = client.post(
            f"/v1/models/{name}/predict",
            content=x.tobytes(),
            headers={"content-type": "application/octet-stream", "x-tensor-shape": "4,8,8,1"},
        )
        assert r.status_code == 200, r.text
        scores = np.array(next(iter(r.json()["outputs"].values())))
        assert scores.shape[0] == 4 and (scores.argmax(1) == data.target[:4]).sum() >= 3


@pytest.mark.slow  # converts Coral's TFLite model to ONNX once (TensorFlow import), then cached
def test_coral_quantized_mobilenet_reads_real_photos(
    setup: Setup, trust: Any, coral_models: Path, coral_mobilenet_onnx: Path
) -> None:
    """A real model nobody on the project trained: uint8 input, static batch of 1."""
    labels = (coral_models / "imagenet_labels.txt").read_text().splitlines()
    pre = {"kind": "image", "height": 224, "width": 224, "channels": 3, "scale": 1 / 127.5, "offset": -1.0}
    drop(
        setup.bundles,
        make_archive(
            trust.targets_key,
            "mobilenet_v2_quant",
            "1",
            coral_mobilenet_onnx.read_bytes(),
            preprocess=pre,
            labels=labels,
        ),
    )
    with client_for(setup, trust) as client:
        info = client.get("/v1/models").json()["models"][0]
        assert info["input"] == {
            "name": info["input"]["name"],
            "dtype": "uint8",
            "shape": [1, 224, 224, 3],
            "batchable": False,
        }
        for image, want in (("cat_720p.jpg", "Egyptian cat"), ("grace_hopper.bmp", "military uniform")):
            r = client.post("/predict", files={"file": (image, (coral_models / image).read_bytes(), "image/*")})
            assert r.status_code == 200, r.text
            assert r.json()["top"][0]["label"] == want, r.json()["top"]
        # three rows through a static-batch-1 model: run one at a time, answered together
        from PIL import Image

        cat = np.asarray(Image.open(coral_models / "cat_720p.jpg").convert("RGB").resize((224, 224)), np.uint8)
        x = np.stack([cat, cat, np.zeros_like(cat)])
        r = client.post(
            "/v1/models/mobilenet_v2_quant/predict",
            content=x.tobytes(),
            headers={
                "content-type": "application/octet-stream",
                "x-tensor-shape": "3,224,224,3",
                "x-tensor-dtype": "uint8",
            },
        )
        assert r.status_code == 200, r.text
        scores = np.array(next(iter(r.json()["outputs"].values())))
        assert scores.shape == (3, 1001) and labels[int(scores[0].argmax())] == "Egyptian cat"
        assert (scores[0] == scores[1]).all()


@pytest.mark.slow
def test_integer_onnx_output_is_dequantized_with_the_manifest_output_quantization(
    setup: Setup, trust: Any, coral_models: Path, coral_mobilenet_onnx: Path
) -> None:
    labels = (coral_models / "imagenet_labels.txt").read_text().splitlines()
    pre = {"kind": "image", "height": 224, "width": 224, "channels": 3, "scale": 1 / 127.5, "offset": -1.0}
    drop(
        setup.bundles,
        make_archive(
            trust.targets_key,
            "mobilenet_v2_scores",
            "1",
            coral_mobilenet_onnx.read_bytes(),
            preprocess=pre,
            labels=labels,
            model={"onnx": {"output_quantization": {"scale": 0.00390625, "zero_point": 0}}},
        ),
    )
    with client_for(setup, trust) as client:
        r = client.post(
            "/predict", files={"file": ("cat.jpg", (coral_models / "cat_720p.jpg").read_bytes(), "image/*")}
        )
        assert r.status_code == 200, r.text
        top = r.json()["top"][0]
        assert top["label"] == "Egyptian cat" and 0.0 < top["score"] <= 1.0, top
        assert 0.9 < sum(r.json()["predictions"][0]) < 1.1  # softmax scores (uint8-rounded), not raw 0..255 codes


@pytest.mark.parametrize("shape, served", [([None, 10], True), ([1, 513, 513], False), (["N", 1, 17, 3], False)])
def test_a_twin_without_a_signature_is_served_only_if_it_outputs_class_scores(shape, served):
    """A bundle made before signatures is answered as a classifier: a segmenter's or pose
    model's twin forced through an old import is refused, not ranked as class scores."""
    from cloud.spec import model_spec

    def spec():
        return model_spec(
            "m", "1", "d" * 64, 1, {}, [("x", "tensor(float)", ["N", 8, 8, 1])], ["y"], (), "src", [shape]
        )

    if served:
        assert spec().signature is None
    else:
        with pytest.raises(BundleRefused) as info:
            spec()
        assert "not one vector of class scores" in str(info.value)
