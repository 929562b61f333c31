"""Per-task output statistics for drift, and per-task shadow agreement. Pure, shared by the
agent (its telemetry recorder) and the compiler (the baseline builder), so both compute exactly
the same numbers; duck-typed over numpy arrays, no numpy import.

**Drift features** (:func:`features`): from one answer of a non-classifier
(:func:`protocol.answers.build` with :data:`PARAMS`, whatever the request asked for, so a
device's numbers do not depend on its apps' parameters), one value per feature per answer, so
a window's bins never hold more samples than it has inferences (``check_plausible``):

==============  ==========================================  ==================================
task            feature (``outputs.<name>`` in the baseline)  value per answer
==============  ==========================================  ==================================
detection       ``detection_count``                           detections at score >= 0.3
detection       ``detection_top_score``                       the best box's score (0: none)
detection       ``detections_c<id>``                          detections of class ``<id>`` at
                                                              score >= 0.3, for each id in the
                                                              baseline's ``task.classes``
segmentation    ``foreground_fraction``                       share of pixels not class 0
segmentation    ``fraction_c<id>``                            share of pixels of class ``<id>``,
                                                              per ``task.classes``
keypoints       ``pose_score``                                mean keypoint score
keypoints       ``keypoints_visible``                         keypoints with score >= 0.3
embedding       ``embedding_norm``                            L2 norm
embedding       ``centroid_distance``                         cosine distance (1 - cos) to the
                                                              baseline's ``task.centroid``
==============  ==========================================  ==================================

Edges (:func:`edges`): counts on integer edges ``0.5 .. COUNT_BINS - 0.5`` (the last bin is
"that many or more"); scores and fractions on fixed edges (:data:`SCORE_EDGES`,
:data:`FRACTION_EDGES`: a reference where a class is always absent still notices it appearing);
norms and centroid distances on reference quantiles (their scale is the model's).

**Shadow agreement** (:func:`agreement`), 0..1, the served answer against the candidate's on the
same input: detection ``detection_f1`` (boxes at score >= 0.3 matched one-to-one, same class,
IoU >= 0.5, greedily by score; F1 = 2 matched / (boxes of both); two empty answers agree, 1.0);
segmentation ``pixel_agreement`` (share of pixels with the same class); keypoints the share of
keypoints within :data:`KEYPOINT_AGREE_DISTANCE` (image fractions) of each other; embedding the
cosine similarity (clipped at 0); classification top-1 (1.0 or 0.0).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from .answers.params import Params

# the answer drift and shadow agreement are computed on: every box the model gives (a score
# threshold of 0), then counted at DETECTION_THRESHOLD. Lower than the answers' default 0.5:
# Coral's traffic detector scores real vehicles 0.3-0.45 on a first frame (zero LSTM state).
PARAMS = Params(score_threshold=0.0)
DETECTION_THRESHOLD = 0.3
VISIBLE_SCORE = 0.3  # a keypoint "seen" (MoveNet's and PoseNet's usual cut)
IOU_MATCH = 0.5
KEYPOINT_AGREE_DISTANCE = 0.05  # ~10 px on MoveNet's 192 px input
COUNT_BINS = 11  # 0, 1, ..., 9, 10 or more
MAX_CLASS_FEATURES = 8  # per-class features for the classes most seen in the reference
SCORE_EDGES = tuple(round(0.1 * i, 1) for i in range(1, 10))
FRACTION_EDGES = (0.001, 0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)
TASKS = ("detection", "segmentation", "keypoints", "embedding")


def features(doc: Mapping[str, Any], classes: Sequence[int] = (), centroid: Any = None) -> dict[str, float]:
    """One answer's drift features (module docstring); ``classes`` the ids with per-class
    features, ``centroid`` the reference embedding centroid (None: no ``centroid_distance``).
    A task without features (classification, tensors) gives ``{}``."""
    task = doc.get("task")
    out: dict[str, float] = {}
    if task == "detection":
        dets = doc["detections"]
        kept = [d for d in dets if float(d["score"]) >= DETECTION_THRESHOLD]
        out["detection_count"] = float(len(kept))
        out["detection_top_score"] = max((float(d["score"]) for d in dets), default=0.0)
        for c in classes:
            out[f"detections_c{c}"] = float(sum(1 for d in kept if int(d["class_id"]) == c))
    elif task == "segmentation":
        frac = {int(c["class_id"]): float(c["fraction"]) for c in doc["classes"]}
        out["foreground_fraction"] = max(0.0, 1.0 - frac.get(0, 0.0))
        for c in classes:
            out[f"fraction_c{c}"] = frac.get(c, 0.0)
    elif task == "keypoints":
        points = doc["keypoints"]
        out["pose_score"] = float(doc["score"])
        out["keypoints_visible"] = float(sum(1 for p in points if float(p["score"]) >= VISIBLE_SCORE))
    elif task == "embedding":
        v = [float(x) for x in doc["embedding"].reshape(-1).tolist()]
        out["embedding_norm"] = float(doc["norm"])
        if centroid is not None:
            out["centroid_distance"] = cosine_distance(v, centroid)
    return out


def edges(name: str, reference: Sequence[float], bins: int = 10) -> list[float]:
    """The bin edges of feature ``name`` (module docstring), from its reference values."""
    from .sketch import quantile_edges

    if name in ("detection_count", "keypoints_visible") or name.startswith("detections_c"):
        return [i + 0.5 for i in range(COUNT_BINS - 1)]
    if name in ("detection_top_score", "pose_score"):
        return list(SCORE_EDGES)
    if name == "foreground_fraction" or name.startswith("fraction_c"):
        return list(FRACTION_EDGES)
    return quantile_edges(reference, bins)


def busiest_classes(docs: Sequence[Mapping[str, Any]], limit: int = MAX_CLASS_FEATURES) -> list[int]:
    """The class ids that get per-class features: the ``limit`` most seen over the reference
    answers (detections at the threshold, or pixels), ties by id; ids in ascending order."""
    seen: dict[int, float] = {}
    for doc in docs:
        if doc.get("task") == "detection":
            for d in doc["detections"]:
                if float(d["score"]) >= DETECTION_THRESHOLD:
                    seen[int(d["class_id"])] = seen.get(int(d["class_id"]), 0.0) + 1.0
        elif doc.get("task") == "segmentation":
            for c in doc["classes"]:
                seen[int(c["class_id"])] = seen.get(int(c["class_id"]), 0.0) + float(c["fraction"])
    ranked = sorted(seen, key=lambda c: (-seen[c], c))[:limit]
    return sorted(ranked)


def centroid_of(vectors: Sequence[Sequence[float]]) -> list[float]:
    """The mean of unit-normalised vectors (the direction typical embeddings point in)."""
    if not vectors:
        raise ValueError("cannot take the centroid of no embeddings")
    dims = len(vectors[0])
    total = [0.0] * dims
    for v in vectors:
        if len(v) != dims:
            raise ValueError(f"embeddings of {len(v)} and {dims} dimensions")
        n = math.sqrt(sum(x * x for x in v)) or 1.0
        for i, x in enumerate(v):
            total[i] += x / n
    return [t / len(vectors) for t in total]


def cosine_distance(v: Sequence[float], centroid: Sequence[float]) -> float:
    """``1 - cos(v, centroid)``, 0..2; 1.0 when either is all zeros (no direction)."""
    if len(v) != len(centroid):
        raise ValueError(f"embedding has {len(v)} dimensions, the baseline centroid {len(centroid)}")
    dot = sum(float(a) * float(b) for a, b in zip(v, centroid, strict=True))
    na = math.sqrt(sum(float(a) * float(a) for a in v))
    nb = math.sqrt(sum(float(b) * float(b) for b in centroid))
    if na == 0.0 or nb == 0.0:
        return 1.0
    return 1.0 - max(-1.0, min(1.0, dot / (na * nb)))


SIGNALS = {  # feature name (or prefix, ending in "_c") -> the signal it measures
    "top1_class": "class mix",
    "top1_confidence": "confidence",
    "detection_count": "detections per frame",
    "detection_top_score": "detection scores",
    "detections_c": "detections per class",
    "foreground_fraction": "class-pixel fractions",
    "fraction_c": "class-pixel fractions",
    "pose_score": "keypoint scores",
    "keypoints_visible": "keypoint scores",
    "embedding_norm": "embedding norm",
    "centroid_distance": "distance to the baseline centroid",
}


def signal(key: str) -> str:
    """The signal a baseline feature key (``"outputs.detections_c3"``) belongs to: the drift
    page groups verdicts by it. Every input feature is ``input features``; an output feature
    this version does not know is its own name."""
    side, _, name = key.partition(".")
    if side == "inputs":
        return "input features"
    if name in SIGNALS:
        return SIGNALS[name]
    head, _, tail = name.rpartition("_c")
    return SIGNALS.get(head + "_c", name) if tail.isdigit() else name


# --- shadow agreement ---------------------------------------------------------------------


def iou(a: Mapping[str, float], b: Mapping[str, float]) -> float:
    """Intersection over union of two ``{"xmin", "ymin", "xmax", "ymax"}`` boxes (0 if empty)."""
    w = min(a["xmax"], b["xmax"]) - max(a["xmin"], b["xmin"])
    h = min(a["ymax"], b["ymax"]) - max(a["ymin"], b["ymin"])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = (a["xmax"] - a["xmin"]) * (a["ymax"] - a["ymin"]) + (b["xmax"] - b["xmin"]) * (b["ymax"] - b["ymin"])
    return inter / (union - inter) if union - inter > 0 else 0.0


def match(
    truth: Sequence[Mapping[str, Any]], found: Sequence[Mapping[str, Any]], threshold: float = IOU_MATCH
) -> list[tuple[int, int]]:
    """One-to-one matches ``(i_truth, j_found)``: ``found`` best score first (ties: order),
    each to the unmatched ``truth`` box of its class with the highest IoU >= ``threshold``
    (ties: the first). Boxes are ``{"class_id", "box": {...}}`` (``score`` in ``found``)."""
    order = sorted(range(len(found)), key=lambda j: (-float(found[j].get("score", 0.0)), j))
    used: set[int] = set()
    pairs = []
    for j in order:
        best, best_iou = -1, threshold
        for i, t in enumerate(truth):
            if i in used or int(t["class_id"]) != int(found[j]["class_id"]):
                continue
            v = iou(t["box"], found[j]["box"])
            if v >= best_iou and (best < 0 or v > best_iou):
                best, best_iou = i, v
        if best >= 0:
            used.add(best)
            pairs.append((best, j))
    return pairs


def detection_f1(served: Sequence[Mapping[str, Any]], candidate: Sequence[Mapping[str, Any]]) -> float:
    """F1 of the candidate's detections against the served ones, IoU-matched (:func:`match`)."""
    if not served and not candidate:
        return 1.0
    return 2 * len(match(served, candidate)) / (len(served) + len(candidate))


