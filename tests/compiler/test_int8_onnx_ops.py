"""ONNX ops that full-int8 TFLite gets wrong or cannot run, handled before onnx2tf: a padded
MaxPool is split into an exact Pad + MaxPool (onnx2tf's -3.4e38 pad killed the int8 ResNet-18,
docs/adr/0012), and exact GELU (Erf) is refused in one line naming the op and the fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compiler.onnx_import import explicit_maxpool_pads, int8_blockers, read
from tests.compiler.conftest import run_cli


def _pool_model(before: str, opset: int = 11, **pool: object) -> bytes:
    """x (1, 2, 7, 7) -> [before] -> MaxPool 3x3 stride 2 (pads 1 unless given) -> y."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 7, 7])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 4, 4])
    nodes, inits, feed = [], [], "x"
    if before == "relu":
        nodes.append(helper.make_node("Relu", ["x"], ["r"]))
        feed = "r"
    elif before == "clip0":
        inits += [numpy_helper.from_array(np.float32(0), "lo"), numpy_helper.from_array(np.float32(6), "hi")]
        nodes.append(helper.make_node("Clip", ["x", "lo", "hi"], ["r"]))
        feed = "r"
    args = {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], **pool}
    nodes.append(helper.make_node("MaxPool", [feed], ["y"], name="pool", **args))
    m = helper.make_model(
        helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", opset)]
    )
    m.ir_version = 7
    return m.SerializeToString()


def _run(data: bytes, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {"x": x})[0])


@pytest.mark.parametrize(
    ("before", "opset", "mode"),
    [("relu", 11, "constant"), ("clip0", 11, "constant"), ("none", 11, "edge"), ("none", 9, "edge")],
)
def test_a_padded_maxpool_becomes_an_exact_pad_then_pool(before: str, opset: int, mode: str) -> None:
    data = _pool_model(before, opset)
    out, done = explicit_maxpool_pads(data)
    assert done == [f"pool ({mode})"]
    m = onnx.load_from_string(out)
    assert [n.op_type for n in m.graph.node][-2:] == ["Pad", "MaxPool"]
    pool = m.graph.node[-1]
    assert all(a.name != "pads" for a in pool.attribute)
    # negative values at the border: a zero pad would win there, an edge pad must not
    x = np.random.default_rng(1).normal(-1.0, 1.0, (4, 2, 7, 7)).astype(np.float32)
    np.testing.assert_array_equal(_run(out, x), _run(data, x))


def test_maxpools_it_cannot_split_exactly_are_left_alone() -> None:
    for kw in ({"ceil_mode": 1}, {"pads": [0, 0, 0, 0]}, {"dilations": [2, 2]}):
        data = _pool_model("relu", **kw)
        assert explicit_maxpool_pads(data) == (data, [])


def _erf_model() -> bytes:
    """x (1, 3, 8, 8) -> Conv 1x1 -> exact GELU (x * 0.5 * (1 + erf(x / sqrt 2))), as torch exports F.gelu."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 8, 8])
    inits = [
        numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), "w"),
        numpy_helper.from_array(np.float32(1.4142135), "s2"),
        numpy_helper.from_array(np.float32(1.0), "one"),
        numpy_helper.from_array(np.float32(0.5), "half"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("Div", ["c", "s2"], ["d"]),
        helper.make_node("Erf", ["d"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["a"]),
        helper.make_node("Mul", ["c", "a"], ["m"]),
        helper.make_node("Mul", ["m", "half"], ["y"]),
    ]
    m = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", 11)])
    m.ir_version = 7
    return m.SerializeToString()


def test_int8_blockers_name_erf_and_the_tanh_gelu() -> None:
    assert int8_blockers(read(_erf_model(), "m").ops) == [
        "op Erf (exact GELU (torch nn.GELU() / F.gelu) or erf; use the tanh approximation, "
        "nn.GELU(approximate='tanh'), which int8 TFLite runs)"
    ]
    assert int8_blockers(["Conv", "Relu", "MaxPool", "Gemm"]) == []


def test_exact_gelu_is_refused_in_one_line_naming_erf_before_any_conversion(tmp_path: Path) -> None:
    model = tmp_path / "gelu.onnx"
    model.write_bytes(_erf_model())
    pixels = np.random.default_rng(0).integers(0, 256, (8, 8, 8, 3)).astype(np.uint8)
    np.savez(tmp_path / "cal.npz", x=pixels[:4])
    np.savez(tmp_path / "val.npz", x=pixels[4:], y=np.arange(4) % 2)
    proc = run_cli(
        "build", str(model), "--calibration", str(tmp_path / "cal.npz"), "--validation", str(tmp_path / "val.npz"),
        "--out", str(tmp_path / "b"), "--quiet",
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert "gelu.onnx: int8 TFLite cannot run op Erf (exact GELU" in lines[0]
    assert "approximate='tanh'" in lines[0]
