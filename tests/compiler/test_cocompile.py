"""Co-compiling (one edgetpu_compiler run over several models, so they share one Edge TPU's
parameter cache) against the fake compiler: it prints recorded real output
(``v16_two_segments_assembled.stdout``: two real v16 blocks, assembled, see data/edgetpu/README.md;
no public recording of a co-compiling run was found) and writes Coral's real co-compiled pair as
the outputs. What a real compiler prints for a co-compiling run is therefore not verified here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from compiler.edgetpu import run_together
from compiler.errors import BadInput
from compiler.graph import read_graph

from ..conftest import REPO

DATA = Path(__file__).parent / "data" / "edgetpu"
A, B = "mobilenet_v1_0.25_128_quant", "mobilenet_v1_0.5_160_quant"
PAIR = (f"{A}_cocompiled_with_{B}_edgetpu.tflite", f"{B}_cocompiled_with_{A}_edgetpu.tflite")


@pytest.fixture
def shim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, coral_models: Path) -> Path:
    p = tmp_path / "edgetpu_compiler"
    p.write_text(f'#!/bin/sh\nexec {sys.executable} {DATA / "fake_edgetpu_compiler.py"} "$@"\n')
    p.chmod(0o755)
    monkeypatch.setenv("FAKE_EDGETPU_ARGV", str(tmp_path / "argv.json"))
    monkeypatch.setenv("FAKE_EDGETPU_STDOUT", str(DATA / "v16_two_segments_assembled.stdout"))
    monkeypatch.setenv("FAKE_EDGETPU_OUTPUTS", os.pathsep.join(str(coral_models / f) for f in PAIR))
    return p


def models(coral: Path, stems: tuple[str, str] = (A, B)) -> list[tuple[str, bytes]]:
    return [(stem, (coral / f"{src}.tflite").read_bytes()) for stem, src in zip(stems, (A, B), strict=True)]


def test_both_models_go_to_one_compiler_run_and_each_gets_its_own_compiled_output(shim, coral_models, tmp_path):
    res = run_together(str(shim), models(coral_models), 60, min_runtime=13)
    argv = json.loads((tmp_path / "argv.json").read_text())
    assert argv[:6] == ["-s", "-o", argv[2], "-t", "60", "-m"] and argv[6] == "13"
    assert [Path(a).name for a in argv[7:]] == [f"{A}.tflite", f"{B}.tflite"]  # cache priority order
    assert res.problem is None, res.problem
    assert [p.name for p in res.outputs] == [f"{A}_edgetpu.tflite", f"{B}_edgetpu.tflite"]
    for part, real in zip(res.outputs, PAIR, strict=True):
        assert part.output == (coral_models / real).read_bytes()
        assert read_graph(part.output, part.name).edgetpu_compiled
    assert [(p.report.total_ops, p.report.ops_on_tpu) for p in res.outputs] == [(84, 84), (246, 246)]


def test_a_block_naming_the_other_models_output_is_refused(shim, coral_models):
    # the recording's second block names best-int8_edgetpu.tflite: make that the first model's output
    res = run_together(str(shim), models(coral_models, ("best-int8", "second")), 60)
    assert res.problem == (
        "second_edgetpu.tflite: block 1 of the compiler's output names "
        "runs/train/exp8/weights/best-int8_edgetpu.tflite, not second_edgetpu.tflite"
    )
    assert res.outputs[1].output is None and res.outputs[0].problem is None


def test_fewer_output_blocks_than_models_is_refused(shim, coral_models, monkeypatch):
    monkeypatch.setenv("FAKE_EDGETPU_STDOUT", str(DATA / "v16_search_delegate_partial.stdout"))
    res = run_together(str(shim), models(coral_models), 60)
    assert res.problem == f"{B}_edgetpu.tflite: the compiler printed 1 output block(s) for 2 models"


@pytest.mark.parametrize("stems", [("a",), ("a", "a"), ("a", "b/c")])
def test_co_compiling_needs_two_distinct_plain_stems(shim, coral_models, stems):
    with pytest.raises(BadInput, match="2 or more distinct file stems"):
        run_together(str(shim), [(s, b"x") for s in stems], 60)


def test_the_cli_writes_each_output_and_a_report(shim, coral_models, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "EDGEFLEET_EDGETPU_COMPILER": str(shim)}
    out = tmp_path / "co"
    argv = [sys.executable, "-m", "compiler", "cocompile", str(coral_models / f"{A}.tflite")]
    argv += [str(coral_models / f"{B}.tflite"), "--out", str(out)]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (out / f"{A}_edgetpu.tflite").read_bytes() == (coral_models / PAIR[0]).read_bytes()
    assert (out / f"{B}_edgetpu.tflite").read_bytes() == (coral_models / PAIR[1]).read_bytes()
    doc = json.loads((out / "cocompile.json").read_text())
    assert [m["input"] for m in doc["models"]] == [A, B] and f"{A}_edgetpu.tflite: 84/84 ops" in proc.stdout
    again = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert again.returncode == 2 and "already exists" in again.stderr
