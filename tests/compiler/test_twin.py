"""The ONNX twin is never shipped unverified (issue 12, item 4), on the real Coral models.

Figures measured here (tf2onnx 1.17.0, onnxruntime and ai-edge-litert as pinned, 32 synthetic
inputs with seed 0 unless said otherwise; ``edgefleet-compile import MODEL --labels L --out B``):

=================================================  =========  =========================================
model                                              verdict    figures
=================================================  =========  =========================================
mobilenet_v2_1.0_224_inat_bird_quant               withheld   top-1 agreement 9.38 %, 207 steps
  same, ``--calibration`` 10 Coral images          withheld   top-1 agreement 80 %, 217 steps
mobilenet_v2_1.0_224_quant                         verified   top-1 agreement 100 %, 0 steps
mobilenet_v1_0.25_128_quant                        verified   top-1 agreement 100 %, 9 steps
mobilenet_v1_0.5_160_quant                         verified   top-1 agreement 100 %, 0 steps
mobilenet_v1_1.0_224_quant_embedding_extractor     verified   cosine 1.0, 0 steps (task embedding)
deeplabv3_mnv2_dm05_pascal_quant                   verified   pixels of the same class 100 % (segmentation)
  same, the 10 Coral images as calibration          verified   pixels of the same class 99.86 %
movenet_single_pose_lightning_ptq                  withheld   mean keypoint distance 0.0704 > 0.02
                                                              (task keypoints; with no task: cosine 0.9747)
keras_lstm_mnist_ptq                               withheld   tf2onnx fails (tfl.pseudo_qconst1)
traffic_model (SSD + TFLite_Detection_PostProcess)  withheld   converts, but 3 inputs and 6 outputs
=================================================  =========  =========================================
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from compiler.inference import TfliteRunner
from compiler.parity import choose_inputs
from compiler.tflite_onnx import verify
from protocol.bundle import MANIFEST_FILE, parse_manifest
from protocol.signing import Envelope
from tests.coral_imports import imported

from .conftest import run_cli


def _manifest(d: Path):
    return parse_manifest(Envelope.parse((d / MANIFEST_FILE).read_bytes()).payload)


def _import(tmp_path: Path, coral: Path, model: str, labels: Path, *extra: str) -> Path:
    out = tmp_path / "bundle"
    proc = run_cli("import", str(coral / model), "--labels", str(labels), "--out", str(out), "--quiet", *extra)
    assert proc.returncode == 0, proc.stderr
    return out


def test_inat_bird_twin_imported_without_data_is_withheld_on_synthetic_inputs(inat_bundle: Path) -> None:
    """Issue 12: imported with no data, this twin used to ship unchecked and changed the cloud's
    top-1. Measured on 32 synthetic inputs: top-1 agreement 3/32 = 9.38 %, up to 207
    quantization steps off LiteRT (limits: 99 %, 32 steps), so it is withheld."""
    report = json.loads((inat_bundle / "report.json").read_text())
    twin = report["twin"]
    assert (twin["status"], twin["inputs"], twin["n"], twin["metric"]) == (
        "withheld",
        "synthetic",
        32,
        "classification",
    )
    assert twin["figures"]["top1_agreement"] == 0.09375 and twin["figures"]["max_step_diff"] == 207
    assert twin["limits"] == {"min_top1_agreement": 0.99, "max_step_diff": 32}
    assert twin["reason"] == (
        "top-1 agreement 9.38% < 99.00%; largest difference 207 quantization steps > 32 on 32 synthetic inputs"
    )
    m = _manifest(inat_bundle)
    assert m.model["twin"] == twin  # signed: the cloud and the hub read the same words
    assert m.artifact("onnx") is None and "onnx" not in m.model and not (inat_bundle / "model.onnx").exists()
    assert "model.onnx" not in report["artifacts"]
    assert "## Cloud twin (ONNX)\n\n- withheld: top-1 agreement 9.38%" in (inat_bundle / "model_card.md").read_text()


def test_inat_bird_twin_measured_on_calibration_images_is_withheld_too(tmp_path: Path, coral_models: Path) -> None:
    """With real images as --calibration (the cat, Grace Hopper, a bird and a dog): the twin
    disagrees on the cat (LiteRT says class 964 'background', the twin class 553) and the dog, and is
    withheld. Measured on these 4: top-1 agreement 50 %, 209 steps."""
    cal = tmp_path / "cal"
    cal.mkdir()
    for f in ("cat_720p.jpg", "grace_hopper.bmp", "bird.bmp", "dog_segmentation.bmp"):
        (cal / f).write_bytes((coral_models / f).read_bytes())
    out = _import(
        tmp_path,
        coral_models,
        "mobilenet_v2_1.0_224_inat_bird_quant.tflite",
        coral_models / "inat_bird_labels.txt",
        "--calibration",
        str(cal),
    )
    twin = json.loads((out / "report.json").read_text())["twin"]
    assert (twin["status"], twin["inputs"], twin["n"]) == ("withheld", "calibration", 4)
    assert twin["figures"]["top1_agreement"] < 0.99 and twin["figures"]["max_step_diff"] > 32
    assert _manifest(out).artifact("onnx") is None


def test_a_twin_that_agrees_within_rounding_is_verified_on_synthetic_inputs(coral_models: Path) -> None:
    """MobileNet v1 0.25: onnxruntime's QDQ rounds differently from LiteRT's integer kernels,
    up to 9 steps measured on the 32 synthetic inputs, and agrees on every top-1: verified.
    (The same ``import`` the end-to-end tests use, with their labels: built once for all of them.)"""
    out = imported("mnv1_025", coral_models)
    twin = json.loads((out / "report.json").read_text())["twin"]
    assert (twin["status"], twin["inputs"], twin["n"]) == ("verified", "synthetic", 32)
    assert twin["figures"]["top1_agreement"] == 1.0 and 0 < twin["figures"]["max_step_diff"] <= 32
    m = _manifest(out)
    assert m.artifact("onnx").name == "model.onnx" and m.model["twin"] == twin


def test_the_detector_is_withheld_with_the_converters_reason(tmp_path: Path, coral_models: Path) -> None:
    """traffic_model imported (task detection): tf2onnx converts TFLite_Detection_PostProcess
    (into NonMaxSuppression, TopK, GatherND), but the graph keeps the LSTM state as two more
    inputs and outputs; the cloud serves one input, so the twin is withheld, no parity claimed."""
    out = tmp_path / "bundle"
    proc = run_cli("import", str(coral_models / "traffic_model.tflite"), "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    twin = report["twin"]
    assert report["task"] == "detection" and twin["status"] == "withheld" and "inputs" not in twin
    assert twin["reason"].startswith(
        "tf2onnx converted it to 3 inputs (normalized_input_image_tensor, raw_inputs/init_lstm_c, "
        "raw_inputs/init_lstm_h) and 6 outputs (TFLite_Detection_PostProcess, "
    )
    assert twin["reason"].endswith("a twin must have one input and one output")
    m = _manifest(out)
    assert m.model["twin"] == twin and m.artifact("onnx") is None


def test_a_model_tf2onnx_fails_on_is_withheld_with_its_one_line_error(coral_models: Path) -> None:
    out = imported("lstm", coral_models)  # with labels 0..9, as the end-to-end tests import it
    twin = json.loads((out / "report.json").read_text())["twin"]
    assert twin == {
        "status": "withheld",
        "reason": "tf2onnx from_tflite (keras_lstm_mnist_ptq.tflite) failed: ValueError: make_sure failure: "
        "Cannot find node with output 'tfl.pseudo_qconst1' in graph 'main'",
    }
    assert _manifest(out).artifact("onnx") is None


def test_keypoints_twin_is_judged_by_keypoint_distance_and_withheld(coral_models: Path) -> None:
    """MoveNet (signature task keypoints): the twin's keypoints are on average 0.0704 of the image
    from LiteRT's on the 32 synthetic inputs on one CPU, 0.1105 on another (LiteRT's int8 kernels
    round by instruction set; limit 0.02; up to 0.30 on parrot.jpg): withheld. With no task
    stated the generic metric withholds it too (lowest cosine 0.9747 < 0.99 on the first CPU)."""
    data = (coral_models / "movenet_single_pose_lightning_ptq.tflite").read_bytes()
    runner = TfliteRunner(data, "movenet")
    inputs = choose_inputs(runner.input, {}, None, None)
    ver = verify(data, "movenet", runner, inputs, 600, task="keypoints")
    assert (ver.status.status, ver.status.metric) == ("withheld", "keypoints")
    said = re.fullmatch(r"mean keypoint distance (\d\.\d{4}) > 0\.02 on 32 synthetic inputs", ver.status.reason)
    assert said is not None, ver.status.reason
    assert float(said.group(1)) > 0.02
    untasked = verify(data, "movenet", runner, inputs, 600)
    cos = re.match(r"lowest cosine similarity (\d\.\d{4})", untasked.status.reason)
    assert untasked.status.metric == "cosine" and cos is not None, untasked.status.reason
    assert float(cos.group(1)) < 0.99


def test_inspect_says_why_the_twin_was_withheld(inat_bundle: Path) -> None:
    proc = run_cli("inspect", str(inat_bundle))
    assert proc.returncode == 0, proc.stderr
    assert "twin: withheld: top-1 agreement 9.38% < 99.00%; largest difference 207 quantization steps" in proc.stdout
