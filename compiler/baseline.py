"""Stage 7: the drift baseline (``baseline.json``, format in :mod:`protocol.baseline`).

Features come from :mod:`protocol.features` so the agent computes exactly the same numbers:
input features on each sample's float input tensor, output features on the dequantized scores
of the artifact the device serves (int8). Edges are reference quantiles (10 bins by default);
``top1_class`` uses the fixed class edges ``0.5, 1.5, ...``. Output features are a classifier's:
for any other task (``scores`` None) the baseline holds the input features only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from protocol.baseline import Baseline, Feature, Thresholds
from protocol.features import class_edges, input_features, output_features
from protocol.sketch import DriftThresholds, bin_counts, quantile_edges


def build(
    x: np.ndarray,
    scores: np.ndarray | None,
    preprocess: dict[str, Any],
    num_classes: int | None,
    bins: int = 10,
    thresholds: DriftThresholds = DriftThresholds(),
) -> dict[str, Any]:
    if len(x) == 0 or (scores is not None and len(x) != len(scores)):
        raise ValueError(
            f"baseline needs as many inputs as scores, got {len(x)} and {len(scores) if scores is not None else 0}"
        )
    ins = _columns([input_features(x[i], preprocess) for i in range(len(x))])
    inputs = {name: _hist(vals, quantile_edges(vals, bins)) for name, vals in ins.items()}
    outputs = {}
    if scores is not None and num_classes is not None:
        outs = _columns([output_features(scores[i]) for i in range(len(scores))])
        outputs = {
            "top1_confidence": _hist(outs["top1_confidence"], quantile_edges(outs["top1_confidence"], bins)),
            "top1_class": _hist(outs["top1_class"], class_edges(num_classes)),
        }
    th = Thresholds(thresholds.psi_warn, thresholds.psi_alert, thresholds.min_samples)
    return Baseline(len(x), inputs, outputs, th).to_dict()


def _columns(rows: list[dict[str, float]]) -> dict[str, list[float]]:
    return {k: [r[k] for r in rows] for k in rows[0]}


def _hist(values: list[float], edges: list[float]) -> Feature:
    return Feature(tuple(float(e) for e in edges), tuple(bin_counts(edges, values)))
