"""``edgefleet-compile import`` on the real Coral models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from protocol.bundle import MANIFEST_FILE, check_bundle, parse_manifest
from protocol.signing import Envelope

from compiler import selftest
from compiler.inference import TfliteRunner

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


def test_mobilenet_v2_classifies_the_cat_through_import_and_bundle(tmp_path: Path, coral_models: Path,
                                                                  cat_folder: Path) -> None:
    out = tmp_path / "bundle"
    proc = run_cli("import", str(coral_models / "mobilenet_v2_1.0_224_quant.tflite"),
                   "--labels", str(coral_models / "imagenet_labels.txt"),
                   "--validation", str(cat_folder), "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    _check(out)
    m = _manifest(out)
    assert m.requirements.edgetpu == "optional" and m.artifact("tflite_int8").name == "model_int8.tflite"
    pre = m.model["preprocess"]
    assert (pre["height"], pre["width"], pre["channels"]) == (224, 224, 3)
    # a client follows the manifest: resize, RGB, float = pixel*scale+offset, quantize
    img = np.asarray(Image.open(coral_models / "cat_720p.jpg").convert("RGB").resize((224, 224)), np.float32)
    x = (img * pre["scale"] + pre["offset"])[None]
    runner = TfliteRunner((out / "model_int8.tflite").read_bytes())
    labels = (out / "labels.txt").read_text().splitlines()
    assert labels[int(runner.scores(x).argmax())] == "Egyptian cat"
    report = json.loads((out / "report.json").read_text())
    assert report["artifacts"]["model_int8.tflite"]["metrics"]["accuracy"] == 1.0
    assert report["edgetpu"]["precheck"]["fully_mapped"] is True
    st = json.loads((out / "selftest.json").read_text())
    assert len(st["cases"]) == 1 and selftest.check(runner, st) == []
    assert labels[int(np.argmax(st["cases"][0]["expected"]))] == "Egyptian cat"


def test_edgetpu_model_alone_requires_the_delegate(tmp_path: Path, coral_models: Path) -> None:
    out = tmp_path / "tpu"
    proc = run_cli("import", str(coral_models / "mobilenet_v1_0.25_128_quant_edgetpu.tflite"),
                   "--labels", str(coral_models / "imagenet_labels.txt"), "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    _check(out)
    m = _manifest(out)
    assert m.requirements.edgetpu == "required"
    assert [a.role for a in m.artifacts if a.role.startswith("tflite")] == ["tflite_edgetpu"]
    st = json.loads((out / "selftest.json").read_text())
    assert st["cases"] == [] and st["smoke"] is True  # nothing could run it here: agents smoke-test it


def test_cpu_model_with_its_compiled_twin_makes_the_delegate_optional(tmp_path: Path, coral_models: Path,
                                                                     cat_folder: Path) -> None:
    out = tmp_path / "pair"
    proc = run_cli("import", str(coral_models / "mobilenet_v1_0.25_128_quant.tflite"),
                   "--edgetpu", str(coral_models / "mobilenet_v1_0.25_128_quant_edgetpu.tflite"),
                   "--labels", str(coral_models / "imagenet_labels.txt"), "--validation", str(cat_folder),
                   "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    m = _manifest(out)
    assert m.requirements.edgetpu == "optional"
    assert {a.role for a in m.artifacts} >= {"tflite_int8", "tflite_edgetpu", "baseline", "selftest"}
    assert json.loads((out / "report.json").read_text())["edgetpu"]["ops_on_cpu"] == 0


def test_a_plain_model_passed_as_edgetpu_twin_is_refused(tmp_path: Path, coral_models: Path) -> None:
    out = tmp_path / "bad"
    proc = run_cli("import", str(coral_models / "mobilenet_v1_0.25_128_quant.tflite"),
                   "--edgetpu", str(coral_models / "mobilenet_v2_1.0_224_quant.tflite"),
                   "--labels", str(coral_models / "imagenet_labels.txt"), "--out", str(out), "--quiet")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].endswith(
        "mobilenet_v2_1.0_224_quant.tflite: holds no edgetpu-custom-op: not an edgetpu_compiler output")
    assert not out.exists()
