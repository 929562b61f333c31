"""The CLI (``python -m compiler``): bad input gets one line naming the file and the problem, a
documented exit code, and nothing half-written; real builds of .keras and SavedModel inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from protocol.bundle import MANIFEST_FILE, check_bundle

from .conftest import run_cli


def error_line(proc) -> str:
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("edgefleet-compile: error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.fixture
def data(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "cal.npz", x=rng.integers(0, 255, (20, 8, 8), dtype=np.uint8))
    np.savez(tmp_path / "val.npz", x=rng.integers(0, 255, (30, 8, 8), dtype=np.uint8), y=rng.integers(0, 10, 30))
    (tmp_path / "labels.txt").write_text("\n".join(str(i) for i in range(10)) + "\n")
    (tmp_path / "model.keras").write_bytes(b"PK\x03\x04 this is not a keras archive")
    return tmp_path


def build(data: Path, *extra: str, model: str = "model.keras", cal: str = "cal.npz", val: str = "val.npz"):
    return run_cli(
        "build",
        str(data / model) if not model.startswith("/") else model,
        "--calibration",
        str(data / cal),
        "--validation",
        str(data / val),
        *extra,
    )


def test_help_documents_the_exit_codes() -> None:
    proc = run_cli("build", "--help")
    assert proc.returncode == 0
    for code in (
        "0  success",
        "2  bad input",
        "3  accuracy gate failed",
        "4  not Edge TPU ready",
        "5  toolchain failure",
    ):
        assert code in proc.stdout


def test_existing_output_directory_is_refused_untouched(data: Path) -> None:
    out = data / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    proc = build(data, "--out", str(out))
    assert proc.returncode == 2
    assert error_line(proc).endswith(f"{out}: output directory already exists; choose a new path or remove it")
    assert [p.name for p in out.iterdir()] == ["mine.txt"]


def test_calibration_of_the_wrong_dtype_is_named(data: Path) -> None:
    np.savez(data / "cal64.npz", x=np.ones((5, 8, 8), np.int64))
    proc = build(data, "--out", str(data / "o"), cal="cal64.npz")
    assert proc.returncode == 2
    assert error_line(proc).endswith(
        "cal64.npz: calibration data x must be float32 inputs or uint8 pixels, got dtype int64"
    )
    assert not (data / "o").exists() and leftovers(data) == []


def test_empty_validation_set_is_refused(data: Path) -> None:
    np.savez(data / "empty.npz", x=np.zeros((0, 8, 8), np.uint8), y=np.zeros(0, np.int64))
    proc = build(data, "--out", str(data / "o"), val="empty.npz")
    assert proc.returncode == 2 and "empty.npz: validation data is empty (x has 0 samples)" in error_line(proc)


def test_validation_labels_out_of_range_are_refused(data: Path) -> None:
    np.savez(data / "v12.npz", x=np.zeros((3, 8, 8), np.uint8), y=np.array([1, 12, 3]))
    proc = build(data, "--out", str(data / "o"), "--labels", str(data / "labels.txt"), val="v12.npz")
    assert proc.returncode == 2
    assert error_line(proc).endswith("validation data: label 12 is out of range 0..9 (10 labels)")


def test_validation_without_labels_is_refused(data: Path) -> None:
    np.savez(data / "nolab.npz", x=np.zeros((3, 8, 8), np.uint8))
    proc = build(data, "--out", str(data / "o"), val="nolab.npz")
    assert proc.returncode == 2 and "needs labels 'y' next to 'x'" in error_line(proc)


def test_missing_model_and_wrong_suffix_are_named(data: Path) -> None:
    proc = build(data, "--out", str(data / "o"), model="nope.keras")
    assert proc.returncode == 2 and error_line(proc).endswith("nope.keras: model not found")
    (data / "m.h5").write_bytes(b"x")
    proc = build(data, "--out", str(data / "o"), model="m.h5")
    assert proc.returncode == 2 and "expected a .keras, .onnx, .pt2 or float .tflite file" in error_line(proc)
    (data / "m.tflite").write_bytes(b"x")  # build takes a float .tflite now: this one is no model at all
    proc = build(data, "--out", str(data / "o"), model="m.tflite")
    assert proc.returncode == 2 and "m.tflite" in error_line(proc), error_line(proc)
    (data / "m.onnx").write_bytes(b"\x00not an onnx file")
    proc = build(data, "--out", str(data / "o"), model="m.onnx")
    assert proc.returncode == 2 and "m.onnx: not an ONNX model" in error_line(proc), error_line(proc)


def test_corrupt_tflite_import_is_named(data: Path) -> None:
    (data / "bad.tflite").write_bytes(b"\x00" * 64)
    proc = run_cli("import", str(data / "bad.tflite"), "--labels", str(data / "labels.txt"), "--out", str(data / "o"))
    assert proc.returncode == 2
    assert error_line(proc).endswith("bad.tflite: not a TFLite flatbuffer (no 'TFL3' identifier)")
    assert not (data / "o").exists()


def test_inspect_prints_the_digest_and_flags_a_tampered_bundle(digits_bundle: Path, tmp_path: Path) -> None:
    proc = run_cli("inspect", str(digits_bundle))
    assert proc.returncode == 0 and "digest" in proc.stdout and "int8_accuracy_drop" in proc.stdout
    copy = tmp_path / "copy"
    shutil.copytree(digits_bundle, copy)
    (copy / "labels.txt").write_text("tampered\n")
    proc = run_cli("inspect", str(copy))
    assert proc.returncode == 2 and "labels.txt: expected" in proc.stdout


# ------------------------------------------------------------------ real TensorFlow builds


@pytest.mark.slow
def test_corrupt_keras_file_is_named(data: Path) -> None:
    proc = build(data, "--out", str(data / "o"))
    assert proc.returncode == 2 and "model.keras: cannot load as a Keras model" in error_line(proc)
    assert not (data / "o").exists() and leftovers(data) == []


@pytest.mark.slow
def test_calibration_of_the_wrong_shape_is_named(keras_models: Path, tmp_path: Path) -> None:
    np.savez(tmp_path / "c77.npz", x=np.zeros((5, 7, 7), np.uint8))
    np.savez(tmp_path / "v77.npz", x=np.zeros((5, 7, 7), np.uint8), y=np.zeros(5, np.int64))
    proc = build(
        tmp_path,
        "--out",
        str(tmp_path / "o"),
        model=str(keras_models / "digits_dyn.keras"),
        cal="c77.npz",
        val="v77.npz",
    )
    assert proc.returncode == 2
    assert error_line(proc).endswith("calibration data: samples have shape [7, 7, 1], the model input needs [8, 8, 1]")


@pytest.mark.slow
def test_dynamic_spatial_shapes_fail_for_edgetpu_with_exit_4(keras_models: Path, tmp_path: Path) -> None:
    proc = build(keras_models, "--out", str(tmp_path / "o"), "--target", "edgetpu", model="spatial_dyn.keras")
    assert proc.returncode == 4
    assert error_line(proc).endswith(
        "spatial_dyn.keras: not Edge TPU ready: input shape [None, None, None, 1] "
        "has dynamic dimensions besides the batch"
    )


@pytest.mark.slow
def test_unmappable_op_fails_the_edgetpu_target_by_pre_check(keras_models: Path, tmp_path: Path) -> None:
    proc = build(keras_models, "--out", str(tmp_path / "o"), "--target", "edgetpu", model="leaky.keras")
    assert proc.returncode == 4 and "graph cut at op 1 LEAKY_RELU" in error_line(proc)
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_bad_calibration_is_caught_by_the_accuracy_gate(keras_models: Path, tmp_path: Path) -> None:
    np.savez(tmp_path / "zeros.npz", x=np.zeros((50, 8, 8), np.uint8))
    out = tmp_path / "o"
    proc = run_cli(
        "build",
        str(keras_models / "digits_dyn.keras"),
        "--calibration",
        str(tmp_path / "zeros.npz"),
        "--validation",
        str(keras_models / "val.npz"),
        "--out",
        str(out),
        "--quiet",
    )
    assert proc.returncode == 3 and "accuracy gate failed: int8_accuracy_drop" in error_line(proc)
    assert not out.exists() and leftovers(tmp_path) == []
    report = json.loads((tmp_path / "o.gate-failed.json").read_text())
    assert report["gate"]["passed"] is False
    assert report["artifacts"]["model_int8.tflite"]["metrics"]["accuracy"] < 0.5


def test_a_model_below_the_accuracy_floor_is_refused_naming_the_floor(keras_models: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    proc = run_cli(
        "build",
        str(keras_models / "digits_dyn.keras"),
        "--calibration",
        str(keras_models / "val.npz"),
        "--validation",
        str(keras_models / "val.npz"),
        "--min-accuracy",
        "1.0",
        "--out",
        str(out),
        "--quiet",
    )
    line = error_line(proc)
    assert proc.returncode == 3 and "accuracy gate failed: int8_accuracy " in line and "below the floor 1.0" in line
    assert not out.exists()
    checks = json.loads((tmp_path / "o.gate-failed.json").read_text())["gate"]["checks"]
    assert [(c["name"], c["passed"]) for c in checks] == [("int8_accuracy_drop", True), ("int8_accuracy", False)]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["digits_dyn.keras", "saved_model"])
def test_dynamic_batch_keras_and_savedmodel_build_to_static_int8_bundles(
    keras_models: Path, tmp_path: Path, model: str
) -> None:
    out = tmp_path / "o"
    proc = run_cli(
        "build",
        str(keras_models / model),
        "--calibration",
        str(keras_models / "cal.npz"),
        "--validation",
        str(keras_models / "val.npz"),
        "--out",
        str(out),
        "--quiet",
        "--target",
        "edgetpu",
        "--name",
        "d",
        "--version",
        "3",
    )
    assert proc.returncode == 0, proc.stderr
    arts = {p.name: p.read_bytes() for p in out.iterdir() if p.name != MANIFEST_FILE}
    assert check_bundle((out / MANIFEST_FILE).read_bytes(), arts, None).ok
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["input"]["shape"] == [1, 8, 8, 1] and "shape_signature" not in report["model"]["input"]
    assert report["model"]["float_ops"] == [] and report["gate"]["passed"]
    assert report["edgetpu"]["precheck"]["fully_mapped"] is True
    assert len(report["lineage"]["model_sha256"]) == 64


def test_truncated_tflite_import_is_named_and_writes_nothing(data: Path, coral_models: Path) -> None:
    whole = (coral_models / "mobilenet_v1_0.25_128_quant.tflite").read_bytes()
    (data / "half.tflite").write_bytes(whole[: len(whole) // 2])
    proc = run_cli(
        "import",
        str(data / "half.tflite"),
        "--labels",
        str(coral_models / "imagenet_labels.txt"),
        "--out",
        str(data / "o"),
    )
    assert proc.returncode == 2 and "half.tflite: corrupt TFLite flatbuffer" in error_line(proc)
    assert not (data / "o").exists() and leftovers(data) == []


@pytest.mark.slow
def test_converter_segfault_is_a_toolchain_failure_naming_the_stage(keras_models: Path, tmp_path: Path) -> None:
    """A real crash: TensorFlow's int8 converter segfaults on an LSTM; the CLI survives it."""
    np.savez(tmp_path / "c.npz", x=np.random.default_rng(0).random((10, 8, 8)).astype(np.float32))
    np.savez(tmp_path / "v.npz", x=np.zeros((4, 8, 8), np.float32), y=np.zeros(4, np.int64))
    proc = build(
        tmp_path, "--out", str(tmp_path / "o"), model=str(keras_models / "lstm.keras"), cal="c.npz", val="v.npz"
    )
    assert proc.returncode == 5
    assert "TensorFlow conversion failed: child killed by signal 11 in stage int8" in error_line(proc)
    assert not (tmp_path / "o").exists() and leftovers(tmp_path) == []


