"""compiler.precheck: predicted Edge TPU mapping vs what real compilers did."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from compiler.edgetpu import parse
from compiler.graph import Graph, OpInfo, TensorInfo, read_graph_file
from compiler.precheck import LIMITATION, MAPPED, NOT_SUPPORTED, RULES, SUBGRAPH, UNSUPPORTED_TYPE, VERSION, predict

DATA = Path(__file__).parent / "data" / "edgetpu"


def test_coral_mobilenet_v1_is_predicted_fully_mapped_as_the_real_compiler_did(coral_models: Path) -> None:
    pred = predict(read_graph_file(coral_models / "mobilenet_v1_0.25_128_quant.tflite"))
    compiled = read_graph_file(coral_models / "mobilenet_v1_0.25_128_quant_edgetpu.tflite")
    real_cpu_ops = [op.name for op in compiled.ops if op.custom != "edgetpu-custom-op"]
    assert real_cpu_ops == []  # the real compiler mapped everything into one custom op
    assert pred.fully_mapped and pred.predicted_tpu_ops == pred.total_ops == 31
    assert pred.cut_at is None and pred.to_dict()["fits_on_chip"]


def test_an_already_compiled_model_is_recognised(coral_models: Path) -> None:
    pred = predict(read_graph_file(coral_models / "mobilenet_v1_0.25_128_quant_edgetpu.tflite"))
    assert pred.edgetpu_compiled and pred.summary().startswith("already compiled")


def test_digits_int8_maps_and_its_float_twin_is_cut_at_the_first_op(digits_bundle: Path) -> None:
    assert predict(read_graph_file(digits_bundle / "model_int8.tflite")).fully_mapped
    pred = predict(read_graph_file(digits_bundle / "model_float.tflite"))
    assert pred.cut_at == 0 and pred.predicted_tpu_ops == 0
    assert pred.ops[0].status == UNSUPPORTED_TYPE
    assert all(p.status in (UNSUPPORTED_TYPE, SUBGRAPH) for p in pred.ops)


def _recorded_rows() -> list[tuple[str, str, str]]:
    rows = []
    for f in sorted(DATA.iterdir()):
        if f.suffix in (".stdout", ".log"):
            rows += [(f.name, r.op, r.status) for r in parse(f.read_text()).rows]
    return rows


@pytest.mark.parametrize("source,op,status", _recorded_rows())
def test_op_list_agrees_with_every_recorded_compiler_row(source: str, op: str, status: str) -> None:
    """An op the real compiler mapped, or left out only for a subgraph or an unspecified limit,
    is on our list; an op refused for its data type is one our dtype rule catches."""
    if status in (MAPPED, SUBGRAPH, LIMITATION):
        assert op in RULES, f"{source}: {op} was {status!r} but is not on our list"
    elif status == UNSUPPORTED_TYPE:
        assert op in ("DEQUANTIZE", "CUSTOM"), f"{source}: unexpected dtype failure for {op}"
    else:
        assert op not in RULES


# ---------------------------------------------------------------- table tests on small graphs


def t(i: int, dtype: str = "INT8", shape=(1, 8, 8, 4), constant: bool = False, sig=None) -> TensorInfo:
    return TensorInfo(i, f"t{i}", dtype, tuple(shape), tuple(sig or shape), (0.1,), (0,), constant)


def chain(
    *ops: tuple[str, int, dict], tensors: list[TensorInfo] | None = None, consts: dict[int, np.ndarray] | None = None
) -> Graph:
    """ops in a line: op k reads tensor k and writes tensor k+1."""
    tens = tensors or [t(i) for i in range(len(ops) + 1)]
    infos = tuple(OpInfo(k, name, None, ver, (k,), (k + 1,), 0, opts) for k, (name, ver, opts) in enumerate(ops))
    return Graph(infos, tuple(tens), (0,), (len(ops),), 1, 1000, consts or {})


def test_leaky_relu_cuts_the_graph_and_later_supported_ops_need_a_second_subgraph() -> None:
    pred = predict(chain(("CONV_2D", 3, {}), ("LEAKY_RELU", 1, {}), ("CONV_2D", 3, {})))
    assert [p.status for p in pred.ops] == [MAPPED, NOT_SUPPORTED, SUBGRAPH]
    assert pred.cut_at == 1 and pred.predicted_tpu_ops == 1


@pytest.mark.parametrize(
    "op,version,opts,status",
    [
        ("CONV_2D", 6, {}, VERSION),  # grouped conv
        ("FULLY_CONNECTED", 5, {}, VERSION),  # keep_num_dims form
        ("FULLY_CONNECTED", 4, {"KeepNumDims": True}, LIMITATION),
        ("FULLY_CONNECTED", 4, {"WeightsFormat": 1}, LIMITATION),
        ("MAX_POOL_2D", 2, {"FusedActivationFunction": 1}, LIMITATION),
        ("AVERAGE_POOL_2D", 2, {"FusedActivationFunction": 0}, MAPPED),
        ("TRANSPOSE_CONV", 4, {}, VERSION),
        ("RESIZE_BILINEAR", 3, {}, VERSION),
        ("GATHER", 1, {}, NOT_SUPPORTED),
        ("STRIDED_SLICE", 1, {"EllipsisMask": 1}, LIMITATION),
    ],
)
def test_op_specific_limits(op: str, version: int, opts: dict, status: str) -> None:
    assert predict(chain((op, version, opts))).ops[0].status == status


def test_mean_over_channels_is_a_limitation_and_over_xy_is_mapped() -> None:
    for axes, status in (([1, 2], MAPPED), ([3], LIMITATION)):
        tens = [t(0), t(1, shape=(1, 1, 1, 4)), t(2, "INT32", (len(axes),), constant=True)]
        g = Graph(
            (OpInfo(0, "MEAN", None, 2, (0, 2), (1,)),),
            tuple(tens),
            (0,),
            (1,),
            1,
            10,
            {2: np.array(axes, np.int32).view(np.uint8)},
        )
        assert predict(g).ops[0].status == status


def test_softmax_over_more_than_16000_classes_is_not_mapped() -> None:
    tens = [t(0, shape=(1, 20000)), t(1, shape=(1, 20000))]
    assert predict(chain(("SOFTMAX", 2, {}), tensors=tens)).ops[0].status == LIMITATION


def test_five_d_tensor_with_outer_dimension_is_not_mapped() -> None:
    tens = [t(0, shape=(1, 2, 4, 4, 4)), t(1, shape=(1, 2, 4, 4, 4))]
    assert predict(chain(("ADD", 1, {}), tensors=tens)).ops[0].status == LIMITATION


def test_dynamic_batch_blocks_the_whole_model() -> None:
    tens = [t(0, sig=(-1, 8, 8, 4)), t(1)]
    pred = predict(chain(("CONV_2D", 3, {}), tensors=tens))
    assert pred.blockers and pred.predicted_tpu_ops == 0 and not pred.fully_mapped


def test_quantize_at_the_input_needs_runtime_13() -> None:
    tens = [t(0, "UINT8"), t(1), t(2)]
    pred = predict(chain(("QUANTIZE", 1, {}), ("CONV_2D", 3, {}), tensors=tens))
    assert pred.fully_mapped and pred.min_runtime == 13
