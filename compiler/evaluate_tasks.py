"""Build-time accuracy per task, on labelled validation images: detection mAP@0.5, segmentation
mIoU, keypoints PCK@0.2 (classification: :mod:`compiler.evaluate`). The metrics are pure
functions over answers (:mod:`protocol.answers` documents, the device's own form) and the truth;
:func:`evaluate_images` is the thin shell that runs a model on the images the truth names.

Truth files (docs/models.md, "Accuracy gates per task"):

* detection, JSON lines, one image per line, boxes in pixels of that image::

      {"image": "frame1.jpg", "boxes": [{"label": "sedan", "box": [xmin, ymin, xmax, ymax]}]}

  ``label`` a class name of the bundle's labels or an integer class id; an image with no
  objects has ``"boxes": []``.
* segmentation: a folder of PNG class-id images, one per validation image with the same stem
  (``frame1.png`` for ``frame1.jpg``), each pixel the class id, 255 = ignore (PASCAL VOC's rule),
  at any size (compared at the model's mask size, nearest-neighbour).
* keypoints: COCO keypoints JSON (17 COCO keypoints): ``images`` (``id``, ``file_name``) and
  ``annotations`` (``image_id``, ``keypoints`` ``[x, y, v] x 17`` in pixels, ``v`` 0 = not
  labelled, optional ``bbox`` ``[x, y, w, h]``); the first annotation of an image is its person
  (single-pose models).

Metrics:

* ``map50``: per class in the truth, the area under the precision envelope (all-point
  interpolation, PASCAL VOC 2010+) of the detections ranked by score, a detection true when it
  matches an unmatched truth box of its class with IoU >= 0.5 (:func:`protocol.taskstats.iou`);
  mAP the mean over those classes.
* ``miou``: per class, intersection / union of predicted and true pixels summed over all
  images (ignored pixels left out); the mean over classes whose union is not empty.
* ``pck``: the share of labelled keypoints (``v > 0``) predicted within 0.2 x the person's size
  (the larger side of ``bbox``, else of the labelled keypoints' extent) of the truth.

Gate (:func:`gate`): where a float original exists, the int8 model's metric may fall at most
``max_drop`` percentage points below it (``int8_<metric>_drop``); an imported ``.tflite`` has no
float original, so its metric is reported with that said, and nothing is gated.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from protocol.taskstats import iou

from .errors import BadInput
from .evaluate import Check, GateResult

PCK_ALPHA = 0.2
IOU_MATCH = 0.5
IGNORE = 255
METRIC = {"detection": "map50", "segmentation": "miou", "keypoints": "pck"}
Box = dict[str, float]


# --- metrics (pure) --------------------------------------------------------------------------


def average_precision(
    truth: Mapping[str, Sequence[Box]], found: Mapping[str, Sequence[tuple[float, Box]]], threshold: float = IOU_MATCH
) -> float:
    """AP of one class: ``truth`` image -> boxes, ``found`` image -> (score, box)."""
    npos = sum(len(b) for b in truth.values())
    if npos == 0:
        raise ValueError("average precision of a class with no truth boxes")
    ranked = sorted(((s, img, b) for img, dets in found.items() for s, b in dets), key=lambda t: -t[0])
    used: dict[str, set[int]] = {}
    tp: list[int] = []
    for _score, img, box in ranked:
        best, best_iou = -1, threshold
        for i, t in enumerate(truth.get(img, ())):
            if i in used.get(img, set()):
                continue
            v = iou(t, box)
            if v >= best_iou and (best < 0 or v > best_iou):
                best, best_iou = i, v
        if best >= 0:
            used.setdefault(img, set()).add(best)
        tp.append(int(best >= 0))
    recall, precision = [0.0], [1.0]
    hits = 0
    for k, hit in enumerate(tp, 1):
        hits += hit
        recall.append(hits / npos)
        precision.append(hits / k)
    ap = 0.0
    envelope = 0.0
    for k in range(len(recall) - 1, 0, -1):  # right to left: the best precision at any higher recall
        envelope = max(envelope, precision[k])
        ap += (recall[k] - recall[k - 1]) * envelope
    return ap


def map50(truth: Mapping[str, Sequence[Mapping[str, Any]]], answers: Mapping[str, Mapping[str, Any]]) -> float:
    """mAP@0.5 over the classes in ``truth`` (image -> ``[{"class_id", "box"}]``) of the
    detection ``answers`` (image -> answer document, boxes in pixels of the image)."""
    classes = sorted({int(b["class_id"]) for boxes in truth.values() for b in boxes})
    if not classes:
        raise ValueError("the truth has no boxes: mAP is undefined")
    aps = []
    for c in classes:
        t = {img: [b["box"] for b in boxes if int(b["class_id"]) == c] for img, boxes in truth.items()}
        f = {
            img: [(float(d["score"]), d["box"]) for d in doc["detections"] if int(d["class_id"]) == c]
            for img, doc in answers.items()
        }
        aps.append(average_precision(t, f))
    return float(np.mean(aps))


def miou(pairs: Sequence[tuple[np.ndarray, np.ndarray]], ignore: int = IGNORE) -> float:
    """Mean IoU of ``(predicted, true)`` class maps of one shape each; ``ignore`` pixels left out."""
    inter: dict[int, int] = {}
    union: dict[int, int] = {}
    for pred, true in pairs:
        if pred.shape != true.shape:
            raise ValueError(f"predicted mask {list(pred.shape)} and truth {list(true.shape)} differ in shape")
        keep = true != ignore
        p, t = pred[keep].astype(np.int64), true[keep].astype(np.int64)
        for c in np.union1d(np.unique(p), np.unique(t)):
            c = int(c)
            inter[c] = inter.get(c, 0) + int(((p == c) & (t == c)).sum())
            union[c] = union.get(c, 0) + int(((p == c) | (t == c)).sum())
    ious = [inter[c] / union[c] for c in union if union[c]]
    if not ious:
        raise ValueError("no labelled pixels: mIoU is undefined")
    return float(np.mean(ious))


def pck(pairs: Sequence[tuple[Sequence[tuple[float, float]], Sequence[tuple[float, float, int]], float]]) -> float:
    """PCK: ``(predicted [(x, y)], truth [(x, y, v)], person size)`` per image; a labelled
    keypoint is correct within ``PCK_ALPHA * size`` pixels."""
    correct = total = 0
    for pred, truth, size in pairs:
        if len(pred) != len(truth):
            raise ValueError(f"{len(pred)} predicted keypoints, {len(truth)} in the truth")
        for (px, py), (tx, ty, v) in zip(pred, truth, strict=True):
            if v > 0:
                total += 1
                correct += math.hypot(px - tx, py - ty) <= PCK_ALPHA * size
    if total == 0:
        raise ValueError("no labelled keypoints: PCK is undefined")
    return correct / total


def person_size(truth: Sequence[tuple[float, float, int]], bbox: Sequence[float] | None) -> float:
    """The larger side of the person's ``bbox`` ``[x, y, w, h]``, else of its labelled keypoints."""
    if bbox is not None and len(bbox) == 4:
        return float(max(bbox[2], bbox[3]))
    pts = [(x, y) for x, y, v in truth if v > 0]
    if len(pts) < 2:
        raise ValueError("a person needs a bbox or two labelled keypoints for PCK")
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    return float(max(max(xs) - min(xs), max(ys) - min(ys)))


