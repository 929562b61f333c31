"""The digits build (``python -m compiler digits``): the contract hub, agent and cloud rely on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from compiler import digits, selftest
from compiler.inference import TfliteRunner
from protocol.baseline import parse as parse_baseline
from protocol.bundle import MANIFEST_FILE, check_bundle, parse_manifest, verify_manifest
from protocol.features import input_features, output_features
from protocol.signing import Envelope
from protocol.sketch import bin_counts

EXPECTED_FILES = {
    "manifest.json",
    "model_int8.tflite",
    "model_float.tflite",
    "model.onnx",
    "baseline.json",
    "selftest.json",
    "report.json",
    "model_card.md",
    "labels.txt",
}


def _artifacts(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in d.iterdir() if p.name != MANIFEST_FILE}


def _manifest(d: Path):
    return parse_manifest(Envelope.parse((d / MANIFEST_FILE).read_bytes()).payload)


def test_digits_bundle_checks_clean_with_every_documented_file(digits_bundle: Path) -> None:
    assert {p.name for p in digits_bundle.iterdir()} == EXPECTED_FILES
    rep = check_bundle((digits_bundle / MANIFEST_FILE).read_bytes(), _artifacts(digits_bundle), None)
    assert rep.ok, rep.problems
    env = Envelope.parse((digits_bundle / MANIFEST_FILE).read_bytes())
    assert env.signatures == ()  # the hub signs, not the compiler


def test_digits_manifest_describes_model_io_preprocess_and_requirements(digits_bundle: Path) -> None:
    m = _manifest(digits_bundle)
    roles = {a.name: a.role for a in m.artifacts}
    assert roles["model_int8.tflite"] == "tflite_int8" and roles["model.onnx"] == "onnx"
    assert m.artifact("tflite_edgetpu") is None
    assert m.requirements.edgetpu == "optional"
    assert m.model["task"] == "classification" and m.model["num_classes"] == 10
    assert m.model["preprocess"] == {
        "kind": "image",
        "height": 8,
        "width": 8,
        "channels": 1,
        "scale": 1 / 255,
        "offset": 0.0,
    }
    assert m.model["input"]["shape"] == [1, 8, 8, 1]
    assert m.model["labels"] == "labels.txt"
    assert (digits_bundle / "labels.txt").read_text().split() == [str(i) for i in range(10)]


def test_int8_model_is_full_integer_with_static_batch_one(digits_bundle: Path) -> None:
    it = Interpreter(model_path=str(digits_bundle / "model_int8.tflite"))
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    assert inp["dtype"] == np.int8 and out["dtype"] == np.int8
    assert list(inp["shape_signature"]) == [1, 8, 8, 1]
    report = json.loads((digits_bundle / "report.json").read_text())
    assert report["model"]["float_ops"] == []


def test_png_pixels_classify_the_holdout_like_the_gate_measured(digits_bundle: Path) -> None:
    """A request is 8x8 uint8 pixels; pixel/255 quantized by the model's own params is the input."""
    split = digits.load_split(0)
    runner = TfliteRunner((digits_bundle / "model_int8.tflite").read_bytes())
    x = split.test_pixels.astype(np.float32) / 255.0
    pred = runner.scores(x[..., None]).argmax(axis=1)
    acc = float((pred == split.test_y).mean())
    report = json.loads((digits_bundle / "report.json").read_text())
    assert acc == pytest.approx(report["artifacts"]["model_int8.tflite"]["metrics"]["accuracy"], abs=1e-6)
    assert acc > 0.85


def test_selftest_vectors_pass_on_the_int8_artifact_and_catch_a_wrong_model(digits_bundle: Path) -> None:
    doc = json.loads((digits_bundle / "selftest.json").read_text())
    assert doc["artifact"] == "model_int8.tflite" and doc["tolerance"] == 2 and len(doc["cases"]) == 5
    assert np.array(doc["cases"][0]["input"]).shape == (1, 8, 8, 1)
    assert np.array(doc["cases"][0]["expected"]).shape == (1, 10)
    runner = TfliteRunner((digits_bundle / "model_int8.tflite").read_bytes())
    assert selftest.check(runner, doc) == []
    assert doc["outputs"][0]["compare"] == "steps" and len(doc["cases"][0]["outputs"][0]["values"]) == 10
    tampered = json.loads(json.dumps(doc))
    out = tampered["cases"][0]["outputs"][0]
    out["values"] = [int(v) + 40 for v in out["values"]]
    name = doc["outputs"][0]["name"]
    assert selftest.check(runner, tampered) == [f"case 0: {name}: differs by 40 steps > tolerance 2"]


