"""Self-test vectors (``selftest.json``, role ``selftest``): what every output of a model is
expected to give on a few inputs, and the one rule that compares an output with it. Shared by
the compiler (which records the vectors and re-checks them) and the agent (which runs them on
the artifact it will serve before switching to a bundle). Pure; values are flat Python lists
(callers pass ``array.reshape(-1).tolist()``).

Schema 2 records every output in ``outputs`` (name, dtype, shape, scale, zero_point, compare,
tolerance) and, in each case, one expectation per output (``cases[i].outputs[j]``). How an
output is compared depends on its dtype, so that a wrong model fails on every kind of output:

===========  ==========================================  =====================================
compare      outputs                                     passes when
===========  ==========================================  =====================================
steps        integer outputs that are quantized           every ``|got - want|`` <= tolerance,
             (int8, uint8, int16): raw units are          in quantization steps (the document's
             quantization steps                           ``tolerance``, default 2)
close        float outputs (detector boxes, classes,      every ``|got - want|`` <= tolerance =
             scores and count; keypoints; embeddings)     ``FLOAT_TOLERANCE`` (2 %) of the
                                                          output's scale: the largest ``|value|``
                                                          it takes over all cases (boxes and
                                                          keypoints in 0..1: 0.02; at least 1e-6)
agreement    int32/int64 outputs (an ArgMax class mask)   the share of equal values >=
                                                          ``MIN_AGREEMENT`` (99 %) and the class
                                                          histograms' total variation <= 1 %
keypoints    float ``[1, 1, K, 3]`` (y, x, score: MoveNet)  every y and x within 0.05 (image
                                                          fractions, ~10 px of 192: the shadow
                                                          agreement's distance) and every score
                                                          within 0.5
===========  ==========================================  =====================================

Why keypoints get their own rule: Coral's MoveNet references (``../shared/models/coral``) of the
Edge TPU model and of the CPU model on the same image differ by up to 0.0198 in x and 0.40 in a
keypoint's score, so 2 % of the scale would refuse every Edge TPU install; a wrong model moves
the keypoints themselves (``tests/protocol/test_selftest.py``).

An output with more than ``MAX_VALUES`` values is recorded as a strided sample (``stride``:
every stride-th value from the first); an ``agreement`` output also carries its whole class
histogram (``histogram``: class -> count), so a 513x513 mask costs ~1,000 values, not 263,169.

Schema 1 (bundles before it) has only ``cases[i].expected``: the first output, compared in raw
units with the document's ``tolerance``. Schema-2 documents keep ``expected`` (the first output,
when it has at most ``MAX_VALUES`` values) for agents that read only schema 1; a schema-2 reader
ignores it. :func:`parse` refuses a document it cannot use with one :class:`BadPayload` naming
the field; unknown keys are kept (``extra``).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import BadPayload

WHAT = "selftest"
SCHEMA = 2
DEFAULT_TOLERANCE = 2  # quantization steps
DEFAULT_MAX_LATENCY_MS = 1000
MAX_VALUES = 1024  # per output and case; more: a strided sample (an ImageNet classifier's 1001 fit)
FLOAT_TOLERANCE = 0.02  # of a float output's scale
MIN_AGREEMENT = 0.99  # share of equal values of an integer (class) output
KEYPOINT_TOLERANCE = 0.05  # y and x, image fractions: protocol.taskstats.KEYPOINT_AGREE_DISTANCE (~10 px of 192)
KEYPOINT_SCORE_TOLERANCE = 0.5  # Coral's own Edge TPU vs CPU MoveNet references differ by up to 0.40 here
COMPARES = ("steps", "close", "agreement", "keypoints")
QUANTIZED = ("int8", "uint8", "int16")
CLASS_DTYPES = ("int32", "int64")


@dataclass(frozen=True)
class OutputSpec:
    name: str
    dtype: str
    shape: tuple[int, ...]
    compare: str
    tolerance: float
    scale: float = 0.0
    zero_point: int = 0

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "scale": self.scale,
            "zero_point": self.zero_point,
            "compare": self.compare,
            "tolerance": self.tolerance,
        }


@dataclass(frozen=True)
class Expectation:
    values: tuple[float, ...]
    stride: int = 1
    histogram: dict[int, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"values": list(self.values)}
        if self.stride != 1:
            out["stride"] = self.stride
        if self.histogram is not None:
            out["histogram"] = {str(k): v for k, v in sorted(self.histogram.items())}
        return out


@dataclass(frozen=True)
class Check:
    """One output of one case against its expectation. ``diff``: the largest difference (steps
    or float units) or, for ``agreement``, the share of values that differ; ``limit``: what
    ``diff`` may reach."""

    output: str
    compare: str
    ok: bool
    diff: float
    limit: float
    detail: str


def compare_kind(dtype: str, shape: Sequence[int] = ()) -> str:
    if dtype in QUANTIZED:
        return "steps"
    if dtype in CLASS_DTYPES:
        return "agreement"
    if len(shape) == 4 and shape[-1] == 3 and shape[-2] >= 5 and math.prod(shape) <= MAX_VALUES:
        return "keypoints"  # [1, 1, K, 3]: y, x, score per keypoint (MoveNet)
    return "close"


def stride_for(size: int) -> int:
    return max(1, -(-size // MAX_VALUES))


def expect(spec: OutputSpec, values: Sequence[Any]) -> Expectation:
    """What a case records of one output (``values``: all of it, flat, raw)."""
    stride = stride_for(len(values))
    sample = tuple(values[::stride])
    hist = dict(Counter(int(v) for v in values)) if spec.compare == "agreement" else None
    return Expectation(sample, stride, hist)


def spec_for(
    name: str,
    dtype: str,
    shape: Sequence[int],
    scale: float,
    zero_point: int,
    cases: Sequence[Sequence[Any]],
    tolerance: float = DEFAULT_TOLERANCE,
) -> OutputSpec:
    """The spec of one output from its values in every case (a float output's tolerance is
    ``FLOAT_TOLERANCE`` of the largest ``|value|`` over them)."""
    kind = compare_kind(dtype, shape)
    if kind == "keypoints":
        tol = KEYPOINT_TOLERANCE
    elif kind == "close":
        scale_seen = max((abs(float(v)) for case in cases for v in case), default=0.0)
        tol = FLOAT_TOLERANCE * max(scale_seen, 1e-6 / FLOAT_TOLERANCE)
    elif kind == "agreement":
        tol = 1.0 - MIN_AGREEMENT
    else:
        tol = float(tolerance)
    return OutputSpec(name, dtype, tuple(int(d) for d in shape), kind, round(tol, 9), float(scale), int(zero_point))


def compare(spec: OutputSpec, want: Expectation, got: Sequence[Any]) -> Check:
    """``got``: the whole output, flat, raw. The rule in the module docstring."""
    if len(got) != spec.size:
        return Check(
            spec.name,
            spec.compare,
            False,
            math.inf,
            spec.tolerance,
            f"{spec.name}: {len(got)} values, expected {spec.size} (shape {list(spec.shape)})",
        )
    sample = got[:: want.stride]
    if len(sample) != len(want.values):
        return Check(
            spec.name,
            spec.compare,
            False,
            math.inf,
            spec.tolerance,
            f"{spec.name}: {len(sample)} sampled values, the vector holds {len(want.values)}",
        )
    if spec.compare == "agreement":
        same = sum(1 for a, b in zip(sample, want.values, strict=True) if int(a) == int(b))
        differ = 1.0 - same / len(sample) if sample else 0.0
        tv = 0.0
        if want.histogram is not None:
            have = Counter(int(v) for v in got)
            n = max(len(got), 1)
            keys = set(have) | set(want.histogram)
            tv = 0.5 * sum(abs(have.get(k, 0) - want.histogram.get(k, 0)) for k in keys) / n
        worst = max(differ, tv)
        ok = worst <= spec.tolerance + 1e-12
        detail = (
            f"{spec.name}: {1 - differ:.2%} of {len(sample)} sampled values agree, class histograms differ by "
            f"{tv:.2%} (need >= {1 - spec.tolerance:.0%} and <= {spec.tolerance:.0%})"
        )
        return Check(spec.name, spec.compare, ok, worst, spec.tolerance, detail)
    if spec.compare == "keypoints":
        return _keypoints(spec, want.values, sample)
    diff = max((abs(float(a) - float(b)) for a, b in zip(sample, want.values, strict=True)), default=0.0)
    unit = "steps" if spec.compare == "steps" else "(float)"
    ok = diff <= spec.tolerance
    return Check(
        spec.name,
        spec.compare,
        ok,
        diff,
        spec.tolerance,
        f"{spec.name}: differs by {diff:g} {unit} {'<=' if ok else '>'} tolerance {spec.tolerance:g}",
    )


def _keypoints(spec: OutputSpec, want: Sequence[float], got: Sequence[Any]) -> Check:
    """Every keypoint's y and x within ``spec.tolerance`` (image fractions) and its score within
    ``KEYPOINT_SCORE_TOLERANCE``; ``diff`` is the largest position difference."""
    pos = 0.0
    score = 0.0
    worst_at = 0
    for k in range(len(want) // 3):
        d = max(abs(float(got[3 * k + i]) - float(want[3 * k + i])) for i in (0, 1))
        if d > pos:
            pos, worst_at = d, k
        score = max(score, abs(float(got[3 * k + 2]) - float(want[3 * k + 2])))
    ok = pos <= spec.tolerance and score <= KEYPOINT_SCORE_TOLERANCE
    detail = (
        f"{spec.name}: keypoints moved by up to {pos:g} (keypoint {worst_at}; tolerance {spec.tolerance:g}), "
        f"scores by up to {score:g} (tolerance {KEYPOINT_SCORE_TOLERANCE:g})"
    )
    return Check(spec.name, spec.compare, ok, pos, spec.tolerance, detail)


@dataclass(frozen=True)
class Case:
    input: Any  # nested list, the raw request input
    outputs: tuple[Expectation, ...]


@dataclass(frozen=True)
class SelfTest:
    """A parsed ``selftest.json``. ``outputs`` is empty for schema 1 (``legacy`` then holds each
    case's first output, compared in raw units with ``tolerance``)."""

    schema: int
    tolerance: float
    max_latency_ms: float
    outputs: tuple[OutputSpec, ...]
    cases: tuple[Case, ...]
    smoke: bool = False
    legacy: tuple[tuple[float, ...], ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def compared(self) -> str:
        """What a run compares, for its result."""
        if self.smoke:
            return "smoke test only"
        if not self.outputs:
            return "the first output only (schema 1 vectors)"
        return f"{len(self.outputs)} outputs: " + ", ".join(f"{o.name} ({o.compare})" for o in self.outputs)


def _flat(v: Any, where: str) -> tuple[float, ...]:
    out: list[float] = []
    stack = [v]
    while stack:
        x = stack.pop()
        if isinstance(x, list):
            stack.extend(reversed(x))
        elif isinstance(x, (int, float)) and not isinstance(x, bool):
            out.append(x)
        else:
            raise BadPayload(WHAT, f"{where} must hold numbers, got {type(x).__name__}")
    return tuple(out)


def _num(doc: dict[str, Any], key: str, default: float, where: str = "") -> float:
    v = doc.get(key, default)
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        raise BadPayload(WHAT, f"field '{where}{key}' must be a number, got {v!r}")
    return float(v)


def _spec(o: Any, i: int) -> OutputSpec:
    where = f"outputs.{i}."
    if not isinstance(o, dict):
        raise BadPayload(WHAT, f"field 'outputs.{i}' must be an object, got {o!r}")
    shape = o.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise BadPayload(WHAT, f"field '{where}shape' must be a list of sizes, got {shape!r}")
    if o.get("compare") not in COMPARES:
        raise BadPayload(WHAT, f"field '{where}compare' must be one of {list(COMPARES)}, got {o.get('compare')!r}")
    return OutputSpec(
        str(o.get("name", f"output {i}")),
        str(o.get("dtype", "")),
        tuple(shape),
        str(o["compare"]),
        _num(o, "tolerance", 0, where),
        _num(o, "scale", 0, where),
        int(_num(o, "zero_point", 0, where)),
    )


def _expectation(e: Any, where: str) -> Expectation:
    if not isinstance(e, dict) or "values" not in e:
        raise BadPayload(WHAT, f"field '{where}' must be an object with 'values', got {str(e)[:80]}")
    stride = e.get("stride", 1)
    if not isinstance(stride, int) or stride < 1:
        raise BadPayload(WHAT, f"field '{where}.stride' must be a positive integer, got {stride!r}")
    hist = e.get("histogram")
    histogram = None
    if hist is not None:
        try:
            histogram = {int(k): int(v) for k, v in hist.items()}
        except (AttributeError, TypeError, ValueError):
            raise BadPayload(WHAT, f"field '{where}.histogram' must map classes to counts, got {hist!r}") from None
    return Expectation(_flat(e["values"], f"{where}.values"), stride, histogram)


KNOWN = ("schema", "tolerance", "max_latency_ms", "outputs", "cases", "smoke")


def parse(doc: Any) -> SelfTest:
    """A ``selftest.json`` document (already JSON-decoded) -> :class:`SelfTest`; raises
    :class:`BadPayload` naming the field."""
    if not isinstance(doc, dict):
        raise BadPayload(WHAT, f"expected an object, got {type(doc).__name__}")
    schema = int(_num(doc, "schema", 1))
    tol = _num(doc, "tolerance", 0)
    budget = _num(doc, "max_latency_ms", DEFAULT_MAX_LATENCY_MS)
    cases = doc.get("cases")
    if not isinstance(cases, list):
        raise BadPayload(WHAT, f"field 'cases' must be a list, got {cases!r}")
    extra = {k: v for k, v in doc.items() if k not in KNOWN}
    if not cases:
        return SelfTest(schema, tol, budget, (), (), smoke=doc.get("smoke") is True, extra=extra)
    raw_outputs = doc.get("outputs")
    if schema < 2 or raw_outputs is None:
        legacy = []
        parsed = []
        for n, c in enumerate(cases):
            if not isinstance(c, dict) or "input" not in c or "expected" not in c:
                raise BadPayload(WHAT, f"field 'cases.{n}' must hold 'input' and 'expected'")
            legacy.append(_flat(c["expected"], f"cases.{n}.expected"))
            parsed.append(Case(c["input"], ()))
        return SelfTest(schema, tol, budget, (), tuple(parsed), legacy=tuple(legacy), extra=extra)
    if not isinstance(raw_outputs, list) or not raw_outputs:
        raise BadPayload(WHAT, f"field 'outputs' must be a non-empty list, got {raw_outputs!r}")
    specs = tuple(_spec(o, i) for i, o in enumerate(raw_outputs))
    parsed = []
    for n, c in enumerate(cases):
        outs = c.get("outputs") if isinstance(c, dict) else None
        if not isinstance(c, dict) or "input" not in c or not isinstance(outs, list) or len(outs) != len(specs):
            raise BadPayload(WHAT, f"field 'cases.{n}' must hold 'input' and one expectation per output ({len(specs)})")
        parsed.append(Case(c["input"], tuple(_expectation(e, f"cases.{n}.outputs.{j}") for j, e in enumerate(outs))))
    return SelfTest(schema, tol, budget, specs, tuple(parsed), extra=extra)
