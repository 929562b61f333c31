"""Stage 5: predict, without the compiler, which ops of an int8 TFLite model the Edge TPU
compiler will map and where it will cut the graph. Pure function over a :class:`~compiler.graph.Graph`.

Source of the rules: Coral's documented op list and limitations (coral.ai/docs/edgetpu/models-intro,
summarised in ../shared/reference/edgetpu-toolchain.md §2.5) and the op-version ceilings of the
compiler's embedded TFLite seen in real failures (§2.5, §6). Statuses use the compiler's own
wording so predictions compare row by row with its logs.

Per op, in this order:

1. any non-constant input/output tensor that is not int8/uint8 -> "Operation is working on an
   unsupported data type" (float ops, DEQUANTIZE, float custom ops);
2. op not in :data:`RULES` (incl. any CUSTOM op, LEAKY_RELU, GATHER) -> "Operation not supported";
3. version above the rule's ceiling -> "Operation version not supported";
4. an op-specific limit (fused activation on pools/concat, FC weights format/keep_num_dims,
   MEAN/PAD off the x/y axes, SOFTMAX not 1-D or > 16000, STRIDED_SLICE strides/masks, tensors
   of rank > 3 with a dimension > 1 outside the 3 innermost) -> "Operation is otherwise
   supported, but not mapped due to some unspecified limitation", with our reason;
5. otherwise supported; but an op downstream (through non-constant tensors) of an unmapped op
   -> "More than one subgraph is not supported": the compiler makes one Edge TPU subgraph, so
   the first unmapped op cuts the graph.

Whole-model blockers: a dynamic shape (``shape_signature`` -1) anywhere maps nothing (the
compiler refuses dynamic-sized tensors). Parameters above ~7 MiB do not fit the on-chip cache
and are streamed (slow, not a mapping failure).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from .graph import Graph, OpInfo

MAPPED = "Mapped to Edge TPU"
UNSUPPORTED_TYPE = "Operation is working on an unsupported data type"
NOT_SUPPORTED = "Operation not supported"
VERSION = "Operation version not supported"
LIMITATION = "Operation is otherwise supported, but not mapped due to some unspecified limitation"
SUBGRAPH = "More than one subgraph is not supported"
DYNAMIC = "Dynamic-sized tensors are not supported"
ON_CHIP_BYTES = 7 * 1024 * 1024  # usable parameter cache reported by compilers: ~6.9-7.5 MiB

Check = Callable[[OpInfo, Graph], "str | None"]


@dataclass(frozen=True)
class Rule:
    max_version: int | None = None  # None: no known ceiling
    min_runtime: int = 10
    check: Check | None = None


def _no_fused_activation(op: OpInfo, g: Graph) -> str | None:
    if op.options.get("FusedActivationFunction", 0) != 0:
        return "fused activation is not supported on this op"
    return None


def _fully_connected(op: OpInfo, g: Graph) -> str | None:
    if op.options.get("WeightsFormat", 0) != 0:
        return "only the default weights format is supported"
    if op.options.get("KeepNumDims"):
        return "keep_num_dims (Dense on a 3-D input) is not supported; flatten first"
    return None


def _xy_axes(op: OpInfo, g: Graph) -> str | None:
    if len(op.inputs) < 2 or op.inputs[1] < 0:
        return None
    axes = g.constants.get(op.inputs[1])
    rank = len(g.tensor(op.inputs[0]).shape)
    if axes is None:
        return "axes are not constant"
    if op.builtin == "PAD":
        pads = axes.view("int32").reshape(-1, 2) if axes.size else axes
        bad = [i for i in range(len(pads)) if i not in (1, 2) and (pads[i] != 0).any()] if rank == 4 else []
        return f"padding on dimension(s) {bad} (only x/y are supported)" if bad else None
    vals = sorted({int(a) % rank for a in axes.view("int32")})
    if rank == 4 and not set(vals) <= {1, 2}:
        return f"reduces over axes {vals} (only x/y are supported)"
    return None


def _softmax(op: OpInfo, g: Graph) -> str | None:
    shape = g.tensor(op.inputs[0]).shape
    size = 1
    for d in shape:
        size *= d
    if sum(1 for d in shape if d > 1) > 1:
        return f"input {list(shape)} is not 1-D"
    if size > 16000:
        return f"{size} elements > 16000"
    return None


def _strided_slice(op: OpInfo, g: Graph) -> str | None:
    if op.options.get("EllipsisMask") or op.options.get("NewAxisMask"):
        return "ellipsis / new-axis masks are not supported"
    if len(op.inputs) >= 4 and op.inputs[3] >= 0:
        strides = g.constants.get(op.inputs[3])
        if strides is None or any(int(s) != 1 for s in strides.view("int32")):
            return "strides other than 1 are not supported"
    return None


RULES: dict[str, Rule] = {
    "ADD": Rule(),
    "SUB": Rule(),
    "MUL": Rule(),
    "MAXIMUM": Rule(),
    "MINIMUM": Rule(),
    "LOGISTIC": Rule(),
    "RELU": Rule(),
    "RELU6": Rule(),
    "RELU_N1_TO_1": Rule(),
    "TANH": Rule(),
    "AVERAGE_POOL_2D": Rule(check=_no_fused_activation),
    "MAX_POOL_2D": Rule(check=_no_fused_activation),
    "CONCATENATION": Rule(check=_no_fused_activation),
    "CONV_2D": Rule(max_version=3),
    "DEPTHWISE_CONV_2D": Rule(max_version=3),
    "FULLY_CONNECTED": Rule(max_version=4, check=_fully_connected),
    "L2_NORMALIZATION": Rule(),
    "MEAN": Rule(check=_xy_axes),
    "PAD": Rule(check=_xy_axes),
    "RESHAPE": Rule(),
    "SLICE": Rule(),
    "SPLIT": Rule(),
    "RESIZE_BILINEAR": Rule(max_version=2),
    "RESIZE_NEAREST_NEIGHBOR": Rule(),
    "SOFTMAX": Rule(check=_softmax),
    "SPACE_TO_DEPTH": Rule(),
    "SQUEEZE": Rule(),  # "leading-1 dims only" is not checked
    "STRIDED_SLICE": Rule(check=_strided_slice),
    # runtime 13 (compiler 2.1+)
    "EXPAND_DIMS": Rule(min_runtime=13),
    "PACK": Rule(min_runtime=13),
    "QUANTIZE": Rule(min_runtime=13),
    "SUM": Rule(min_runtime=13, check=_xy_axes),
    "TRANSPOSE_CONV": Rule(max_version=3, min_runtime=13),
    # runtime 14 (compiler 15+/16)
    "TRANSPOSE": Rule(min_runtime=14),
    "PRELU": Rule(min_runtime=14),
    "HARD_SWISH": Rule(min_runtime=14),
    "REDUCE_MAX": Rule(min_runtime=14),
    "REDUCE_MIN": Rule(min_runtime=14),
    "RSQRT": Rule(min_runtime=14),
    "SQUARED_DIFFERENCE": Rule(min_runtime=14),
    "UNIDIRECTIONAL_SEQUENCE_LSTM": Rule(min_runtime=14),
}


@dataclass(frozen=True)
class OpPrediction:
    index: int
    op: str
    version: int
    status: str
    reason: str = ""

    @property
    def mapped(self) -> bool:
        return self.status == MAPPED


@dataclass(frozen=True)
class Prediction:
    ops: tuple[OpPrediction, ...]
    edgetpu_compiled: bool  # the model already is an edgetpu_compiler output
    blockers: tuple[str, ...]  # whole-model reasons nothing maps
    cut_at: int | None  # index of the first unmapped op (graph order)
    min_runtime: int | None
    parameter_bytes: int

    @property
    def total_ops(self) -> int:
        return len(self.ops)

    @property
    def predicted_tpu_ops(self) -> int:
        return sum(1 for p in self.ops if p.mapped)

    @property
    def fully_mapped(self) -> bool:
        return not self.blockers and self.predicted_tpu_ops == self.total_ops

    def counts(self) -> dict[tuple[str, str], int]:
        """(op, status) -> count, the shape of the compiler's operator table."""
        out: dict[tuple[str, str], int] = {}
        for p in self.ops:
            out[(p.op, p.status)] = out.get((p.op, p.status), 0) + 1
        return out

    def summary(self) -> str:
        if self.edgetpu_compiled:
            return "already compiled for the Edge TPU (edgetpu-custom-op)"
        if self.blockers:
            return "; ".join(self.blockers)
        if self.fully_mapped:
            fit = "fits" if self.parameter_bytes <= ON_CHIP_BYTES else "exceeds"
            return f"all ops map; parameters {self.parameter_bytes / 1024:.1f} KiB {fit} the on-chip cache"
        first = self.ops[self.cut_at] if self.cut_at is not None else None
        return (
            (
                f"graph cut at op {first.index} {first.op} ({first.status}"
                + (f": {first.reason}" if first and first.reason else "")
                + ")"
            )
            if first
            else "partial"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "total_ops": self.total_ops,
            "predicted_tpu_ops": self.predicted_tpu_ops,
            "fully_mapped": self.fully_mapped,
            "edgetpu_compiled": self.edgetpu_compiled,
            "blockers": list(self.blockers),
            "cut_at": self.cut_at,
            "min_runtime": self.min_runtime,
            "parameter_bytes": self.parameter_bytes,
            "fits_on_chip": self.parameter_bytes <= ON_CHIP_BYTES,
            "summary": self.summary(),
            "table": [{"op": op, "count": n, "status": st} for (op, st), n in sorted(self.counts().items())],
            "unmapped": [asdict(p) for p in self.ops if not p.mapped][:50],
        }


