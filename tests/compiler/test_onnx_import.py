"""compiler.onnx_import without TensorFlow or torch: what an ONNX file must be, the layout the
converted model gets, and preprocessing carried so that a device and the cloud feed the same
pixels (uniform values as scale/offset, per-channel or BGR folded into the graph)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compiler.errors import BadInput
from compiler.inference import OnnxRunner
from compiler.onnx_import import FOLD_NODE, fold_preprocess, plan_preprocess, read, tflite_input_shape, to_tflite_layout


def _model(inputs: list[tuple[str, int, list[int | str]]], n_out: int = 1, conv: bool = False) -> bytes:
    """A tiny graph: Identity of the first input (or a 1x1 Conv with fixed weights, 3 -> 2)."""
    ins = [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs]
    inits = []
    if conv:
        w = np.arange(6, dtype=np.float32).reshape(2, 3, 1, 1) / 10
        inits = [numpy_helper.from_array(w, "w")]
        nodes = [helper.make_node("Conv", [inputs[0][0], "w"], ["y0"])]
        outs = [helper.make_tensor_value_info("y0", TensorProto.FLOAT, [1, 2, *inputs[0][2][2:]])]
    else:
        nodes = [helper.make_node("Identity", [inputs[0][0]], [f"y{i}"]) for i in range(n_out)]
        outs = [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, inputs[0][2]) for i in range(n_out)]
    g = helper.make_graph(nodes, "g", ins, outs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m.SerializeToString()


def test_a_pytorch_image_input_is_nchw_and_converts_to_nhwc() -> None:
    src = read(_model([("input", TensorProto.FLOAT, [1, 3, 32, 24])]), "m.onnx")
    assert src.layout == "nchw" and src.image_spec() == ((32, 24), 3)
    assert tflite_input_shape(src) == (1, 32, 24, 3)
    x = np.random.default_rng(0).random((2, 3, 32, 24), dtype=np.float32)
    moved = to_tflite_layout(x, src, "val.npz")
    assert moved.shape == (2, 32, 24, 3) and moved[1, 5, 7, 2] == x[1, 2, 5, 7]
    assert to_tflite_layout(moved, src, "val.npz") is moved  # already NHWC: kept


def test_a_dynamic_batch_is_taken_and_other_dynamic_dimensions_are_refused() -> None:
    assert read(_model([("x", TensorProto.FLOAT, ["N", 10])]), "m").input_shape == (None, 10)
    with pytest.raises(BadInput, match="dimension 2 is dynamic.*fixed input shapes"):
        read(_model([("x", TensorProto.FLOAT, [1, 3, "H", 8])]), "m.onnx")


def test_models_the_build_cannot_take_are_refused_with_the_reason() -> None:
    with pytest.raises(BadInput, match="2 inputs and 1 outputs"):
        read(_model([("a", TensorProto.FLOAT, [1, 4]), ("b", TensorProto.FLOAT, [1, 4])]), "m")
    with pytest.raises(BadInput, match="1 inputs and 2 outputs"):
        read(_model([("a", TensorProto.FLOAT, [1, 4])], n_out=2), "m")
    with pytest.raises(BadInput, match="element type 2; build takes a float input"):
        read(_model([("a", TensorProto.UINT8, [1, 4])]), "m")
    with pytest.raises(BadInput, match="m.onnx: not an ONNX model"):
        read(b"\x00not protobuf at all" * 3, "m.onnx")


def test_samples_in_neither_layout_are_refused_naming_both() -> None:
    src = read(_model([("input", TensorProto.FLOAT, [1, 3, 8, 8])]), "m")
    with pytest.raises(BadInput, match=r"shape \[8, 8\].*takes \[3, 8, 8\] \(or \[8, 8, 3\] as NHWC\)"):
        to_tflite_layout(np.zeros((4, 8, 8), np.float32), src, "val.npz")


@pytest.mark.parametrize(
    ("mean", "std", "order", "channels", "want"),
    [
        (None, None, "rgb", 3, None),  # nothing asked: --scale/--offset stand
        ([0.5], [0.5], "rgb", 3, (1 / 127.5, -1.0, None)),  # uniform: a scale and an offset
        ([0.1307], [0.3081], "rgb", 1, (1 / (255 * 0.3081), -0.1307 / 0.3081, None)),  # MNIST's
        (
            [0.485, 0.456, 0.406],
            [0.229, 0.224, 0.225],
            "rgb",
            3,
            (1 / 255, 0.0, {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "channel_order": "rgb"}),
        ),
        (None, None, "bgr", 3, (1 / 255, 0.0, {"mean": [0.0] * 3, "std": [1.0] * 3, "channel_order": "bgr"})),
    ],
)
def test_preprocess_plan(mean, std, order, channels, want) -> None:
    plan = plan_preprocess(mean, std, order, channels)
    if want is None:
        assert plan is None
        return
    assert plan is not None
    assert plan.scale == pytest.approx(want[0]) and plan.offset == pytest.approx(want[1]) and plan.fold == want[2]


@pytest.mark.parametrize(
    ("mean", "std", "order", "channels", "match"),
    [
        ([0.1, 0.2], None, "rgb", 3, "give 1 or 3 values"),
        (None, [0.5, 0.0, 0.5], "rgb", 3, "finite number > 0"),
        (None, None, "bgr", 1, "bgr needs a 3-channel input"),
        (None, None, "hsv", 3, "must be rgb or bgr"),
    ],
)
def test_preprocess_that_cannot_be_carried_is_refused(mean, std, order, channels, match) -> None:
    with pytest.raises(BadInput, match=match):
        plan_preprocess(mean, std, order, channels)


def test_per_channel_normalization_and_bgr_fold_into_the_graph_so_rgb_pixels_give_the_trained_input() -> None:
    src = read(_model([("input", TensorProto.FLOAT, [1, 3, 4, 5])], conv=True), "m.onnx")
    plan = plan_preprocess([0.485, 0.456, 0.406], [0.229, 0.224, 0.225], "bgr", 3)
    assert plan is not None and plan.fold is not None
    folded = fold_preprocess(src, plan.fold)
    assert folded.input_name == "input" and folded.input_shape == src.input_shape
    nodes = onnx.load_from_string(folded.data).graph.node
    assert nodes[0].name == FOLD_NODE and nodes[0].op_type == "Conv"

    pixels = np.random.default_rng(1).integers(0, 256, (6, 4, 5, 3)).astype(np.float32)  # RGB, NHWC
    rgb = pixels / 255.0  # what the device and the cloud feed: pixel * scale + offset
    bgr = rgb[..., ::-1]
    trained = (bgr - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])  # the model's input
    want = OnnxRunner(src.data, nchw=True).scores(trained.astype(np.float32))
    got = OnnxRunner(folded.data, nchw=True).scores(rgb.astype(np.float32))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_folding_needs_an_nchw_image_input() -> None:
    src = read(_model([("x", TensorProto.FLOAT, [1, 30])]), "m.onnx")
    with pytest.raises(BadInput, match="folded into NCHW image inputs only"):
        fold_preprocess(src, {"mean": [0.5], "std": [0.2], "channel_order": "rgb"})
