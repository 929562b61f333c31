"""compiler.edgetpu: the parser against real compiler outputs, and the wrapper's contract
against a fake compiler that replays them (tests/compiler/data/edgetpu/README.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from compiler.config import CompilerConfig
from compiler.edgetpu import combine, parse, parse_blocks, run, seg_name, split_blocks, stage
from compiler.errors import NotEdgeTpuReady
from compiler.graph import read_graph

DATA = Path(__file__).parent / "data" / "edgetpu"
RECORDED = sorted(p.name for p in DATA.iterdir() if p.suffix in (".stdout", ".log"))


def text(name: str) -> str:
    return (DATA / name).read_text()


@pytest.mark.parametrize("name", RECORDED)
def test_every_recorded_output_parses_and_only_failures_carry_an_error(name: str) -> None:
    rep = combine(parse_blocks(text(name)))  # one block per output; a failed segment fails the whole
    failed = name in ("v14_internal_error.stdout", "v20_parse_error.stdout", "v16_segments_557_partial.stdout")
    assert (rep.error is not None) == failed
    assert not (failed and rep.compiled)


def test_partial_mapping_with_exit_zero_is_reported_as_partial() -> None:
    rep = parse(text("v16_efficientdet.stdout"), text("v16_efficientdet.log"))
    assert rep.version == "16.0.384591198" and rep.compiled and rep.error is None
    assert (rep.ops_on_tpu, rep.ops_on_cpu, rep.total_ops, rep.subgraphs) == (264, 3, 267, 1)
    assert not rep.fully_mapped and not rep.counts_inferred
    assert rep.on_chip_used == round(4.21 * 1024**2) and rep.off_chip_used == 0
    assert rep.on_chip_remaining == round(3.29 * 1024**2)
    assert rep.min_runtime == 14
    assert [(r.op, r.count, r.mapped) for r in rep.rows] == [
        ("ADD", 42, True),
        ("CUSTOM", 1, False),
        ("DEQUANTIZE", 2, False),
        ("QUANTIZE", 1, True),
    ]
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
    assert rep.on_chip_remaining == round(7.75 * 1024) and rep.off_chip_used == round(1.22 * 1024**2)


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


def test_a_recorded_two_segment_run_splits_into_one_block_per_segment() -> None:
    header, blocks = split_blocks(text("v16_segments_557_partial.stdout"))
    assert header.strip() == "Edge TPU Compiler version 16.0.384591198" and len(blocks) == 2
    first, second = parse_blocks(text("v16_segments_557_partial.stdout"))
    assert first.output_model == "efficientdet_lite3_512_ptq_segment_0_of_2_edgetpu.tflite"
    assert first.compiled and first.error is None and first.version == "16.0.384591198"
    assert (first.total_ops, first.ops_on_tpu, first.ops_on_cpu, first.subgraphs) == (84, 84, 0, 1)
    assert first.on_chip_used == round(6.02 * 1024**2) and first.off_chip_used == 0
    assert not second.compiled and second.version == "16.0.384591198"
    assert second.error == "ERROR: Restored original execution plan after delegate application failure."


def test_assembled_segment_blocks_keep_their_own_counts_memory_and_tables() -> None:
    reps = parse_blocks(text("v16_two_segments_assembled.stdout"))
    assert [(r.total_ops, r.ops_on_tpu, r.ops_on_cpu) for r in reps] == [(84, 84, 0), (246, 246, 0)]
    assert [r.off_chip_used for r in reps] == [0, round(41.75 * 1024)]
    assert [len(r.rows) for r in reps] == [0, 8] and reps[1].delegate_search and not reps[0].delegate_search
    assert all(r.fully_mapped for r in reps)


def test_a_single_model_output_is_one_block_and_parses_as_before() -> None:
    for name in ("v16_efficientdet.stdout", "v14_offchip_partial.stdout", "v16_search_delegate_partial.stdout"):
        (block,) = parse_blocks(text(name))
        assert block == parse(text(name))


# ------------------------------------------------------------------ the wrapper vs a fake binary


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    shim = tmp_path / "edgetpu_compiler"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} {DATA / "fake_edgetpu_compiler.py"} "$@"\n')
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
    res = run(str(shim), _int8(digits_bundle), 60, min_runtime=13)
    argv = fake.argv()
    assert argv[0] == "-s" and argv[1] == "-o" and "-t" in argv
    assert argv[argv.index("-m") + 1] == "13" and "-n" not in argv
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
    fake, digits_bundle: Path, coral_models: Path
) -> None:
    shim = fake(
        "v16_efficientdet.stdout",
        str(coral_models / "mobilenet_v1_0.25_128_quant_edgetpu.tflite"),
        log="v16_efficientdet.log",
    )
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


COMPILED = "mobilenet_v1_0.25_128_quant_edgetpu.tflite"


def test_segments_are_checked_and_returned_in_order(fake, digits_bundle: Path, coral_models: Path) -> None:
    shim = fake("v16_two_segments_assembled.stdout", str(coral_models / COMPILED))
    res = run(str(shim), _int8(digits_bundle), 60, segments=2)
    assert fake.argv()[fake.argv().index("-n") + 1] == "2"
    assert res.problem is None and res.output is None
    assert [o.name for o in res.outputs] == [
        "model_int8_segment_0_of_2_edgetpu.tflite",
        "model_int8_segment_1_of_2_edgetpu.tflite",
    ]
    assert all(
        o.problem is None and o.output is not None and read_graph(o.output).edgetpu_compiled for o in res.outputs
    )
    assert [o.report.total_ops for o in res.outputs] == [84, 246]
    assert (res.report.total_ops, res.report.ops_on_cpu, res.report.subgraphs) == (330, 0, 2)


def test_a_segment_that_failed_to_compile_fails_the_run(fake, digits_bundle: Path, coral_models: Path) -> None:
    res = run(
        str(fake("v16_segments_557_partial.stdout", str(coral_models / COMPILED))), _int8(digits_bundle), 60, segments=2
    )
    assert res.outputs[0].problem is None and res.outputs[1].output is None
    assert res.problem == (
        "model_int8_segment_1_of_2_edgetpu.tflite: "
        "ERROR: Restored original execution plan after delegate application failure."
    )


def test_segment_files_that_are_copies_or_missing_are_rejected(fake, digits_bundle: Path) -> None:
    res = run(str(fake("v16_two_segments_assembled.stdout", "copy")), _int8(digits_bundle), 60, segments=2)
    assert "model_int8_segment_0_of_2_edgetpu.tflite holds no edgetpu-custom-op" in (res.problem or "")
    res = run(str(fake("v16_two_segments_assembled.stdout", "none")), _int8(digits_bundle), 60, segments=2)
    assert res.problem == (
        "model_int8_segment_0_of_2_edgetpu.tflite: no model_int8_segment_0_of_2_edgetpu.tflite was written"
    )


def test_fewer_blocks_than_segments_or_a_block_naming_another_segment_is_refused(
    fake, digits_bundle: Path, coral_models: Path
) -> None:
    res = run(
        str(fake("v16_search_delegate_partial.stdout", str(coral_models / COMPILED))),
        _int8(digits_bundle),
        60,
        segments=2,
    )
    assert res.problem == (
        "model_int8_segment_1_of_2_edgetpu.tflite: the compiler printed 1 output block(s) "
        "for 2 segments; none for model_int8_segment_1_of_2_edgetpu.tflite"
    )
    res = run(
        str(fake("v16_two_segments_assembled.stdout", str(coral_models / COMPILED))),
        _int8(digits_bundle),
        60,
        segments=3,
    )
    assert res.outputs[0].problem == (
        "block 0 of the compiler's output names "
        "efficientdet_lite3_512_ptq_segment_0_of_2_edgetpu.tflite, not segment 0 of 3"
    )


def test_stage_with_segments_bundles_each_segment_in_order(fake, digits_bundle: Path, coral_models: Path) -> None:
    cfg = CompilerConfig(
        edgetpu_compiler=str(fake("v16_two_segments_assembled.stdout", str(coral_models / COMPILED))),
        edgetpu_timeout_s=60,
    )
    doc, files, policy, runtime = stage(
        cfg, read_graph(_int8(digits_bundle)), _int8(digits_bundle), "edgetpu", segments=2
    )
    assert [(f.name, f.role) for f in files] == [
        (seg_name(0, 2), "tflite_edgetpu_segment"),
        (seg_name(1, 2), "tflite_edgetpu_segment"),
    ]
    assert seg_name(1, 2) == "model_segment_1_of_2_edgetpu.tflite"
    assert doc["segments"] == 2 and doc["compiled"] and policy == "optional" and runtime == 14
    assert [s["total_ops"] for s in doc["segment_reports"]] == [84, 246]
    assert [s["off_chip_used"] for s in doc["segment_reports"]] == [0, round(41.75 * 1024)]
    assert "2 pipelined segments" in doc["note"]
    cfg = CompilerConfig(
        edgetpu_compiler=str(fake("v16_segments_557_partial.stdout", str(coral_models / COMPILED))),
        edgetpu_timeout_s=60,
    )
    with pytest.raises(NotEdgeTpuReady, match="segment_1_of_2_edgetpu.tflite: ERROR: Restored"):
        stage(cfg, read_graph(_int8(digits_bundle)), _int8(digits_bundle), "edgetpu", segments=2)
