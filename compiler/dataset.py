"""Calibration / validation data at the CLI boundary: ``.npz`` files or folders of images.

* ``.npz`` with ``x`` (and ``y`` for validation). ``x`` as **uint8** is pixels (N, H, W[, C]):
  the float input is ``pixel * scale + offset`` and the manifest records an image preprocess
  spec; ``x`` as **float** is the model's float input as is (preprocess ``{"kind": "tensor"}``).
* a **folder of images** (png/jpg/jpeg/bmp, sorted by name), resized to the model's H×W,
  converted to L or RGB by channel count; a validation folder also holds ``labels.csv`` with
  ``filename,label`` rows (label: class id or a name from the labels file).

Every problem is a :class:`BadInput` naming the file and what is wrong with it.
"""

from __future__ import annotations

import csv
import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from protocol.errors import BadPayload
from protocol.labels import parse_labels

from .errors import BadInput

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


@dataclass(frozen=True)
class Samples:
    x: np.ndarray  # float model inputs (N, ...)
    y: np.ndarray | None
    preprocess: dict[str, Any]
    sha256: str  # of the source bytes


def read_labels(path: Path) -> tuple[str, ...]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BadInput(path, f"cannot read labels ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise BadInput(path, "labels file is not UTF-8 text") from None
    labels = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not labels:
        raise BadInput(path, "labels file is empty")
    if labels[0].replace(" ", "").startswith("item{"):
        # a protobuf label map (a detector's, ids from 1): kept as it is, read by protocol.labels
        try:
            parse_labels(text)
        except BadPayload as exc:
            raise BadInput(path, exc.problem) from None
        return labels
    return _strip_index_prefix(labels)


def _strip_index_prefix(labels: tuple[str, ...]) -> tuple[str, ...]:
    """Coral label files are ``"0  background"``: drop a leading index when every line has it."""
    parts = [lab.split(maxsplit=1) for lab in labels]
    if all(len(p) == 2 and p[0].isdigit() for p in parts) and [int(p[0]) for p in parts] == list(range(len(parts))):
        return tuple(p[1] for p in parts)
    return labels


def load(
    path: Path,
    what: str,
    need_y: bool,
    scale: float | None,
    offset: float,
    image_hw: tuple[int, int] | None = None,
    channels: int | None = None,
    labels: tuple[str, ...] | None = None,
) -> Samples:
    if not path.exists():
        raise BadInput(path, f"{what} not found")
    if path.is_dir():
        return _load_folder(path, what, need_y, scale, offset, image_hw, channels, labels)
    return _load_npz(path, what, need_y, scale, offset)


def _load_npz(path: Path, what: str, need_y: bool, scale: float | None, offset: float) -> Samples:
    raw = path.read_bytes()
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise BadInput(path, f"not a readable .npz file ({type(exc).__name__}: {str(exc)[:120]})") from None
    if "x" not in arrays:
        raise BadInput(path, f"{what} .npz has no array 'x' (found {sorted(arrays)})")
    x = arrays["x"]
    if x.ndim < 2:
        raise BadInput(path, f"{what} x must be (N, ...) samples, got shape {list(x.shape)}")
    if len(x) == 0:
        raise BadInput(path, f"{what} is empty (x has 0 samples)")
    y = arrays.get("y")
    if need_y and y is None:
        raise BadInput(path, f"{what} .npz needs labels 'y' next to 'x'")
    if y is not None:
        y = _check_y(path, y, len(x))
    if x.dtype == np.uint8:
        s = 1.0 / 255.0 if scale is None else scale
        fx = x.astype(np.float32) * np.float32(s) + np.float32(offset)
        if fx.ndim == 3:
            fx = fx[..., None]
        if fx.ndim != 4 or fx.shape[-1] not in (1, 3):
            raise BadInput(path, f"{what} uint8 x must be images (N, H, W[, 1|3]), got shape {list(x.shape)}")
        pre = {
            "kind": "image",
            "height": int(fx.shape[1]),
            "width": int(fx.shape[2]),
            "channels": int(fx.shape[3]),
            "scale": s,
            "offset": offset,
        }
        return Samples(fx, y, pre, hashlib.sha256(raw).hexdigest())
    if not np.issubdtype(x.dtype, np.floating):
        raise BadInput(path, f"{what} x must be float32 inputs or uint8 pixels, got dtype {x.dtype}")
    if not np.isfinite(x).all():
        raise BadInput(path, f"{what} x contains NaN or infinite values")
    return Samples(x.astype(np.float32), y, {"kind": "tensor"}, hashlib.sha256(raw).hexdigest())


def _check_y(path: Path, y: np.ndarray, n: int) -> np.ndarray:
    if y.ndim != 1:
        raise BadInput(path, f"y must be a 1-D array of class ids, got shape {list(y.shape)}")
    if len(y) != n:
        raise BadInput(path, f"x has {n} samples but y has {len(y)} labels")
    if not np.issubdtype(y.dtype, np.integer):
        raise BadInput(path, f"y must be integer class ids, got dtype {y.dtype}")
    return y.astype(np.int64)


def _load_folder(
    path: Path,
    what: str,
    need_y: bool,
    scale: float | None,
    offset: float,
    image_hw: tuple[int, int] | None,
    channels: int | None,
    labels: tuple[str, ...] | None,
) -> Samples:
    from PIL import Image, UnidentifiedImageError

    if image_hw is None or channels is None:
        raise BadInput(
            path,
            "image folders need the model's input size: pass --image-size HxW (and --channels) or give a .keras model",
        )
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    y = None
    if need_y or (path / "labels.csv").exists():
        files, y = _folder_labels(path, labels)
    if not files:
        raise BadInput(path, f"{what} folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
    h = hashlib.sha256()
    pixels = []
    for f in files:
        data = f.read_bytes()
        h.update(f.name.encode() + b"\0" + data)
        try:
            with Image.open(f) as opened:
                im = opened.convert("L" if channels == 1 else "RGB").resize((image_hw[1], image_hw[0]))
                arr = np.asarray(im, dtype=np.uint8)
        except (UnidentifiedImageError, OSError) as exc:
            raise BadInput(f, f"not a readable image ({exc})") from None
        pixels.append(arr if arr.ndim == 3 else arr[..., None])
    s = 1.0 / 255.0 if scale is None else scale
    x = np.stack(pixels).astype(np.float32) * np.float32(s) + np.float32(offset)
    pre = {
        "kind": "image",
        "height": image_hw[0],
        "width": image_hw[1],
        "channels": channels,
        "scale": s,
        "offset": offset,
    }
    return Samples(x, y, pre, h.hexdigest())


def _folder_labels(path: Path, labels: tuple[str, ...] | None) -> tuple[list[Path], np.ndarray]:
    csv_path = path / "labels.csv"
    if not csv_path.is_file():
        raise BadInput(path, "a validation image folder needs labels.csv (filename,label rows)")
    names = {lab: i for i, lab in enumerate(labels or ())}
    files, ys = [], []
    with csv_path.open(newline="", encoding="utf-8") as fh:
        for n, row in enumerate(csv.reader(fh), start=1):
            if not row or row[0].strip().lower() == "filename":
                continue
            if len(row) < 2:
                raise BadInput(csv_path, f"line {n}: expected 'filename,label', got {row!r}")
            f = path / row[0].strip()
            if not f.is_file():
                raise BadInput(csv_path, f"line {n}: image {row[0]!r} not found")
            lab = row[1].strip()
            if lab.lstrip("-").isdigit():
                ys.append(int(lab))
            elif lab in names:
                ys.append(names[lab])
            else:
                raise BadInput(csv_path, f"line {n}: label {lab!r} is neither a class id nor in the labels file")
            files.append(f)
    return files, np.array(ys, dtype=np.int64)


def keras_input_spec(model: Path) -> tuple[tuple[int, int], int] | None:
    """((H, W), C) of a .keras file's single image input, read from its config.json (no TF)."""
    if model.is_dir() or model.suffix != ".keras":
        return None
    try:
        with zipfile.ZipFile(model) as z:
            cfg = json.loads(z.read("config.json"))
    except (zipfile.BadZipFile, KeyError, OSError, ValueError):
        return None
    shapes: list[list[Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("class_name") == "InputLayer":
                shp = (node.get("config") or {}).get("batch_shape") or (node.get("config") or {}).get(
                    "batch_input_shape"
                )
                if shp:
                    shapes.append(shp)
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(cfg)
    if not shapes or len(shapes[0]) != 4 or any(d is None for d in shapes[0][1:]):
        return None
    return (int(shapes[0][1]), int(shapes[0][2])), int(shapes[0][3])


def sha256_path(path: Path) -> str:
    """SHA-256 of a file, or of a directory's files (relative names + bytes, sorted)."""
    h = hashlib.sha256()
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.is_file():
                h.update(p.relative_to(path).as_posix().encode() + b"\0")
                h.update(p.read_bytes())
    else:
        h.update(path.read_bytes())
    return h.hexdigest()