@pytest.mark.slow
def test_corrupt_savedmodel_is_bad_input(tmp_path: Path) -> None:
    sm = tmp_path / "sm"
    sm.mkdir()
    (sm / "saved_model.pb").write_bytes(b"junk")
    np.savez(tmp_path / "c.npz", x=np.zeros((2, 8, 8), np.uint8))
    np.savez(tmp_path / "v.npz", x=np.zeros((2, 8, 8), np.uint8), y=np.zeros(2, np.int64))
    proc = build(tmp_path, "--out", str(tmp_path / "o"), model=str(sm), cal="c.npz", val="v.npz")
    assert proc.returncode == 2 and "sm: cannot load as a SavedModel" in error_line(proc)


def test_conversion_timeout_kills_the_child_and_names_the_stage(data: Path) -> None:
    import os
    import subprocess
    import sys

    from .conftest import REPO

    env = dict(os.environ, EDGEFLEET_CONVERT_TIMEOUT="0.5")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "compiler",
            "build",
            str(data / "model.keras"),
            "--calibration",
            str(data / "cal.npz"),
            "--validation",
            str(data / "val.npz"),
            "--out",
            str(data / "o"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 5
    assert "TensorFlow conversion failed: timed out after 0.5 s in stage" in error_line(proc)
    assert not (data / "o").exists() and leftovers(data) == []
