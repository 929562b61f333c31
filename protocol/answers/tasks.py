"""The per-task answers: pure functions from dequantized outputs, the original image's size and
the request's :class:`~protocol.answers.params.Params` to the task's document. Duck-typed over
numpy arrays (``reshape``, ``tolist``, ``astype``, ``max``, ``sum``, ``argmax``, ``tobytes``);
no numpy import, so :mod:`protocol` stays dependency-free.

Geometry: both servers resize the whole image to the model's input (a stretch, no crop or
letterbox: ``agent/image.py``, ``cloud/tensors.py``), so a normalised coordinate ``u`` along an
axis of ``n`` original pixels is ``u * n`` pixels. A tensor request has no image: its "image" is
the model input itself.
"""

from __future__ import annotations

import base64
import struct
import zlib
from typing import Any

from ..errors import BadParameter
from ..labels import LabelMap
from .params import Params

# the COCO keypoint order MoveNet and PoseNet use (cocodataset.org/#format-data)
COCO_KEYPOINTS = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)
MAX_MASK_CLASSES = 65536  # a class map with higher ids is not a class map


def _clip(u: float) -> float:
    return 0.0 if u < 0.0 else 1.0 if u > 1.0 else u


def detection(
    boxes: Any, classes: Any, scores: Any, count: Any, labels: LabelMap, params: Params, size: tuple[int, int]
) -> dict[str, Any]:
    """SSD post-process outputs -> ``{"task": "detection", "detections": [...], "image", ...}``.

    ``boxes`` ``[1, N, 4]`` as ``[ymin, xmin, ymax, xmax]`` normalised to the model input;
    ``classes`` ``[1, N]`` (output class indices, ``labels.offset`` makes them ids; None: no
    classes output, every box is class 0); ``scores`` ``[1, N]``; ``count`` ``[1]`` valid rows (None:
    all ``N``). Detections at or above ``score_threshold``, best first, at most ``max_detections``."""
    rows = boxes.reshape(-1, 4).tolist()
    n = len(rows)
    if params.max_detections is not None and params.max_detections > n:
        raise BadParameter("max_detections", params.max_detections, f"must be in 1..{n} (the model gives {n} boxes)")
    s = [float(v) for v in scores.reshape(-1).tolist()]
    c = [int(round(float(v))) for v in classes.reshape(-1).tolist()] if classes is not None else [0] * n
    valid = min(n, len(s), len(c), max(0, int(float(count.reshape(-1).tolist()[0])))) if count is not None else n
    order = sorted((i for i in range(valid) if s[i] >= params.score_threshold), key=lambda i: (-s[i], i))
    if params.max_detections is not None:
        order = order[: params.max_detections]
    width, height = size
    found = []
    for i in order:
        ymin, xmin, ymax, xmax = (_clip(float(v)) for v in rows[i])
        class_id = c[i] + labels.offset
        found.append(
            {
                "label": labels.name(class_id),
                "class_id": class_id,
                "score": s[i],
                "box": {"xmin": xmin * width, "ymin": ymin * height, "xmax": xmax * width, "ymax": ymax * height},
                "box_normalized": {"xmin": xmin, "ymin": ymin, "xmax": xmax, "ymax": ymax},
            }
        )
    return {
        "task": "detection",
        "detections": found,
        "image": {"width": width, "height": height},
        "score_threshold": params.score_threshold,
        "max_detections": params.max_detections if params.max_detections is not None else n,
    }


def class_map(mask: Any) -> Any:
    """``[1, H, W]`` (or ``[H, W]``) class ids as they are; ``[1, H, W, C]`` logits by argmax."""
    if len(mask.shape) == 4:
        return mask.argmax(axis=-1)
    return mask


def segmentation(mask: Any, labels: LabelMap, params: Params, size: tuple[int, int]) -> dict[str, Any]:
    """A class map (ids, or logits) -> per-class pixel counts and fractions, most pixels first;
    ``mask=png`` adds the class ids at model resolution as a base64 grayscale PNG (8-bit, or
    16-bit when an id is over 255)."""
    ids = class_map(mask)
    h, w = int(ids.shape[-2]), int(ids.shape[-1])
    ids = ids.reshape(h, w)
    total = h * w
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= MAX_MASK_CLASSES:
        raise ValueError(f"segmentation output holds class ids {low}..{high}: not a class map")
    counts = [(c, int((ids == c).sum())) for c in range(high + 1)]
    present = sorted(((c, n) for c, n in counts if n), key=lambda cn: (-cn[1], cn[0]))
    doc: dict[str, Any] = {
        "task": "segmentation",
        "classes": [{"class_id": c, "label": labels.name(c), "pixels": n, "fraction": n / total} for c, n in present],
        "mask_size": {"width": w, "height": h},
        "image": {"width": size[0], "height": size[1]},
    }
    if params.mask == "png":
        depth = 8 if high < 256 else 16
        data = ids.astype("uint8" if depth == 8 else ">u2").tobytes()
        doc["mask"] = {
            "format": "png",
            "encoding": "base64",
            "width": w,
            "height": h,
            "bit_depth": depth,
            "data": base64.b64encode(png_gray(w, h, data, depth)).decode("ascii"),
        }
    return doc


def png_gray(width: int, height: int, data: bytes, depth: int = 8) -> bytes:
    """A grayscale PNG of ``data`` (rows of ``width`` samples, ``depth`` 8 or 16 bits big-endian)."""
    stride = width * depth // 8
    if len(data) != stride * height:
        raise ValueError(f"{len(data)} bytes for a {width}x{height} {depth}-bit image (needs {stride * height})")
    raw = b"".join(b"\x00" + data[r * stride : (r + 1) * stride] for r in range(height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, depth, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def keypoints(points: Any, labels: LabelMap, size: tuple[int, int]) -> dict[str, Any]:
    """``[1, 1, K, 3]`` (y, x, score; y and x normalised to the input) -> named keypoints in
    pixels of the original image and normalised. Names: the bundle's labels when it has one per
    keypoint, COCO's 17 for a 17-point model, else the index."""
    rows = points.reshape(-1, 3).tolist()
    k = len(rows)
    if len(labels) == k:
        names = [labels.name(i) for i in range(k)]
    elif k == len(COCO_KEYPOINTS):
        names = list(COCO_KEYPOINTS)
    else:
        names = [str(i) for i in range(k)]
    width, height = size
    out: list[dict[str, Any]] = []
    for name, (y, x, score) in zip(names, rows, strict=True):
        y, x = float(y), float(x)
        out.append(
            {"name": name, "score": float(score), "x": x * width, "y": y * height, "x_normalized": x, "y_normalized": y}
        )
    return {
        "task": "keypoints",
        "keypoints": out,
        "score": sum(float(p["score"]) for p in out) / k if k else 0.0,
        "image": {"width": width, "height": height},
    }


def embedding(vector: Any) -> dict[str, Any]:
    """The dequantized feature vector (flat) and its L2 norm."""
    v = vector.reshape(-1)
    norm = float((v.astype("float64") ** 2).sum()) ** 0.5
    return {"task": "embedding", "embedding": v, "dimensions": int(v.shape[0]), "norm": norm}