def _own_status(op: OpInfo, g: Graph) -> tuple[str, str]:
    for i in op.inputs + op.outputs:
        if i < 0:
            continue
        t = g.tensor(i)
        if not t.constant and t.dtype not in ("INT8", "UINT8"):
            return UNSUPPORTED_TYPE, f"tensor {t.name!r} is {t.dtype}"
    rule = RULES.get(op.builtin) if op.builtin != "CUSTOM" else None
    if rule is None:
        return NOT_SUPPORTED, f"{op.name} is not on the Edge TPU op list"
    if rule.max_version is not None and op.version > rule.max_version:
        return VERSION, f"{op.builtin} v{op.version} > v{rule.max_version} (the compiler cannot parse newer versions)"
    for i in op.inputs + op.outputs:
        if i < 0:
            continue
        t = g.tensor(i)
        if not t.constant and len(t.shape) > 3 and any(d > 1 for d in t.shape[:-3]):
            return LIMITATION, f"tensor {t.name!r} {list(t.shape)} has a dimension > 1 outside the 3 innermost"
    if rule.check is not None:
        why = rule.check(op, g)
        if why:
            return LIMITATION, why
    return MAPPED, ""


def predict(g: Graph) -> Prediction:
    if g.edgetpu_compiled:
        ops = tuple(
            OpPrediction(
                op.index,
                op.name,
                op.version,
                MAPPED if op.custom == "edgetpu-custom-op" else "CPU op in a compiled model",
            )
            for op in g.ops
        )
        return Prediction(ops, True, (), None, None, g.parameter_bytes())
    dyn = [t.name for t in g.tensors if t.dynamic]
    if dyn:
        ops = tuple(OpPrediction(op.index, op.name, op.version, DYNAMIC, f"dynamic tensors {dyn[:3]}") for op in g.ops)
        return Prediction(
            ops,
            False,
            (f"dynamic shapes in {len(dyn)} tensor(s), e.g. {dyn[0]!r}",),
            0 if ops else None,
            None,
            g.parameter_bytes(),
        )
    producer: dict[int, int] = {}
    for op in g.ops:
        for o in op.outputs:
            producer[o] = op.index
    unmapped_upstream: set[int] = set()  # ops that are, or depend on, an unmapped op
    preds: list[OpPrediction] = []
    cut = None
    runtime = 10
    for op in g.ops:  # TFLite stores ops in execution (topological) order
        status, reason = _own_status(op, g)
        tainted = any(producer.get(i) in unmapped_upstream for i in op.inputs if i >= 0)
        if status == MAPPED and tainted:
            status, reason = SUBGRAPH, "depends on an op that runs on the CPU"
        if status != MAPPED:
            unmapped_upstream.add(op.index)
            if cut is None:
                cut = op.index
        else:
            runtime = max(runtime, RULES[op.builtin].min_runtime)
        preds.append(OpPrediction(op.index, op.name, op.version, status, reason))
    return Prediction(tuple(preds), False, (), cut, runtime if preds else None, g.parameter_bytes())
