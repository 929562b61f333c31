"""compiler.pipeline with an Edge TPU compiler on PATH (the fake that replays a real output)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from protocol.bundle import MANIFEST_FILE, check_bundle, parse_manifest
from protocol.signing import Envelope

from .conftest import REPO

DATA = Path(__file__).parent / "data" / "edgetpu"


@pytest.mark.slow
def test_fully_mapped_compile_adds_the_edgetpu_artifact_and_its_runtime(tmp_path: Path, coral_models: Path) -> None:
    shim = tmp_path / "edgetpu_compiler"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} {DATA / "fake_edgetpu_compiler.py"} "$@"\n')
    shim.chmod(0o755)
    env = dict(
        os.environ,
        EDGEFLEET_EDGETPU_COMPILER=str(shim),
        FAKE_EDGETPU_STDOUT=str(DATA / "v16_search_delegate_partial.stdout"),
        FAKE_EDGETPU_OUTPUT=str(coral_models / "mobilenet_v1_0.25_128_quant_edgetpu.tflite"),
        SOURCE_DATE_EPOCH="1700000000",
        FAKE_EDGETPU_ARGV=str(tmp_path / "argv.json"),
    )
    out = tmp_path / "b"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "compiler",
            "digits",
            "--out",
            str(out),
            "--quiet",
            "--epochs",
            "2",
            "--target",
            "edgetpu",
            "--min-runtime",
            "13",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    arts = {p.name: p.read_bytes() for p in out.iterdir() if p.name != MANIFEST_FILE}
    assert check_bundle((out / MANIFEST_FILE).read_bytes(), arts, None).ok
    m = parse_manifest(Envelope.parse((out / MANIFEST_FILE).read_bytes()).payload)
    assert m.artifact("tflite_edgetpu").name == "model_edgetpu.tflite"
    argv = json.loads((tmp_path / "argv.json").read_text())
    assert argv[:2] == ["-s", "-o"] and argv[argv.index("-m") + 1] == "13"
    assert m.requirements.edgetpu == "optional" and m.requirements.min_edgetpu_runtime == 13
    assert m.created == 1700000000
    report = json.loads((out / "report.json").read_text())
    assert report["edgetpu"]["compiled"] and report["edgetpu"]["compiler"] == "16.0.384591198"
    assert report["edgetpu"]["report"]["counts_inferred"] is True


@pytest.mark.slow
def test_segments_build_bundles_each_segment_in_order_and_records_the_count(tmp_path: Path, coral_models: Path) -> None:
    shim = tmp_path / "edgetpu_compiler"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} {DATA / "fake_edgetpu_compiler.py"} "$@"\n')
    shim.chmod(0o755)
    env = dict(
        os.environ,
        EDGEFLEET_EDGETPU_COMPILER=str(shim),
        FAKE_EDGETPU_STDOUT=str(DATA / "v16_two_segments_assembled.stdout"),
        FAKE_EDGETPU_OUTPUT=str(coral_models / "mobilenet_v1_0.25_128_quant_edgetpu.tflite"),
        FAKE_EDGETPU_ARGV=str(tmp_path / "argv.json"),
    )
    out = tmp_path / "b"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "compiler",
            "digits",
            "--out",
            str(out),
            "--quiet",
            "--epochs",
            "2",
            "--target",
            "edgetpu",
            "--segments",
            "2",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    arts = {p.name: p.read_bytes() for p in out.iterdir() if p.name != MANIFEST_FILE}
    assert check_bundle((out / MANIFEST_FILE).read_bytes(), arts, None).ok
    m = parse_manifest(Envelope.parse((out / MANIFEST_FILE).read_bytes()).payload)
    argv = json.loads((tmp_path / "argv.json").read_text())
    assert argv[argv.index("-n") + 1] == "2"
    assert [a.name for a in m.artifacts if a.role == "tflite_edgetpu_segment"] == [
        "model_segment_0_of_2_edgetpu.tflite",
        "model_segment_1_of_2_edgetpu.tflite",
    ]
    assert not [a for a in m.artifacts if a.role == "tflite_edgetpu"]
    assert m.model["edgetpu"]["segments"] == 2 and m.requirements.edgetpu == "optional"
    report = json.loads((out / "report.json").read_text())
    assert [s["total_ops"] for s in report["edgetpu"]["segment_reports"]] == [84, 246]


def test_segments_out_of_range_are_refused_before_any_work(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "compiler", "digits", "--out", str(tmp_path / "b"), "--quiet", "--segments", "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].endswith("--segments: must be 1..64 (one Edge TPU per segment), got 0")
    assert not (tmp_path / "b").exists()
