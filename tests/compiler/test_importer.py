"""``edgefleet-compile import`` on the real Coral models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from compiler import selftest
from compiler.inference import TfliteRunner
from protocol.bundle import MANIFEST_FILE, check_bundle, parse_manifest
from protocol.signing import Envelope

from .conftest import run_cli


def _manifest(d: Path):
    return parse_manifest(Envelope.parse((d / MANIFEST_FILE).read_bytes()).payload)


def _check(d: Path) -> None:
    arts = {p.name: p.read_bytes() for p in d.iterdir() if p.name != MANIFEST_FILE}
    rep = check_bundle((d / MANIFEST_FILE).read_bytes(), arts, None)
    assert rep.ok, rep.problems


@pytest.fixture
def cat_folder(tmp_path: Path, coral_models: Path) -> Path:
    d = tmp_path / "val"
    d.mkdir()
    (d / "cat.jpg").write_bytes((coral_models / "cat_720p.jpg").read_bytes())
    (d / "labels.csv").write_text("filename,label\ncat.jpg,Egyptian cat\n")
    return d


@pytest.fixture(scope="module")
def v2_bundle(tmp_path_factory: pytest.TempPathFactory, coral_models: Path) -> Path:
    """Coral's MobileNetV2 imported with the cat as its one validation sample (made once)."""
    d = tmp_path_factory.mktemp("v2-import")
    (d / "val").mkdir()
    (d / "val" / "cat.jpg").write_bytes((coral_models / "cat_720p.jpg").read_bytes())
    (d / "val" / "labels.csv").write_text("filename,label\ncat.jpg,Egyptian cat\n")
    proc = run_cli(
        "import",
        str(coral_models / "mobilenet_v2_1.0_224_quant.tflite"),
        "--labels",
        str(coral_models / "imagenet_labels.txt"),
        "--validation",
        str(d / "val"),
        "--out",
        str(d / "bundle"),
        "--quiet",
    )
    assert proc.returncode == 0, proc.stderr
    return d / "bundle"


def _cat_float(coral_models: Path, pre: dict) -> np.ndarray:
    """A client following the manifest: resize, RGB, float = pixel*scale+offset."""
    img = np.asarray(Image.open(coral_models / "cat_720p.jpg").convert("RGB").resize((224, 224)), np.float32)
    return (img * pre["scale"] + pre["offset"])[None]


def test_mobilenet_v2_classifies_the_cat_through_import_and_bundle(v2_bundle: Path, coral_models: Path) -> None:
    out = v2_bundle
    _check(out)
    m = _manifest(out)
    assert m.requirements.edgetpu == "optional" and m.artifact("tflite_int8").name == "model_int8.tflite"
    pre = m.model["preprocess"]
    assert (pre["height"], pre["width"], pre["channels"]) == (224, 224, 3)
    x = _cat_float(coral_models, pre)
    runner = TfliteRunner((out / "model_int8.tflite").read_bytes())
    labels = (out / "labels.txt").read_text().splitlines()
    assert labels[int(runner.scores(x).argmax())] == "Egyptian cat"
    report = json.loads((out / "report.json").read_text())
    assert report["artifacts"]["model_int8.tflite"]["metrics"]["accuracy"] == 1.0
    assert report["edgetpu"]["precheck"]["fully_mapped"] is True
    st = json.loads((out / "selftest.json").read_text())
    assert len(st["cases"]) == 1 and selftest.check(runner, st) == []
    assert labels[int(np.argmax(st["cases"][0]["expected"]))] == "Egyptian cat"