def pixel_agreement(a: Any, b: Any) -> float:
    """Share of pixels with the same class id in two class maps of one shape."""
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"class maps of shapes {list(a.shape)} and {list(b.shape)}")
    return float((a == b).mean())


def keypoint_agreement(a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]]) -> float:
    """Share of keypoints within :data:`KEYPOINT_AGREE_DISTANCE` (normalised) of each other."""
    if len(a) != len(b):
        raise ValueError(f"{len(a)} and {len(b)} keypoints")
    if not a:
        return 1.0
    near = 0
    for p, q in zip(a, b, strict=True):
        d = math.hypot(
            float(p["x_normalized"]) - float(q["x_normalized"]), float(p["y_normalized"]) - float(q["y_normalized"])
        )
        near += d <= KEYPOINT_AGREE_DISTANCE
    return near / len(a)


def agreement(served: Mapping[str, Any], candidate: Mapping[str, Any], maps: tuple[Any, Any] | None = None) -> float:
    """How far the candidate's answer agrees with the served one, 0..1 (module docstring).
    Segmentation needs the two class ``maps``. Raises ``ValueError`` for answers of different
    tasks or shapes, or a task without an agreement (``tensors``)."""
    task = served.get("task")
    if candidate.get("task") != task:
        raise ValueError(f"answers of different tasks: {task} and {candidate.get('task')}")
    if task == "detection":
        kept = [
            [d for d in doc["detections"] if float(d["score"]) >= DETECTION_THRESHOLD] for doc in (served, candidate)
        ]
        return detection_f1(*kept)
    if task == "segmentation":
        if maps is None:
            raise ValueError("segmentation agreement needs both class maps")
        return pixel_agreement(*maps)
    if task == "keypoints":
        return keypoint_agreement(served["keypoints"], candidate["keypoints"])
    if task == "embedding":
        a = served["embedding"].reshape(-1).tolist()
        b = candidate["embedding"].reshape(-1).tolist()
        return max(0.0, 1.0 - cosine_distance(a, b)) if any(a) and any(b) else float(a == b)
    if task == "classification":
        return float(served["top"][0]["index"] == candidate["top"][0]["index"])
    raise ValueError(f"no agreement measure for task {task!r}")
