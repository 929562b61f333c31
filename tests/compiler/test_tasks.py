"""Task detection, labels and preprocessing at import, on the real Coral models: what each model
is for comes from its own inputs and outputs, and an import that cannot be answered correctly is
refused with the reason in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from compiler import tasks
from compiler.errors import BadInput
from compiler.graph import read_graph
from compiler.inference import TfliteRunner
from protocol.bundle import MANIFEST_FILE, parse_manifest
from protocol.signature import Signature
from protocol.signing import Envelope

from .conftest import run_cli

IMAGENET = tuple(f"c{i}" for i in range(1001))
DIGITS = tuple(str(i) for i in range(10))
VOC = tuple(f"v{i}" for i in range(21))

# model file -> labels given -> (task, input roles, output roles, stateful, preprocess scale, offset)
EXPECTED = {
    "mobilenet_v2_1.0_224_quant.tflite": (IMAGENET, "classification", ["image"], ["scores"], False, 1 / 128, -1.0),
    "mobilenet_v1_0.25_128_quant_edgetpu.tflite": (
        IMAGENET,
        "classification",
        ["image"],
        ["scores"],
        False,
        1 / 128,
        -1.0,
    ),
    "mobilenet_v2_1.0_224_inat_bird_quant.tflite": (
        tuple(f"b{i}" for i in range(965)),
        "classification",
        ["image"],
        ["scores"],
        False,
        1 / 128,
        -1.0,
    ),
    "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite": (
        (),
        "embedding",
        ["image"],
        ["embedding"],
        False,
        1 / 128,
        -1.0,
    ),
    "deeplabv3_mnv2_dm05_pascal_quant.tflite": (VOC, "segmentation", ["image"], ["mask"], False, 1 / 128, -1.0),
    "deeplabv3_mnv2_dm05_pascal_quant_edgetpu.tflite": ((), "segmentation", ["image"], ["mask"], False, 1 / 128, -1.0),
    "movenet_single_pose_lightning_ptq.tflite": ((), "keypoints", ["image"], ["keypoints"], False, 1.0, 0.0),
    "movenet_single_pose_lightning_ptq_edgetpu.tflite": ((), "keypoints", ["image"], ["keypoints"], False, 1.0, 0.0),
    "traffic_model.tflite": (
        (),
        "detection",
        ["image", "state", "state"],
        ["boxes", "classes", "scores", "count", "state", "state"],
        True,
        1 / 128,
        -1.0,
    ),
    "keras_lstm_mnist_ptq.tflite": (DIGITS, "classification", ["tensor"], ["scores"], True, None, None),
    "keras_lstm_mnist_ptq_edgetpu.tflite": ((), "embedding", ["tensor"], ["embedding"], True, None, None),
}


def _signature(coral: Path, name: str, labels: tuple[str, ...], task: str | None = None) -> Signature:
    data = (coral / name).read_bytes()
    g = read_graph(data, name)
    if "edgetpu" not in name:  # LiteRT's shapes (the file leaves a post-process op's outputs empty)
        g = tasks.with_shapes(g, TfliteRunner(data, name).shapes)
    sig = tasks.read_signature(g, labels, task, name)
    tasks.check_labels(sig, g, labels)
    return sig


@pytest.mark.parametrize("name", list(EXPECTED))
def test_the_task_comes_from_the_models_own_inputs_and_outputs(coral_models: Path, name: str) -> None:
    labels, task, ins, outs, stateful, scale, offset = EXPECTED[name]
    sig = _signature(coral_models, name, labels)
    assert (sig.task, [t.role for t in sig.inputs], [t.role for t in sig.outputs]) == (task, ins, outs)
    assert sig.stateful is stateful
    assert Signature.from_dict(sig.to_dict()) == sig
    pre = tasks.preprocess(sig.request_inputs[0], None, None)
    assert (pre.get("scale"), pre.get("offset")) == (scale, offset)


def test_the_detectors_outputs_are_named_by_the_post_process_op(coral_models: Path) -> None:
    sig = _signature(coral_models, "traffic_model.tflite", ())
    boxes = sig.output("boxes")
    assert boxes is not None and boxes.shape == (1, 40, 4) and boxes.name == "TFLite_Detection_PostProcess"
    assert [t.name for t in sig.outputs if t.role == "state"] == ["raw_outputs/lstm_c", "raw_outputs/lstm_h"]
    assert sig.inputs[1].quantization is not None and sig.inputs[1].quantization.zero_point == 0


def test_movenets_uint8_input_without_quantization_takes_raw_pixels(coral_models: Path) -> None:
    (feed,) = _signature(coral_models, "movenet_single_pose_lightning_ptq.tflite", ()).request_inputs
    assert feed.dtype == "uint8" and feed.quantization is None
    with pytest.raises(BadInput, match="takes raw pixels 0-255 and normalizes them itself"):
        tasks.preprocess(feed, 1 / 255, None)
    assert tasks.preprocess(feed, 1.0, 0.0)["scale"] == 1.0  # the identity is what it takes anyway


@pytest.mark.parametrize(
    "name, labels, task, message",
    [
        ("mobilenet_v2_1.0_224_quant.tflite", DIGITS, None, "labels: 10 labels but the model has 1001 outputs"),
        ("mobilenet_v2_1.0_224_quant.tflite", (), "classification", "a classifier needs --labels"),
        ("mobilenet_v1_1.0_224_quant_embedding_extractor.tflite", (), "classification", "a classifier needs --labels"),
        ("deeplabv3_mnv2_dm05_pascal_quant.tflite", IMAGENET, None, "1001 labels but the model has 21 classes"),
        ("movenet_single_pose_lightning_ptq.tflite", DIGITS, None, "10 labels but the model has 17 keypoints"),
        ("mobilenet_v2_1.0_224_quant.tflite", (), "detection", "--task: detection does not fit the model's outputs"),
        ("movenet_single_pose_lightning_ptq.tflite", (), "segmentation", "segmentation does not fit"),
        ("traffic_model.tflite", (), "keypoints", "keypoints does not fit the model's outputs"),
        ("model_invoking_error.tflite", (), None, "cannot tell its task from 1 output ('' float32[]) without labels"),
    ],
)
def test_an_unanswerable_task_or_labels_that_do_not_fit_are_refused_naming_why(
    coral_models: Path, name: str, labels: tuple[str, ...], task: str | None, message: str
) -> None:
    data = (coral_models / name).read_bytes()
    with pytest.raises(BadInput, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        g = read_graph(data, name)
        sig = tasks.read_signature(g, labels, task, name)
        tasks.check_labels(sig, g, labels)


def test_task_tensors_answers_any_model_as_it_is(coral_models: Path) -> None:
    sig = _signature(coral_models, "mobilenet_v2_1.0_224_quant.tflite", (), "tensors")
    assert sig.task == "tensors" and [t.role for t in sig.outputs] == ["tensor"]
    sig = _signature(coral_models, "traffic_model.tflite", (), "tensors")
    assert [t.role for t in sig.outputs] == ["tensor"] * 4 + ["state"] * 2


def test_the_lstm_answers_the_same_input_the_same_after_other_inputs(coral_models: Path) -> None:
    """Its fused LSTM keeps state in variable tensors: unreset, the "nine" scored 255, then
    255, then 250 (of 256) as other inputs came and went."""
    runner = TfliteRunner((coral_models / "keras_lstm_mnist_ptq.tflite").read_bytes())
    from PIL import Image

    nine = np.asarray(Image.open(coral_models / "mnist_nine.bmp"), np.uint8).reshape(1, 28, 28)
    first = runner.run_raw(nine)
    for other in (np.full_like(nine, 200), np.zeros_like(nine)):
        runner.run_raw(other)
    assert np.array_equal(runner.run_raw(nine), first) and int(first.argmax()) == 9


def _manifest(d: Path):
    return parse_manifest(Envelope.parse((d / MANIFEST_FILE).read_bytes()).payload)


@pytest.mark.parametrize(
    "model, args, message",
    [
        (
            "model_invoking_error.tflite",
            [],
            "LiteRT cannot load it (Encountered unresolved custom op: fake-op-double.)",
        ),
        (
            "mobilenet_v2_1.0_224_quant.tflite",
            ["--task", "classification"],
            "labels: a classifier needs --labels (one per class score)",
        ),
        (
            "movenet_single_pose_lightning_ptq.tflite",
            ["--scale", "0.00392"],
            "--scale: model input uint8[1, 192, 192, 3]",
        ),
        ("mobilenet_v1_0.25_128_quant.tflite", ["--offset", "-1"], "--offset: needs --scale too"),
        (
            "keras_lstm_mnist_ptq.tflite",
            ["--scale", "2"],
            "--scale: applies to image inputs; model input uint8[1, 28, 28]",
        ),
        (
            "deeplabv3_mnv2_dm05_pascal_quant.tflite",
            ["--labels", "pascal_voc_segmentation_labels.txt"],
            "labels: 23 labels but the model has 21 classes",
        ),
        (
            "movenet_single_pose_lightning_ptq.tflite",
            ["--validation", "VAL"],
            "validation data: is scored against class labels, and a keypoints model has none; "
            "give the samples as --calibration",
        ),
    ],
)
def test_import_refuses_in_one_line(
    tmp_path: Path, coral_models: Path, model: str, args: list[str], message: str
) -> None:
    val = tmp_path / "val"
    val.mkdir()
    (val / "squat.bmp").write_bytes((coral_models / "squat.bmp").read_bytes())
    (val / "labels.csv").write_text("filename,label\nsquat.bmp,0\n")
    args = [str(val) if a == "VAL" else str(coral_models / a) if a.endswith((".txt", ".pbtxt")) else a for a in args]
    out = tmp_path / "out"
    proc = run_cli("import", str(coral_models / model), *args, "--out", str(out), "--quiet", "--no-onnx")
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("edgefleet-compile: error: ") and message in last, last
    assert not out.exists()


def test_scale_and_offset_are_honoured_without_data(tmp_path: Path, coral_models: Path) -> None:
    """They used to be ignored unless calibration data was given."""
    out = tmp_path / "out"
    proc = run_cli(
        "import",
        str(coral_models / "mobilenet_v1_0.25_128_quant.tflite"),
        "--labels",
        str(coral_models / "imagenet_labels.txt"),
        "--scale",
        "0.0078",
        "--offset",
        "-0.99",
        "--no-onnx",
        "--out",
        str(out),
        "--quiet",
    )
    assert proc.returncode == 0, proc.stderr
    pre = _manifest(out).model["preprocess"]
    assert (pre["scale"], pre["offset"]) == (0.0078, -0.99)


def test_a_segmenter_imports_without_a_labels_file_the_size_of_its_output(tmp_path: Path, coral_models: Path) -> None:
    """It used to need one label per output value: 263,169 lines for a 513x513 mask."""
    out = tmp_path / "seg"
    proc = run_cli(
        "import",
        str(coral_models / "deeplabv3_mnv2_dm05_pascal_quant.tflite"),
        "--no-onnx",
        "--out",
        str(out),
        "--quiet",
    )
    assert proc.returncode == 0, proc.stderr
    m = _manifest(out)
    assert m.model["task"] == "segmentation" and m.model["signature"]["outputs"][0]["dtype"] == "int64"
    assert "labels" not in {a.role for a in m.artifacts} and "labels" not in m.model
