"""compiler.edgetpu: the parser against real compiler outputs, and the wrapper's contract
against a fake compiler that replays them (tests/compiler/data/edgetpu/README.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from compiler.config import CompilerConfig
from compiler.edgetpu import parse, run, stage
from compiler.errors import NotEdgeTpuReady
from compiler.graph import read_graph

DATA = Path(__file__).parent / "data" / "edgetpu"
RECORDED = sorted(p.name for p in DATA.iterdir() if p.suffix in (".stdout", ".log"))


def text(name: str) -> str:
    return (DATA / name).read_text()


@pytest.mark.parametrize("name", RECORDED)
def test_every_recorded_output_parses_and_only_failures_carry_an_error(name: str) -> None:
    rep = parse(text(name))
    failed = name in ("v14_internal_error.stdout", "v20_parse_error.stdout")
    assert (rep.error is not None) == failed
    assert not (failed and rep.compiled)


def test_partial_mapping_with_exit_zero_is_reported_as_partial() -> None:
    rep = parse(text("v16_efficientdet.stdout"), text("v16_efficientdet.log"))
    assert rep.version == "16.0.384591198" and rep.compiled and rep.error is None
    assert (rep.ops_on_tpu, rep.ops_on_cpu, rep.total_ops, rep.subgraphs) == (264, 3, 267, 1)
    assert not rep.fully_mapped and not rep.counts_inferred
    assert rep.on_chip_used == round(4.21 * 1024 ** 2) and rep.off_chip_used == 0
    assert rep.on_chip_remaining == round(3.29 * 1024 ** 2)
    assert rep.min_runtime == 14
    assert [(r.op, r.count, r.mapped) for r in rep.rows] == [
        ("ADD", 42, True), ("CUSTOM", 1, False), ("DEQUANTIZE", 2, False), ("QUANTIZE", 1, True)]
    assert rep.unmapped()[0].status == "Operation is working on an unsupported data type"


def test_internal_compiler_error_is_an_error_not_a_success() -> None:
    rep = parse(text("v14_internal_error.stdout"))
    assert rep.error == "Internal compiler error. Aborting!" and not rep.compiled
    assert rep.version == "14.1.317412892" and rep.min_runtime == 13


def test_wrapped_paragraph_still_yields_the_printed_counts() -> None:
    rep = parse(text("v14_wrapped_see_log.stdout"))
    assert (rep.ops_on_tpu, rep.ops_on_cpu, rep.total_ops) == (6, 18, 24)
    assert rep.on_chip_used == 60 * 1024 and rep.input_bytes == round(28.19 * 1024)


def test_too_low_min_runtime_succeeds_with_zero_subgraphs_and_is_not_mapped() -> None:
    rep = parse(text("v15_min_runtime_11_partial.stdout"))
    assert rep.compiled and rep.subgraphs == 0 and rep.ops_on_tpu == 0
    assert not rep.fully_mapped


def test_table_rows_keep_one_row_per_op_and_status() -> None:
    rep = parse(text("v21_table_partial.stdout"))
    assert rep.version == "2.1.302470888" and rep.min_runtime == 13
    concat = [(r.count, r.status) for r in rep.rows if r.op == "CONCATENATION"]
    assert concat == [(1, "More than one subgraph is not supported"), (3, "Mapped to Edge TPU")]
    assert rep.on_chip_remaining == round(7.75 * 1024) and rep.off_chip_used == round(1.22 * 1024 ** 2)


def test_no_partial_paragraph_means_everything_mapped_flagged_as_inferred() -> None:
    rep = parse(text("v16_search_delegate_partial.stdout"))
    assert rep.delegate_search and rep.counts_inferred
    assert (rep.ops_on_tpu, rep.ops_on_cpu) == (246, 0) and rep.fully_mapped
    assert rep.off_chip_used == round(41.75 * 1024)
    assert len(rep.rows) == 8 and all(r.mapped for r in rep.rows)


def test_op_version_parse_failure_names_the_op() -> None:
    rep = parse(text("v20_parse_error.stdout"))
    assert rep.error == "ERROR: Didn't find op for builtin opcode 'RELU' version '2'"
    assert not rep.compiled and rep.min_runtime == 12


def test_counts_that_do_not_add_up_are_reported_as_printed() -> None:
    rep = parse(text("yolov4_leaky_excerpt.stdout"))
    assert rep.version is None and (rep.ops_on_tpu, rep.ops_on_cpu, rep.total_ops) == (1, 962, 962)
    assert not rep.fully_mapped


# ------------------------------------------------------------------ the wrapper vs a fake binary

@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    shim = tmp_path / "edgetpu_compiler"
    shim.write_text(f"#!/bin/sh\nexec {sys.executable} {DATA / 'fake_edgetpu_compiler.py'} \"$@\"\n")
    shim.chmod(0o755)
    argv_file = tmp_path / "argv.json"
    monkeypatch.setenv("FAKE_EDGETPU_ARGV", str(argv_file))

    def configure(stdout: str, output: str = "copy", rc: int = 0, log: str | None = None) -> Path:
        monkeypatch.setenv("FAKE_EDGETPU_STDOUT", str(DATA / stdout))
        monkeypatch.setenv("FAKE_EDGETPU_OUTPUT", output)
        monkeypatch.setenv("FAKE_EDGETPU_RC", str(rc))
        if log:
            monkeypatch.setenv("FAKE_EDGETPU_LOG", str(DATA / log))
        return shim

    configure.argv = lambda: json.loads(argv_file.read_text())  # type: ignore[attr-defined]
    return configure


def _int8(digits_bundle: Path) -> bytes:
    return (digits_bundle / "model_int8.tflite").read_bytes()


def test_wrapper_passes_show_outdir_timeout_and_min_runtime(fake, digits_bundle: Path, coral_models: Path) -> None:
    shim = fake("v16_search_delegate_partial.stdout", str(coral_models / "mobilenet_v1_0.25_128_quant_edgetpu.tflite"))
    res = run(str(shim), _int8(digits_bundle), 60, min_runtime=13, segments=2)
    argv = fake.argv()
    assert argv[0] == "-s" and argv[1] == "-o" and "-t" in argv
    assert argv[argv.index("-m") + 1] == "13" and argv[argv.index("-n") + 1] == "2"
    assert argv[-1].endswith("model_int8.tflite")
    assert res.problem is None and res.output is not None
    assert read_graph(res.output).edgetpu_compiled


def test_copied_input_is_detected_as_not_a_compiled_model(fake, digits_bundle: Path) -> None:
    res = run(str(fake("v16_search_delegate_partial.stdout", "copy")), _int8(digits_bundle), 60)
    assert res.output is None and "no edgetpu-custom-op" in (res.problem or "")


def test_stub_output_after_a_failed_compile_is_rejected(fake, digits_bundle: Path) -> None:
    res = run(str(fake("v14_internal_error.stdout", "stub", rc=1)), _int8(digits_bundle), 60)
    assert res.problem == "exit code 1: Internal compiler error. Aborting!" and res.output is None
    res = run(str(fake("v16_search_delegate_partial.stdout", "stub")), _int8(digits_bundle), 60)
    assert res.problem == "model_int8_edgetpu.tflite is a 1024-byte stub"


def test_zero_subgraphs_success_is_not_accepted(fake, digits_bundle: Path, coral_models: Path) -> None:
    shim = fake("v15_min_runtime_11_partial.stdout", str(coral_models / "mobilenet_v1_0.25_128_quant_edgetpu.tflite"))
    res = run(str(shim), _int8(digits_bundle), 60, min_runtime=11)
    assert res.problem is not None and "0 Edge TPU subgraphs" in res.problem


def test_stage_keeps_a_partial_model_for_cpu_target_and_refuses_it_for_edgetpu(
        fake, digits_bundle: Path, coral_models: Path) -> None:
    shim = fake("v16_efficientdet.stdout", str(coral_models / "mobilenet_v1_0.25_128_quant_edgetpu.tflite"),
                log="v16_efficientdet.log")
    cfg = CompilerConfig(edgetpu_compiler=str(shim), edgetpu_timeout_s=60)
    g = read_graph(_int8(digits_bundle))
    doc, files, policy, runtime = stage(cfg, g, _int8(digits_bundle), "cpu")
    assert doc["compiled"] and doc["ops_on_cpu"] == 3 and "partially mapped" in doc["note"]
    assert [f.role for f in files] == ["tflite_edgetpu"] and policy == "optional" and runtime == 14
    assert doc["precheck"]["fully_mapped"] is True
    with pytest.raises(NotEdgeTpuReady, match="partial mapping, 3 of 267 ops stay on the CPU"):
        stage(cfg, g, _int8(digits_bundle), "edgetpu")


def test_stage_without_usable_output_falls_back_to_cpu_only(fake, digits_bundle: Path) -> None:
    cfg = CompilerConfig(edgetpu_compiler=str(fake("v14_internal_error.stdout", "none", rc=1)))
    doc, files, policy, runtime = stage(cfg, read_graph(_int8(digits_bundle)), _int8(digits_bundle), "cpu")
    assert not doc["compiled"] and files == [] and runtime is None
    assert doc["note"].startswith("edgetpu_compiler failed: exit code 1")
