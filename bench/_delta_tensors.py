"""How small a per-tensor int8/int32 coding of a weight update could be (``python -m bench delta``).

Per weight tensor of the int8 model present in both builds with the same shape and dtype (matched
by name, read through the LiteRT interpreter): the element-wise difference target - base, and its
order-0 empirical entropy (bits per element x elements / 8). That is what an ideal entropy coder
that models each tensor's differences as independent draws from their own histogram would spend,
with no side information: a floor for the per-tensor coding ADR 0016 named as the next thing to
try, not a bound for every possible coder (one that models context could go lower). Only
constants count: the model's input and every op's output hold whatever the arena held.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np


def _weights(model: bytes) -> dict[str, np.ndarray[Any, Any]]:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # the older package name
        from tflite_runtime.interpreter import Interpreter

    it = Interpreter(model_content=model)
    it.allocate_tensors()
    # constants only: an op's output or the model's input holds whatever the arena held
    produced = {i for op in it._get_ops_details() for i in op["outputs"]}
    produced |= {d["index"] for d in it.get_input_details()}
    out = {}
    for d in it.get_tensor_details():
        if d["index"] in produced or d["dtype"] not in (np.int8, np.int32) or int(np.prod(d["shape"])) <= 1:
            continue
        try:
            out[d["name"]] = np.array(it.get_tensor(d["index"]))
        except ValueError:  # not readable (a tensor the interpreter does not hold)
            continue
    return out


def _entropy_bytes(d: np.ndarray[Any, Any]) -> float:
    n = d.size
    return -sum(k * math.log2(k / n) for k in Counter(d.tolist()).values()) / 8


def tensor_floor(base: bytes, target: bytes) -> dict[str, Any]:
    """Per changed tensor: elements, changed elements, entropy bytes; and their totals."""
    old, new = _weights(base), _weights(target)
    rows: list[dict[str, Any]] = []
    for name, v in new.items():
        w = old.get(name)
        if w is None or w.shape != v.shape or w.dtype != v.dtype:
            continue
        d = (v.astype(np.int64) - w.astype(np.int64)).ravel()
        if d.any():
            rows.append(
                {
                    "tensor": name,
                    "elements": int(d.size),
                    "changed": int((d != 0).sum()),
                    "entropy_bytes": _entropy_bytes(d),
                }
            )
    return {
        "tensors": rows,
        "changed": sum(int(r["changed"]) for r in rows),
        "entropy_bytes": round(sum(float(r["entropy_bytes"]) for r in rows)),
    }
