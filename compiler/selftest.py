"""Stage 8: self-test vectors (``selftest.json``, format in docs/protocol.md).

A few inputs with the raw outputs the served artifact gives here, so an agent can prove an
install works before switching to it. Cases are the first validation sample of each class
(in class order) up to ``cases``, so they cover different outputs; inputs and outputs are the
raw tensors (int8/uint8 for a quantized model), nested as their shapes. Every output is
recorded (``protocol.selftest``: its compare rule and tolerance per dtype; a large output as a
strided sample, a class mask with its histogram), so a wrong model fails on boxes, keypoints
and masks too, not only on the first output.

Inputs, in order of preference (``inputs`` in the document): the validation samples, the
calibration samples, else :func:`synthetic` ones (``synthetic``): seeded smooth images over the
input's range, never a constant (all-0 or all-255) frame, on which a detector or a segmenter
gives the same boxes or mask as on any frame, so the outputs the agent compares are a model's
real work, and a saturated input would not exercise it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from protocol import selftest as vectors

from .inference import IoSpec, TfliteRunner

SCHEMA = vectors.SCHEMA
DEFAULT_TOLERANCE = vectors.DEFAULT_TOLERANCE
DEFAULT_MAX_LATENCY_MS = vectors.DEFAULT_MAX_LATENCY_MS


SYNTHETIC_SEED = 0
PIXEL_LOW, PIXEL_HIGH = 16, 240  # synthetic pixels stay inside: no saturated (0 / 255) regions
GRID = 5  # a GRID x GRID field of random colours, bilinearly interpolated: smooth, like a photo


def tensor_range(spec: IoSpec) -> tuple[float, float]:
    """The real values an input can take: a quantized integer input's whole grid
    (``scale * (q - zero_point)``), an integer input's own values, else [-1, 1]."""
    if np.issubdtype(spec.dtype, np.integer):
        info = np.iinfo(spec.dtype)
        if spec.scale:
            return spec.scale * (int(info.min) - spec.zero_point), spec.scale * (int(info.max) - spec.zero_point)
        return float(info.min), float(info.max)
    return -1.0, 1.0


def synthetic(
    shape: tuple[int, ...],
    preprocess: dict[str, Any],
    n: int,
    seed: int = SYNTHETIC_SEED,
    value_range: tuple[float, float] = (-1.0, 1.0),
) -> np.ndarray:
    """``n`` float model inputs of sample ``shape`` (the input's shape without the batch): for an
    image, smooth random pixels in ``PIXEL_LOW..PIXEL_HIGH`` (a colour field with a little
    noise) mapped by the preprocess (``pixel * scale + offset``); for a tensor, uniform over the
    middle 90 % of ``value_range`` (:func:`tensor_range`). Seeded: a rebuild makes the same vectors."""
    rng = np.random.default_rng(seed)
    if preprocess.get("kind") != "image" or len(shape) < 2:
        lo, hi = value_range
        pad = 0.05 * (hi - lo)
        return rng.uniform(lo + pad, hi - pad, size=(n, *shape)).astype(np.float32)
    h, w = int(shape[0]), int(shape[1])
    c = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    ys, xs = np.linspace(0, GRID - 1, h), np.linspace(0, GRID - 1, w)
    y0, x0 = np.minimum(ys.astype(int), GRID - 2), np.minimum(xs.astype(int), GRID - 2)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    out = []
    for _ in range(n):
        grid = rng.uniform(PIXEL_LOW + 8, PIXEL_HIGH - 8, size=(GRID, GRID, c))
        top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
        bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
        img = top * (1 - fy) + bottom * fy + rng.normal(0.0, 4.0, size=(h, w, c))
        out.append(np.clip(np.round(img), PIXEL_LOW, PIXEL_HIGH).reshape(shape))
    pixels = np.stack(out).astype(np.float32)
    return (pixels * float(preprocess.get("scale", 1.0)) + float(preprocess.get("offset", 0.0))).astype(np.float32)


