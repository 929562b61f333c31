"""Stage 7: the drift baseline (``baseline.json``, format in :mod:`protocol.baseline`).

Features come from :mod:`protocol.features` so the agent computes exactly the same numbers:
input features on each sample's float input tensor, output features on the dequantized scores
of the artifact the device serves (int8). Edges are reference quantiles (10 bins by default);
``top1_class`` uses the fixed class edges ``0.5, 1.5, ...``. Output features are a classifier's
(:func:`build`); a detection, segmentation, keypoints or embedding model's (:func:`build_task`)
are :mod:`protocol.taskstats`'s on the answers the device would give (:func:`answers`), with the
baseline's ``task`` section (per-class feature ids, embedding centroid). Any other task
(``tensors``) holds the input features only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from protocol import answers as proto_answers, taskstats
from protocol.baseline import Baseline, Feature, TaskSection, Thresholds
from protocol.features import class_edges, input_features, output_features
from protocol.labels import LabelMap
from protocol.signature import Signature
from protocol.sketch import DriftThresholds, bin_counts, quantile_edges

from .inference import TfliteRunner


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
    inputs = _inputs(x, preprocess, bins)
    outputs = {}
    if scores is not None and num_classes is not None:
        outs = _columns([output_features(scores[i]) for i in range(len(scores))])
        outputs = {
            "top1_confidence": _hist(outs["top1_confidence"], quantile_edges(outs["top1_confidence"], bins)),
            "top1_class": _hist(outs["top1_class"], class_edges(num_classes)),
        }
    th = Thresholds(thresholds.psi_warn, thresholds.psi_alert, thresholds.min_samples)
    return Baseline(len(x), inputs, outputs, th).to_dict()


def _inputs(x: np.ndarray, preprocess: dict[str, Any], bins: int) -> dict[str, Feature]:
    ins = _columns([input_features(x[i], preprocess) for i in range(len(x))])
    return {name: _hist(vals, quantile_edges(vals, bins)) for name, vals in ins.items()}


def answers(runner: TfliteRunner, signature: Signature, labels: LabelMap, raw: np.ndarray) -> list[dict[str, Any]]:
    """The answer documents a device gives for each raw input (``raw``: N model inputs), with
    :data:`protocol.taskstats.PARAMS` and the model input as the image (what drift features and
    shadow agreement are computed on)."""
    return [
        proto_answers.build(signature, runner.run_all(raw[i]), labels, taskstats.PARAMS, None) for i in range(len(raw))
    ]


def build_task(
    x: np.ndarray,
    docs: list[dict[str, Any]],
    preprocess: dict[str, Any],
    task: str,
    bins: int = 10,
    thresholds: DriftThresholds = DriftThresholds(),
) -> dict[str, Any]:
    """The baseline of a non-classifier: input features of ``x`` (float inputs), output features
    (:func:`protocol.taskstats.features`) of ``docs`` (:func:`answers` of the same samples)."""
    if len(x) == 0 or len(x) != len(docs):
        raise ValueError(f"baseline needs as many inputs as answers, got {len(x)} and {len(docs)}")
    th = Thresholds(thresholds.psi_warn, thresholds.psi_alert, thresholds.min_samples)
    if task not in taskstats.TASKS:
        return Baseline(len(x), _inputs(x, preprocess, bins), {}, th).to_dict()
    classes = tuple(taskstats.busiest_classes(docs)) if task in ("detection", "segmentation") else ()
    centroid = None
    if task == "embedding":
        centroid = [round(v, 7) for v in taskstats.centroid_of([d["embedding"].reshape(-1).tolist() for d in docs])]
    outs = _columns([taskstats.features(d, classes, centroid) for d in docs])
    outputs = {name: _hist(vals, taskstats.edges(name, vals, bins)) for name, vals in outs.items()}
    section = TaskSection(task, classes, None if centroid is None else tuple(centroid))
    return Baseline(len(x), _inputs(x, preprocess, bins), outputs, th, task=section).to_dict()


def _columns(rows: list[dict[str, float]]) -> dict[str, list[float]]:
    return {k: [r[k] for r in rows] for k in rows[0]}


def _hist(values: list[float], edges: list[float]) -> Feature:
    return Feature(tuple(float(e) for e in edges), tuple(bin_counts(edges, values)))