def test_baseline_counts_are_what_protocol_features_give_on_the_validation_set(digits_bundle: Path) -> None:
    base = json.loads((digits_bundle / "baseline.json").read_text())
    assert parse_baseline((digits_bundle / "baseline.json").read_bytes()).to_dict() == base  # the one reader
    assert (
        base["schema"] == 2 and base["samples"] == 360 and "task" not in base
    )  # schema 2: a classifier has no task part
    assert set(base["inputs"]) == {"mean_c0", "std_c0", "brightness"}
    assert set(base["outputs"]) == {"top1_confidence", "top1_class"}
    assert base["outputs"]["top1_class"]["edges"] == [i + 0.5 for i in range(9)]
    split = digits.load_split(0)
    x = digits.to_float(split.test_pixels)
    runner = TfliteRunner((digits_bundle / "model_int8.tflite").read_bytes())
    scores = runner.scores(x)
    bright = [input_features(x[i], digits.PREPROCESS)["brightness"] for i in range(len(x))]
    conf = [output_features(scores[i])["top1_confidence"] for i in range(len(x))]
    assert bin_counts(base["inputs"]["brightness"]["edges"], bright) == base["inputs"]["brightness"]["ref"]
    assert bin_counts(base["outputs"]["top1_confidence"]["edges"], conf) == base["outputs"]["top1_confidence"]["ref"]
    assert base["thresholds"] == {"psi_warn": 0.1, "psi_alert": 0.25, "min_samples": 100}


def test_report_and_model_card_record_lineage_metrics_and_gate(digits_bundle: Path) -> None:
    report = json.loads((digits_bundle / "report.json").read_text())
    assert report["gate"]["passed"] is True
    assert [c["name"] for c in report["gate"]["checks"]] == ["int8_accuracy_drop"]
    assert set(report["artifacts"]) == {"model_int8.tflite", "model_float.tflite", "model.onnx"}
    assert report["artifacts"]["model.onnx"]["metrics"]["max_abs_diff"] < 1e-4
    # the twin was measured against the float TFLite on every validation input before it shipped
    twin = report["twin"]
    assert (twin["status"], twin["inputs"], twin["n"], twin["metric"]) == ("verified", "user", 360, "classification")
    assert twin["figures"]["top1_agreement"] == 1.0 and twin["figures"]["max_abs_diff"] < 1e-4
    assert twin["limits"] == {"min_top1_agreement": 0.99, "max_abs_diff": 1e-3}
    assert _manifest(digits_bundle).model["twin"] == twin
    assert "tool:tensorflow-cpu" in report["lineage"] or "tool:tensorflow" in report["lineage"]
    assert len(report["lineage"]["validation_sha256"]) == 64
    card = (digits_bundle / "model_card.md").read_text()
    assert card.startswith("# Model card: digits 1.0.0") and "Accuracy gate: passed" in card


def test_onnx_twin_agrees_with_the_float_model_on_a_batch(digits_bundle: Path) -> None:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(digits_bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    x = digits.to_float(digits.load_split(0).test_pixels[:32])
    onnx_scores = sess.run(None, {sess.get_inputs()[0].name: x})[0]  # dynamic batch of 32
    float_scores = TfliteRunner((digits_bundle / "model_float.tflite").read_bytes()).scores(x)
    assert onnx_scores.shape == (32, 10)
    assert np.abs(onnx_scores - float_scores).max() < 1e-4


@pytest.mark.slow
def test_holdout_signing_and_uint8_io_in_one_cli_run(digits_variant: Path, trust) -> None:
    out = digits_variant / "bundle"
    holdout = np.load(digits_variant / "holdout.npz")
    assert holdout["x"].dtype == np.uint8 and holdout["x"].shape == (360, 8, 8)
    assert holdout["y"].shape == (360,) and set(holdout["y"].tolist()) == set(range(10))
    manifest, digest = verify_manifest((out / MANIFEST_FILE).read_bytes(), trust.root)
    assert manifest.name == "digits-u8" and manifest.version == "2.0.0" and len(digest) == 64
    it = Interpreter(model_path=str(out / "model_int8.tflite"))
    assert it.get_input_details()[0]["dtype"] == np.uint8