def pick(y: np.ndarray | None, n_samples: int, cases: int) -> list[int]:
    if y is None:
        return list(range(min(cases, n_samples)))
    chosen: list[int] = []
    for c in sorted(set(int(v) for v in y)):
        chosen.append(int(np.flatnonzero(y == c)[0]))
        if len(chosen) == cases:
            break
    for i in range(n_samples):  # fewer classes than cases: fill in order
        if len(chosen) == cases:
            break
        if i not in chosen:
            chosen.append(i)
    return chosen


def build(
    runner: TfliteRunner,
    artifact: str,
    x: np.ndarray,
    y: np.ndarray | None,
    cases: int = 5,
    tolerance: int = DEFAULT_TOLERANCE,
    max_latency_ms: int = DEFAULT_MAX_LATENCY_MS,
    inputs: str | None = None,
) -> dict[str, Any]:
    """``inputs``: where ``x`` came from (``validation``, ``calibration``, ``synthetic``), kept in
    the document for the reader (agents use ``cases`` only)."""
    runs = []
    for i in pick(y, len(x), cases):
        raw = runner.input.quantize(x[i : i + 1]).reshape(runner.input.shape)
        runs.append((raw, runner.run_all(raw)))
    names = [str(d["name"]) for d in runner.interp.get_output_details()]
    specs = [
        vectors.spec_for(
            names[j],
            str(io.dtype),
            io.shape,
            io.scale,
            io.zero_point,
            [outs[j].reshape(-1).tolist() for _, outs in runs],
            tolerance,
        )
        for j, io in enumerate(runner.outputs)
    ]
    out = []
    for raw, outs in runs:
        case: dict[str, Any] = {"input": raw.tolist()}
        if outs[0].size <= vectors.MAX_VALUES:  # for agents that read schema 1 only
            case["expected"] = outs[0].tolist()
        case["outputs"] = [
            vectors.expect(sp, o.reshape(-1).tolist()).to_dict() for sp, o in zip(specs, outs, strict=True)
        ]
        out.append(case)
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "artifact": artifact,
        "tolerance": tolerance,
        "max_latency_ms": max_latency_ms,
        "outputs": [sp.to_dict() for sp in specs],
        "cases": out,
    }
    if inputs is not None:
        doc["inputs"] = inputs
    if runs and all(np.unique(outs[0]).size == 1 for _, outs in runs):
        # e.g. a segmenter on synthetic images: all background, as on a black frame
        doc["note"] = (
            f"every case's expected output is one constant value ({inputs or 'given'} inputs): the vectors "
            "barely exercise the model; give --calibration images for a self-test that does"
        )
    return doc


def check(runner: TfliteRunner, doc: dict[str, Any]) -> list[str]:
    """Re-run every case; return one problem line per output out of tolerance (empty = pass),
    by the same rule as the agent (``protocol.selftest.compare``)."""
    st = vectors.parse(doc)
    problems = []
    for n, case in enumerate(st.cases):
        outs = runner.run_all(np.array(case.input, dtype=runner.input.dtype))
        if not st.outputs:  # schema 1: the first output in raw units
            got = outs[0].astype(np.int64).reshape(-1)
            diff = int(np.abs(got - np.array(st.legacy[n], dtype=np.int64)).max())
            if diff > st.tolerance:
                problems.append(f"case {n}: max difference {diff} > tolerance {st.tolerance:g}")
            continue
        if len(outs) != len(st.outputs):
            problems.append(f"case {n}: the model has {len(outs)} outputs, the vectors {len(st.outputs)}")
            continue
        for spec, want, got_out in zip(st.outputs, case.outputs, outs, strict=True):
            result = vectors.compare(spec, want, got_out.reshape(-1).tolist())
            if not result.ok:
                problems.append(f"case {n}: {result.detail}")
    return problems
