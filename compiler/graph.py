"""Read a ``.tflite`` flatbuffer without TensorFlow: operators (name, version, options),
tensors (dtype, shape, shape signature, quantization, variable) and the model's inputs and outputs.

Uses the schema bundled with ai_edge_litert (``schema_py_generated``), so it runs wherever the
agent runtime does. Rules: an operator's builtin code is ``max(builtin_code,
deprecated_builtin_code)`` (the schema's compatibility rule); a tensor with a non-empty buffer is
a constant; a ``-1`` in ``shape_signature`` is a dynamic dimension.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BadInput

EDGETPU_CUSTOM_OP = "edgetpu-custom-op"
QUANTIZED_TYPES = ("INT8", "UINT8")


def _enum_names(enum_cls: type) -> dict[int, str]:
    return {v: k for k, v in vars(enum_cls).items() if not k.startswith("_") and isinstance(v, int)}


@dataclass(frozen=True)
class TensorInfo:
    index: int
    name: str
    dtype: str  # FLOAT32, INT8, UINT8, INT32, ...
    shape: tuple[int, ...]
    signature: tuple[int, ...]  # shape_signature, or shape when absent; -1 = dynamic
    scale: tuple[float, ...] = ()
    zero_point: tuple[int, ...] = ()
    constant: bool = False
    variable: bool = False  # state kept between invocations (a fused LSTM's, say)

    @property
    def dynamic(self) -> bool:
        return any(d < 0 for d in self.signature)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        if self.dynamic:
            d["shape_signature"] = list(self.signature)
        if self.scale:
            d["scale"] = self.scale[0] if len(self.scale) == 1 else list(self.scale)
            d["zero_point"] = self.zero_point[0] if len(self.zero_point) == 1 else list(self.zero_point)
        return d


@dataclass(frozen=True)
class OpInfo:
    index: int
    builtin: str  # CONV_2D, ..., CUSTOM
    custom: str | None  # custom code for CUSTOM ops
    version: int
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    subgraph: int = 0
    options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def name(self) -> str:
        return f"CUSTOM:{self.custom}" if self.builtin == "CUSTOM" else self.builtin


@dataclass(frozen=True)
class Graph:
    ops: tuple[OpInfo, ...]
    tensors: tuple[TensorInfo, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    subgraphs: int
    size: int
    constants: dict[int, np.ndarray] = field(default_factory=dict, hash=False, compare=False)

    def tensor(self, i: int) -> TensorInfo:
        return self.tensors[i]

    @property
    def input(self) -> TensorInfo:
        return self.tensors[self.inputs[0]]

    @property
    def output(self) -> TensorInfo:
        return self.tensors[self.outputs[0]]

    @property
    def edgetpu_compiled(self) -> bool:
        return any(op.custom == EDGETPU_CUSTOM_OP for op in self.ops)

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for op in self.ops:
            key = f"{op.name} v{op.version}"
            counts[key] = counts.get(key, 0) + 1
        return counts

    def float_ops(self) -> list[OpInfo]:
        """Ops that compute in float: any non-constant float tensor in or out. A DEQUANTIZE
        feeding only a float tensor counts (the model is not full-int8)."""
        out = []
        for op in self.ops:
            ts = [self.tensors[i] for i in op.inputs + op.outputs if i >= 0]
            if any(t.dtype in ("FLOAT32", "FLOAT16") and not t.constant for t in ts):
                out.append(op)
        return out

    @property
    def stateful(self) -> bool:
        """The model keeps state between invocations in variable tensors."""
        return any(t.variable for t in self.tensors)

    def parameter_bytes(self) -> int:
        return int(sum(a.nbytes for a in self.constants.values()))


_OPTION_FIELDS: dict[str, tuple[str, ...]] = {
    "Pool2DOptions": ("FusedActivationFunction", "FilterHeight", "FilterWidth", "StrideH", "StrideW"),
    "ConcatenationOptions": ("FusedActivationFunction", "Axis"),
    "FullyConnectedOptions": ("FusedActivationFunction", "WeightsFormat", "KeepNumDims"),
    "StridedSliceOptions": ("BeginMask", "EndMask", "EllipsisMask", "NewAxisMask", "ShrinkAxisMask"),
    "Conv2DOptions": ("FusedActivationFunction", "StrideH", "StrideW", "DilationHFactor", "DilationWFactor"),
    "DepthwiseConv2DOptions": ("FusedActivationFunction", "DepthMultiplier", "DilationHFactor"),
    "ReducerOptions": ("KeepDims",),
    "SoftmaxOptions": ("Beta",),
    "AddOptions": ("FusedActivationFunction",),
    "MulOptions": ("FusedActivationFunction",),
    "SubOptions": ("FusedActivationFunction",),
}


def read_graph(data: bytes, what: object = "model") -> Graph:
    """Parse ``data`` as a TFLite model or raise :class:`BadInput` naming ``what``."""
    from ai_edge_litert import schema_py_generated as s

    if len(data) < 8 or data[4:8] != b"TFL3":
        raise BadInput(what, "not a TFLite flatbuffer (no 'TFL3' identifier)")
    try:
        model = s.Model.GetRootAs(data, 0)
        return _read(s, model, len(data))
    except BadInput:
        raise
    except Exception as exc:  # a truncated or corrupt flatbuffer fails in many ways
        raise BadInput(what, f"corrupt TFLite flatbuffer ({type(exc).__name__}: {exc})") from None


def read_graph_file(path: Path) -> Graph:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BadInput(path, f"cannot read ({exc.strerror})") from None
    return read_graph(data, path)


def _read(s: Any, model: Any, size: int) -> Graph:
    op_names = _enum_names(s.BuiltinOperator)
    type_names = _enum_names(s.TensorType)
    opt_names = _enum_names(s.BuiltinOptions)
    codes = []
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        code = max(int(oc.BuiltinCode()), int(oc.DeprecatedBuiltinCode()))
        custom = oc.CustomCode()
        codes.append(
            (
                op_names.get(code, f"BUILTIN_{code}"),
                custom.decode(errors="replace") if custom else None,
                int(oc.Version()),
            )
        )
    tensors: list[TensorInfo] = []
    constants: dict[int, np.ndarray] = {}
    ops: list[OpInfo] = []
    inputs: tuple[int, ...] = ()
    outputs: tuple[int, ...] = ()
    for g in range(model.SubgraphsLength()):
        sg = model.Subgraphs(g)
        base = len(tensors)
        for t in range(sg.TensorsLength()):
            ten = sg.Tensors(t)
            shape = tuple(int(d) for d in ten.ShapeAsNumpy()) if ten.ShapeLength() else ()
            sig = tuple(int(d) for d in ten.ShapeSignatureAsNumpy()) if ten.ShapeSignatureLength() else shape
            q = ten.Quantization()
            scale = tuple(float(v) for v in q.ScaleAsNumpy()) if q is not None and q.ScaleLength() else ()
            zp = tuple(int(v) for v in q.ZeroPointAsNumpy()) if q is not None and q.ZeroPointLength() else ()
            buf = model.Buffers(ten.Buffer()) if ten.Buffer() < model.BuffersLength() else None
            constant = buf is not None and (buf.DataLength() > 0 or buf.Offset() > 1)
            dtype = type_names.get(int(ten.Type()), f"TYPE_{ten.Type()}")
            if buf is not None and buf.DataLength() > 0:
                constants[base + t] = buf.DataAsNumpy()
            name = ten.Name()
            tensors.append(
                TensorInfo(
                    base + t,
                    name.decode(errors="replace") if name else "",
                    dtype,
                    shape,
                    sig,
                    scale,
                    zp,
                    constant,
                    bool(ten.IsVariable()),
                )
            )
        if g == 0:
            inputs = tuple(int(i) for i in sg.InputsAsNumpy())
            outputs = tuple(int(i) for i in sg.OutputsAsNumpy())
        for o in range(sg.OperatorsLength()):
            op = sg.Operators(o)
            builtin, custom, version = codes[op.OpcodeIndex()]
            ins = tuple(int(i) + base if i >= 0 else -1 for i in op.InputsAsNumpy()) if op.InputsLength() else ()
            outs = tuple(int(i) + base for i in op.OutputsAsNumpy()) if op.OutputsLength() else ()
            ops.append(OpInfo(len(ops), builtin, custom, version, ins, outs, g, _options(s, op, opt_names)))
    if not inputs or not outputs:
        raise BadInput("model", "has no inputs or outputs in its main subgraph")
    return Graph(tuple(ops), tuple(tensors), inputs, outputs, model.SubgraphsLength(), size, constants)


def _options(s: Any, op: Any, opt_names: dict[int, str]) -> dict[str, Any]:
    kind = opt_names.get(int(op.BuiltinOptionsType()))
    fields = _OPTION_FIELDS.get(kind or "")
    table = op.BuiltinOptions()
    if not fields or table is None:
        return {}
    obj = getattr(s, kind)()  # type: ignore[arg-type]
    obj.Init(table.Bytes, table.Pos)
    return {f: getattr(obj, f)() for f in fields}