def test_imported_mobilenet_v2_ships_an_onnx_twin_that_classifies_the_cat(v2_bundle: Path, coral_models: Path) -> None:
    import onnxruntime as ort

    m = _manifest(v2_bundle)
    assert m.artifact("onnx").name == "model.onnx"
    pre = m.model["preprocess"]
    q = pre["input_quantization"]
    assert (q["scale"], q["zero_point"]) == (pytest.approx(0.0078125), 128)
    # the cloud's rule (protocol.features): q = round(f / scale) + zp, in the ONNX input's dtype
    sess = ort.InferenceSession((v2_bundle / "model.onnx").read_bytes(), providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    assert inp.type == "tensor(uint8)" and inp.name == m.model["onnx"]["input"]
    raw = np.clip(np.round(_cat_float(coral_models, pre) / q["scale"]) + q["zero_point"], 0, 255).astype(np.uint8)
    scores = sess.run(None, {inp.name: raw})[0]
    labels = (v2_bundle / "labels.txt").read_text().splitlines()
    assert labels[int(scores.argmax())] == "Egyptian cat"
    oq = m.model["onnx"]["output_quantization"]
    assert m.model["onnx"]["output_dtype"] == "uint8" and oq["scale"] == pytest.approx(1 / 256)
    report = json.loads((v2_bundle / "report.json").read_text())
    twin = report["twin"]
    assert twin == m.model["twin"]  # the signed manifest says what the report says
    assert (twin["status"], twin["inputs"], twin["n"], twin["metric"]) == ("verified", "user", 1, "classification")
    assert twin["figures"]["top1_agreement"] == 1.0 and report["artifacts"]["model.onnx"]["metrics"]["accuracy"] == 1.0
    # parity against LiteRT: the same raw output on the cat, within the recorded difference
    lite = TfliteRunner((v2_bundle / "model_int8.tflite").read_bytes()).run_raw(raw)
    diff = int(np.abs(lite.astype(int) - scores.reshape(lite.shape).astype(int)).max())
    assert diff <= twin["figures"]["max_step_diff"]


def test_edgetpu_model_alone_requires_the_delegate(tmp_path: Path, coral_models: Path) -> None:
    out = tmp_path / "tpu"
    proc = run_cli(
        "import",
        str(coral_models / "mobilenet_v1_0.25_128_quant_edgetpu.tflite"),
        "--labels",
        str(coral_models / "imagenet_labels.txt"),
        "--out",
        str(out),
        "--quiet",
    )
    assert proc.returncode == 0, proc.stderr
    _check(out)
    m = _manifest(out)
    assert m.requirements.edgetpu == "required"
    assert [a.role for a in m.artifacts if a.role.startswith("tflite")] == ["tflite_edgetpu"]
    st = json.loads((out / "selftest.json").read_text())
    assert st["cases"] == [] and st["smoke"] is True  # nothing could run it here: agents smoke-test it
    twin = json.loads((out / "report.json").read_text())["twin"]
    assert twin["status"] == "none" and "compiled for the Edge TPU" in twin["reason"]
    assert m.model["twin"] == twin and "onnx" not in {a.role for a in m.artifacts}


def test_cpu_model_with_its_compiled_twin_makes_the_delegate_optional(
    tmp_path: Path, coral_models: Path, cat_folder: Path
) -> None:
    out = tmp_path / "pair"
    proc = run_cli(
        "import",
        str(coral_models / "mobilenet_v1_0.25_128_quant.tflite"),
        "--edgetpu",
        str(coral_models / "mobilenet_v1_0.25_128_quant_edgetpu.tflite"),
        "--labels",
        str(coral_models / "imagenet_labels.txt"),
        "--validation",
        str(cat_folder),
        "--out",
        str(out),
        "--quiet",
    )
    assert proc.returncode == 0, proc.stderr
    m = _manifest(out)
    assert m.requirements.edgetpu == "optional"
    assert {a.role for a in m.artifacts} >= {"tflite_int8", "tflite_edgetpu", "onnx", "baseline", "selftest"}
    report = json.loads((out / "report.json").read_text())
    assert report["edgetpu"]["ops_on_cpu"] == 0
    assert report["twin"]["status"] == "verified" and report["onnx"]["input_dtype"] == "uint8"
    assert m.model["preprocess"]["input_quantization"]["zero_point"] == 128


def test_no_onnx_import_ships_no_twin_and_says_why(tmp_path: Path, coral_models: Path) -> None:
    out = tmp_path / "plain"
    proc = run_cli(
        "import",
        str(coral_models / "mobilenet_v1_0.25_128_quant.tflite"),
        "--no-onnx",
        "--labels",
        str(coral_models / "imagenet_labels.txt"),
        "--out",
        str(out),
        "--quiet",
    )
    assert proc.returncode == 0, proc.stderr
    assert "onnx" not in {a.role for a in _manifest(out).artifacts}
    assert json.loads((out / "report.json").read_text())["twin"] == {"status": "none", "reason": "--no-onnx"}
    assert "input_quantization" not in _manifest(out).model["preprocess"]


def test_a_model_tf2onnx_cannot_convert_is_a_tool_failure_naming_it(coral_models: Path) -> None:
    from compiler.errors import ToolFailed
    from compiler.tflite_onnx import convert

    with pytest.raises(ToolFailed, match=r"^tf2onnx from_tflite \(broken.tflite\) failed: "):
        convert(b"TFL3 this is not a flatbuffer" * 10, 300, "broken.tflite")


def test_a_plain_model_passed_as_edgetpu_twin_is_refused(tmp_path: Path, coral_models: Path) -> None:
    out = tmp_path / "bad"
    proc = run_cli(
        "import",
        str(coral_models / "mobilenet_v1_0.25_128_quant.tflite"),
        "--edgetpu",
        str(coral_models / "mobilenet_v2_1.0_224_quant.tflite"),
        "--labels",
        str(coral_models / "imagenet_labels.txt"),
        "--out",
        str(out),
        "--quiet",
    )
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .endswith("mobilenet_v2_1.0_224_quant.tflite: holds no edgetpu-custom-op: not an edgetpu_compiler output")
    )
    assert not out.exists()
