"""examples/: each example's entry point builds a bundle that checks clean."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from protocol.bundle import MANIFEST_FILE, check_bundle

from .conftest import REPO


def run_example(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "examples" / name / "build.py"), *args, "--quiet"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )


def assert_bundle(out: Path) -> dict:
    arts = {p.name: p.read_bytes() for p in out.iterdir() if p.name != MANIFEST_FILE}
    assert check_bundle((out / MANIFEST_FILE).read_bytes(), arts, None).ok
    return json.loads((out / "report.json").read_text())


@pytest.mark.slow
def test_digits_example_builds_a_bundle(tmp_path: Path) -> None:
    proc = run_example("digits", "--out", str(tmp_path / "b"), "--epochs", "2")
    assert proc.returncode == 0, proc.stderr
    assert assert_bundle(tmp_path / "b")["gate"]["passed"]


@pytest.mark.slow
def test_mobilenet_example_builds_a_fully_mappable_int8_model(tmp_path: Path) -> None:
    proc = run_example("mobilenet", "--out", str(tmp_path / "b"), "--size", "96", "--samples", "8")
    assert proc.returncode == 0, proc.stderr
    report = assert_bundle(tmp_path / "b")
    assert report["model"]["input"]["shape"] == [1, 96, 96, 3]
    assert report["edgetpu"]["precheck"]["fully_mapped"] is True
    sizes = {k: v["size"] for k, v in report["artifacts"].items()}
    assert sizes["model_int8.tflite"] * 3 < sizes["model_float.tflite"]


@pytest.mark.slow
def test_seed_case_study_passes_the_same_gate_on_tabular_data(tmp_path: Path) -> None:
    proc = run_example("seed_case_study", "--out", str(tmp_path / "b"))
    assert proc.returncode == 0, proc.stderr
    report = assert_bundle(tmp_path / "b")
    assert report["num_classes"] == 2 and report["labels"] == ["malignant", "benign"]
    assert report["artifacts"]["model_int8.tflite"]["metrics"]["auc_ovr"] > 0.95
    assert json.loads((tmp_path / "b.standardise.json").read_text())["mean"]


@pytest.mark.slow
def test_seed_case_study_pytorch_variant_passes_the_same_gate_from_its_onnx(tmp_path: Path) -> None:
    from tests.pytorch_builds import require_torch

    require_torch()
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples" / "seed_case_study" / "build_torch.py"), "--out", str(tmp_path / "b")]
        + ["--quiet"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = assert_bundle(tmp_path / "b")
    assert report["source"]["kind"] == "onnx" and report["source"]["onnx_input"]["layout"] == "as_is"
    assert report["labels"] == ["malignant", "benign"] and report["gate"]["passed"]
    assert report["twin"]["status"] == "verified"
    assert report["artifacts"]["model_int8.tflite"]["metrics"]["auc_ovr"] > 0.95
