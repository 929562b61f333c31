"""PyTorch in: the digits CNN trained in torch, exported the seed's way (``torch.onnx.export``,
opset 11 asked) and as a ``torch.export`` program, built through the CLI into gated bundles
whose twin is the user's own ONNX; a model with an op the Edge TPU cannot map gets the
pre-check's report; a float .tflite is quantized with the calibration data, an int8 one refused.
Needs the torch extra and onnx2tf (skipped with the reason otherwise)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from compiler.bundle import read_bundle
from compiler.inference import TfliteRunner
from tests.compiler.conftest import run_cli
from tests.pytorch_builds import require_torch, torch_digits, torch_digits_bundle

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def digits() -> Path:
    require_torch()
    return torch_digits()


def _report(bundle: Path) -> dict:
    return json.loads((bundle / "report.json").read_text())


def _weights(model: onnx.ModelProto) -> dict[str, bytes]:
    return {i.name: onnx.numpy_helper.to_array(i).tobytes() for i in model.graph.initializer}


def test_torch_onnx_export_builds_a_gated_bundle_whose_twin_is_the_users_model(digits: Path) -> None:
    bundle = torch_digits_bundle("onnx")
    b = read_bundle(bundle)
    assert not b.problems
    report = _report(bundle)
    twin = onnx.load_from_string((bundle / "model.onnx").read_bytes())
    original = onnx.load(str(digits / "digits.onnx"))  # weights in digits.onnx.data, as torch wrote them
    assert _weights(twin) == _weights(original) and [n.op_type for n in twin.graph.node] == [
        n.op_type for n in original.graph.node
    ]
    assert b.manifest.model["twin"]["status"] == "verified"
    # the gate holds the int8 model to the float original, whose accuracy is torch's own
    val = np.load(digits / "val.npz")
    torch_acc = float((np.load(digits / "torch_scores.npy").argmax(1) == val["y"]).mean())
    src = report["source"]
    assert src["kind"] == "onnx" and src["onnx_input"]["layout"] == "nchw"
    assert src["int8_vs_original"]["original_accuracy"] == pytest.approx(torch_acc)
    assert report["gate"]["passed"] and src["int8_vs_original"]["top1_agreement"] >= 0.97
    card = (bundle / "model_card.md").read_text()
    assert "Built from onnx `digits.onnx` (input nchw); the int8 model against it on 360 validation inputs" in card
    # NCHW (1, 1, 8, 8) became the device's NHWC; the preprocess is the pixels the model trained on
    assert report["model"]["input"]["shape"] == [1, 8, 8, 1] and report["model"]["input"]["dtype"] == "INT8"
    pre = b.manifest.model["preprocess"]
    assert pre["kind"] == "image" and (pre["height"], pre["width"], pre["channels"]) == (8, 8, 1)
    assert pre["scale"] == pytest.approx(1 / 255) and pre["offset"] == 0.0


def test_the_float_tflite_answers_what_the_torch_model_answers(digits: Path) -> None:
    bundle = torch_digits_bundle("onnx")
    val = np.load(digits / "val.npz")
    x = (val["x"].astype(np.float32) / 255.0)[..., None]
    got = TfliteRunner((bundle / "model_float.tflite").read_bytes()).scores(x)
    np.testing.assert_allclose(got, np.load(digits / "torch_scores.npy"), atol=1e-4)


def test_a_torch_export_program_builds_the_same_model(digits: Path) -> None:
    bundle = torch_digits_bundle("pt2")
    report = _report(bundle)
    assert report["source"]["kind"] == "torch.export" and report["gate"]["passed"]
    assert read_bundle(bundle).manifest.model["twin"]["status"] == "verified"
    val = np.load(digits / "val.npz")
    x = (val["x"].astype(np.float32) / 255.0)[..., None]
    got = TfliteRunner((bundle / "model_float.tflite").read_bytes()).scores(x)
    np.testing.assert_allclose(got, np.load(digits / "torch_scores.npy"), atol=1e-4)


def test_an_op_the_edge_tpu_cannot_map_gets_the_precheck_report(digits: Path, tmp_path: Path) -> None:
    proc = run_cli(
        "build",
        str(digits / "leaky.onnx"),
        "--calibration",
        str(digits / "cal.npz"),
        "--validation",
        str(digits / "val.npz"),
        "--target",
        "edgetpu",
        "--max-accuracy-drop",
        "100",
        "--out",
        str(tmp_path / "b"),
        "--quiet",
        "--name",
        "leaky",
    )
    assert proc.returncode == 4, proc.stderr
    assert "graph cut at op 1 LEAKY_RELU (Operation not supported: LEAKY_RELU is not on the Edge TPU op list)" in (
        proc.stderr
    )
    assert not (tmp_path / "b").exists()


def test_a_float_tflite_is_quantized_with_the_calibration_data(digits: Path, tmp_path: Path) -> None:
    float_tflite = tmp_path / "digits_float.tflite"
    float_tflite.write_bytes((torch_digits_bundle("onnx") / "model_float.tflite").read_bytes())
    proc = run_cli(
        "build",
        str(float_tflite),
        "--calibration",
        str(digits / "cal.npz"),
        "--validation",
        str(digits / "val.npz"),
        "--out",
        str(tmp_path / "b"),
        "--quiet",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = _report(tmp_path / "b")
    assert report["source"]["kind"] == "float tflite" and report["gate"]["passed"]
    assert report["model"]["input"]["dtype"] == "INT8" and report["model"]["input"]["shape"] == [1, 8, 8, 1]
    assert not report["model"]["float_ops"]


def test_an_int8_tflite_is_refused_by_build_with_the_reason(digits: Path, tmp_path: Path) -> None:
    int8 = tmp_path / "digits_int8.tflite"
    int8.write_bytes((torch_digits_bundle("onnx") / "model_int8.tflite").read_bytes())
    proc = run_cli(
        "build", str(int8), "--calibration", str(digits / "cal.npz"), "--validation", str(digits / "val.npz"),
        "--out", str(tmp_path / "b"), "--quiet",
    )  # fmt: skip
    assert proc.returncode == 2
    assert "is already quantized (INT8 tensors)" in proc.stderr and "use 'edgefleet-compile import'" in proc.stderr


def test_a_file_that_is_not_a_torch_export_program_is_refused_with_the_reason(tmp_path: Path) -> None:
    require_torch()
    bad = tmp_path / "model.pt2"
    bad.write_bytes(b"PK\x03\x04 not really a program")
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 8, 8), np.uint8), y=np.array([0, 1]))
    proc = run_cli(
        "build", str(bad), "--calibration", str(tmp_path / "d.npz"), "--validation", str(tmp_path / "d.npz"),
        "--out", str(tmp_path / "b"), "--quiet",
    )  # fmt: skip
    assert proc.returncode == 2
    assert "model.pt2: not a torch.export program (" in proc.stderr and not (tmp_path / "b").exists()