# --- truth files -----------------------------------------------------------------------------


def read_boxes(path: Path, label_ids: Mapping[str, int]) -> dict[str, list[dict[str, Any]]]:
    """The detection truth file (module docstring) -> image -> ``[{"class_id", "box"}]``."""
    out: dict[str, list[dict[str, Any]]] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(path, f"cannot read the boxes file ({exc})") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path.name} line {n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BadInput(path, f"line {n} is not JSON ({exc.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("image"), str) or not isinstance(row.get("boxes"), list):
            raise BadInput(path, f'line {n} must be {{"image": "name", "boxes": [...]}}, got {line[:80]!r}')
        boxes = []
        for b in row["boxes"]:
            box = b.get("box") if isinstance(b, dict) else None
            if not isinstance(box, list) or len(box) != 4 or not all(isinstance(v, (int, float)) for v in box):
                raise BadInput(path, f"{where}: a box must be [xmin, ymin, xmax, ymax] in pixels, got {b!r:.80}")
            if box[2] <= box[0] or box[3] <= box[1]:
                raise BadInput(path, f"{where}: box {box} has xmax <= xmin or ymax <= ymin")
            label = b.get("label")
            if isinstance(label, bool) or not isinstance(label, (int, str)):
                raise BadInput(path, f"{where}: label must be a class name or id, got {label!r:.40}")
            if isinstance(label, str) and label not in label_ids:
                raise BadInput(path, f"{where}: label {label!r} is not one of the bundle's labels")
            cid = label if isinstance(label, int) else label_ids[label]
            boxes.append(
                {"class_id": cid, "box": dict(zip(("xmin", "ymin", "xmax", "ymax"), map(float, box), strict=True))}
            )
        if row["image"] in out:
            raise BadInput(path, f"{where}: image {row['image']!r} is listed twice")
        out[row["image"]] = boxes
    if not out:
        raise BadInput(path, "the boxes file lists no image")
    return out


def read_coco_keypoints(path: Path) -> dict[str, tuple[list[tuple[float, float, int]], list[float] | None]]:
    """COCO keypoints JSON -> image file name -> (17 ``(x, y, v)``, bbox or None)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        names = {int(im["id"]): str(im["file_name"]) for im in doc["images"]}
        out: dict[str, tuple[list[tuple[float, float, int]], list[float] | None]] = {}
        for ann in doc["annotations"]:
            name = names[int(ann["image_id"])]
            k = ann["keypoints"]
            if len(k) != 51:
                raise BadInput(path, f"image {name!r}: keypoints must hold 17 x [x, y, v] (51 numbers), got {len(k)}")
            if name not in out:  # the first annotation is the person (single-pose models)
                pts = [(float(k[i]), float(k[i + 1]), int(k[i + 2])) for i in range(0, 51, 3)]
                out[name] = (pts, [float(v) for v in ann["bbox"]] if ann.get("bbox") else None)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInput(path, f"cannot read the COCO keypoints file ({exc})") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise BadInput(path, f"not COCO keypoints JSON (images/annotations): {exc!r:.80}") from None
    if not out:
        raise BadInput(path, "the COCO keypoints file has no annotation")
    return out


# --- gate -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskMetric:
    task: str
    name: str  # map50 | miou | pck
    value: float
    images: int

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "metric": self.name, "value": round(self.value, 6), "images": self.images}


def gate(
    int8: TaskMetric, reference: TaskMetric | None, max_drop: float = 1.0, min_value: float | None = None
) -> tuple[GateResult, str]:
    """The int8 metric against the float original's (percentage points), and a line saying what
    was judged. With no float original (an imported ``.tflite``) the only check is the operator's
    floor ``min_value`` (``import --min-metric``); without one nothing is gated and the line says so."""
    if reference is None:
        if min_value is None:
            return GateResult(()), (
                f"{int8.name} {int8.value:.2%} on {int8.images} images; not gated: an imported .tflite has no "
                "float original to compare against (set a floor with --min-metric)"
            )
        floor = Check(
            f"int8_{int8.name}_min",
            round(int8.value, 6),
            min_value,
            int8.value >= min_value - 1e-12,
            f"{int8.name} {int8.value:.2%} on {int8.images} images against the floor {min_value:.2%}",
        )
        return GateResult((floor,)), floor.detail
    drop = (reference.value - int8.value) * 100.0
    check = Check(
        f"int8_{int8.name}_drop",
        round(drop, 4),
        max_drop,
        drop <= max_drop + 1e-9,
        f"float {reference.name} {reference.value:.2%} -> int8 {int8.value:.2%} on {int8.images} images",
    )
    return GateResult((check,)), check.detail


# --- the shell: run a model on the images the truth names ------------------------------------


def evaluate_images(
    runner: Any,
    signature: Any,
    labels: Any,
    preprocess: Mapping[str, Any],
    images: Path,
    truth: Path,
) -> TaskMetric:
    """Run the model (a :class:`compiler.inference.TfliteRunner`) on each image the ``truth``
    names (files in ``images``), as the agent feeds it (Pillow, RGB or L, resized to the input
    with the preprocess's filter), answer as the agent does (:mod:`protocol.answers`, every box:
    score threshold 0) and score it against the truth (:data:`METRIC` of the signature's task)."""
    from PIL import Image

    from protocol import answers as proto_answers
    from protocol.answers.params import Params
    from protocol.features import resize_filter

    task = signature.task
    if task not in METRIC:
        raise BadInput(truth, f"no accuracy metric for {task} models here (classification: --validation)")
    h, w, ch = int(preprocess["height"]), int(preprocess["width"]), int(preprocess.get("channels", 3))
    filt = getattr(Image.Resampling, resize_filter(dict(preprocess)).upper())

    def answer(name: str) -> tuple[dict[str, Any], list[np.ndarray]]:
        path = images / name
        try:
            with Image.open(path) as im:
                size = im.size
                px = np.asarray(im.convert("L" if ch == 1 else "RGB").resize((w, h), filt), dtype=np.float32)
        except OSError as exc:
            raise BadInput(path, f"cannot read the validation image the truth names ({exc})") from None
        x = px.reshape(1, h, w, ch) * float(preprocess["scale"]) + float(preprocess["offset"])
        ys = runner.run_all(runner.input.quantize(x).reshape(runner.input.shape))
        params = Params(score_threshold=0.0)
        return proto_answers.build(signature, ys, labels, params, size), ys

    if task == "detection":
        ids = {name: cid for cid, name in labels.names.items()}
        boxes = read_boxes(truth, ids)
        docs = {name: answer(name)[0] for name in boxes}
        return TaskMetric(task, "map50", map50(boxes, docs), len(docs))
    if task == "segmentation":
        pairs = []
        masks = sorted(truth.glob("*.png"))
        if not masks:
            raise BadInput(truth, "holds no PNG class-id masks")
        for mask_path in masks:
            candidates = [p for p in images.iterdir() if p.stem == mask_path.stem and p.suffix.lower() != ".png"]
            if not candidates:
                raise BadInput(mask_path, f"no validation image named {mask_path.stem}.* in {images}")
            doc, ys = answer(candidates[0].name)
            real = {s.role: proto_answers.dequantize(s, v) for s, v in proto_answers.answer_outputs(signature, ys)}
            from protocol.answers.tasks import class_map

            pred = np.asarray(class_map(real["mask"] if "mask" in real else real["logits"]))
            pred = pred.reshape(pred.shape[-2], pred.shape[-1])
            with Image.open(mask_path) as m:
                true = np.asarray(m.resize((pred.shape[1], pred.shape[0]), Image.Resampling.NEAREST))
            if true.ndim != 2:
                raise BadInput(mask_path, f"a mask must be one channel of class ids, got shape {list(true.shape)}")
            pairs.append((pred, true))
        return TaskMetric(task, "miou", miou(pairs), len(pairs))
    people = read_coco_keypoints(truth)
    kp_pairs: list[tuple[Sequence[tuple[float, float]], Sequence[tuple[float, float, int]], float]] = []
    for name, (pts, bbox) in people.items():
        doc = answer(name)[0]
        points = [(float(k["x"]), float(k["y"])) for k in doc["keypoints"]]
        kp_pairs.append((points, pts, person_size(pts, bbox)))
    return TaskMetric(task, "pck", pck(kp_pairs), len(kp_pairs))
