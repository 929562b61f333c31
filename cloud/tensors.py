"""Request bodies -> input tensors, validated against the model's :class:`InputSpec`.

Three ways in, every failure a :class:`BadInput` naming the part of the request that is wrong:

* an image (``POST /predict`` multipart ``file``; JPEG, PNG, BMP, GIF, WebP or TIFF, at most
  ``max_pixels`` by its header): decoded with Pillow (YCbCr and grayscale JPEGs with simplejpeg
  when installed: the same pixels, in about half the time), converted to L or RGB, resized to the
  spec's size (the spec's ``resize`` filter, default bicubic = Pillow's default, as the seed does),
  ``pixel * scale + offset``, laid out NHWC or NCHW, one row; integer inputs get the quantized value (or, uint8
  without ``input_quantization``, the raw pixels);
* JSON ``{"inputs": [...]}``: a nested list *including the batch dimension*; strict JSON
  (:func:`parse_json`: finite numbers only, bounded nesting);
* raw bytes: C-order, little-endian; ``X-Tensor-Shape: 2,8,8,1`` (required) and
  ``X-Tensor-Dtype: float32`` (optional, defaults to the model's dtype; must equal it).
"""

from __future__ import annotations

import io
import math
import re
from typing import Any

import numpy as np
import orjson
from PIL import Image, UnidentifiedImageError

try:
    import simplejpeg
except ImportError:  # optional: without it Pillow decodes every image
    simplejpeg = None

from .errors import BadInput, TooLarge
from .spec import ImageSpec, InputSpec

RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}
# what Image.open may try; everything else is "not an image" (see _pixels)
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF")
DTYPE_NAMES = ("float32", "float16", "float64", "uint8", "int8", "int32", "int64")


def _jpeg_pixels(data: bytes, max_pixels: int) -> np.ndarray | None:
    """A YCbCr or grayscale JPEG decoded by simplejpeg (libjpeg-turbo, the same accurate DCT and
    fancy upsampling as Pillow, so the same pixels; tests compare them) to RGB or gray as
    stored, or None when Pillow should decide (not a JPEG, CMYK, damaged, simplejpeg missing)."""
    if simplejpeg is None or not data.startswith(b"\xff\xd8"):
        return None
    try:
        h, w, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    if colorspace not in ("YCbCr", "Gray"):
        return None
    if w * h > max_pixels:
        raise TooLarge("image", w * h, max_pixels)  # checked from the header: nothing decoded yet
    try:
        # YCbCr -> RGB first, then Pillow's own RGB -> L (what Pillow does with such a JPEG)
        px: np.ndarray = simplejpeg.decode_jpeg(data, colorspace="GRAY" if colorspace == "Gray" else "RGB")
        return px
    except ValueError:
        return None


def _bomb_pixels(exc: Exception) -> int:
    """The pixel count in Pillow's DecompressionBombError message (it refuses at open, before
    our own check sees the size); the least it can be when the message changes."""
    m = re.search(r"\((\d+) pixels\)", str(exc))
    return int(m.group(1)) if m else 2 * (Image.MAX_IMAGE_PIXELS or 0) + 1


def _pixels(data: bytes, spec: ImageSpec, max_pixels: int) -> np.ndarray:
    """Image bytes -> uint8 pixels (H, W) for L or (H, W, 3) for RGB, at the spec's size.

    Only ``IMAGE_FORMATS`` are tried: Pillow's rarer plugins (DDS, SPIDER, EPS, ...) are attack
    surface no camera needs. Whatever a decoder raises on a hostile file is the file's fault:
    a 400 naming it (DDS, SPIDER and TIFF files mangled by a fuzzer raised NotImplementedError,
    AttributeError and TypeError, which were 500s)."""
    mode = "L" if spec.channels == 1 else "RGB"
    try:
        fast = _jpeg_pixels(data, max_pixels)
        if fast is not None:
            if fast.shape == (spec.height, spec.width, spec.channels):
                return fast[:, :, 0] if mode == "L" else fast
            img = Image.fromarray(fast[:, :, 0] if fast.shape[2] == 1 else fast)
        else:
            img = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
            w, h = img.size
            if w * h > max_pixels:
                raise TooLarge("image", w * h, max_pixels)  # checked from the header: nothing decoded yet
        img = img.convert(mode).resize((spec.width, spec.height), RESAMPLE[spec.resize])
    except BadInput:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # the warning
        # is an exception only where warnings are errors (tests); then it is the same refusal
        raise TooLarge("image", _bomb_pixels(exc), max_pixels) from None
    except UnidentifiedImageError:
        raise BadInput(
            "file", f"is not an image in a format served here (expected {', '.join(IMAGE_FORMATS)})"
        ) from None
    except MemoryError:
        raise BadInput("image", "needs more memory to decode than this server has") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure on client bytes is a bad image
        raise BadInput("image", f"cannot be decoded ({type(exc).__name__}: {exc})") from None
    return np.asarray(img)


def image_tensor(data: bytes, spec: ImageSpec, dtype: str, max_pixels: int) -> np.ndarray:
    if not data:
        raise BadInput("file", "is empty")
    pixels = _pixels(data, spec, max_pixels)
    if spec.channels == 1:
        pixels = pixels[:, :, None]
    if spec.layout == "nchw":
        pixels = pixels.transpose(2, 0, 1)
    if dtype == "uint8" and spec.quant is None:  # raw pixels (e.g. Coral's uint8 classifiers)
        return np.ascontiguousarray(pixels[None])
    if spec.quant is not None:  # q = round((pixel * scale + offset) / qs) + zp
        qs, zp = spec.quant
        info = np.iinfo(np.dtype(dtype))
        f = pixels.astype(np.float32) * np.float32(spec.scale) + np.float32(spec.offset)
        q = np.clip(np.rint(f / np.float32(qs)) + zp, info.min, info.max)
        return np.ascontiguousarray(q[None], dtype=dtype)
    # one pass: uint8 -> float32, scaled, in the target layout, contiguous
    out = np.empty((1, *pixels.shape), dtype=np.float32)
    np.multiply(pixels, np.float32(spec.scale), out=out[0], dtype=np.float32)
    if spec.offset:
        out += np.float32(spec.offset)
    return out if dtype == "float32" else out.astype(dtype)


def check_shape(x: np.ndarray, spec: InputSpec, max_rows: int, what: str) -> np.ndarray:
    want = len(spec.sample) + 1
    if x.ndim != want:
        raise BadInput(
            what,
            f"shape {list(x.shape)} has {x.ndim} dims, model input "
            f"{spec.name!r} is {spec.describe()} ({want} dims, batch first)",
        )
    rows = int(x.shape[0])
    if rows < 1:
        raise BadInput(what, "has no rows")
    if rows > max_rows:
        raise TooLarge(f"{what} rows", rows, max_rows)
    if spec.batch not in (None, 1) and rows != spec.batch:
        raise BadInput(what, f"model has a fixed batch of {spec.batch}, got {rows} rows")
    for i, (got, fixed) in enumerate(zip(x.shape[1:], spec.sample, strict=True), 1):
        if fixed is not None and got != fixed:
            raise BadInput(what, f"shape {list(x.shape)} does not fit {spec.describe()} (dim {i})")
        if got == 0:
            raise BadInput(what, f"shape {list(x.shape)} has an empty dim {i}")
    return x


MAX_JSON_DEPTH = 1024  # orjson's nesting limit; a tensor needs at most numpy's 64 dims
_TOKEN = re.compile(r"[-+]?[A-Za-z0-9_.+-]{1,40}")


def _json_problem(exc: orjson.JSONDecodeError) -> str:
    """orjson's complaint as the one thing a client must change: the non-finite number it
    sent (``NaN``, ``Infinity``, ``-Infinity``, ``1e999``), the nesting, or the syntax."""
    if "depth limit" in exc.msg:
        return f"nested deeper than {MAX_JSON_DEPTH} levels (at char {exc.pos})"
    start = exc.pos - 1 if exc.pos > 0 and exc.doc[exc.pos - 1 : exc.pos] in ("-", "+") else exc.pos
    m = _TOKEN.match(exc.doc, start)
    token = m.group(0) if m else ""
    if "infinity" in exc.msg or token.lstrip("+-") in ("NaN", "nan", "Infinity", "inf", "Inf"):
        return f"{token} at char {start} is not a finite number (JSON numbers must be finite)"
    return f"not valid JSON ({exc})"


def parse_json(body: bytes, what: str = "JSON body") -> Any:
    """Strict JSON: UTF-8, finite numbers only (no NaN/Infinity, no 1e999 that overflows to
    infinity), at most ``MAX_JSON_DEPTH`` levels of nesting. Parsed by orjson, which has no
    recursion to exhaust (the standard library's parser raised RecursionError on 100000
    nested lists)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadInput(what, _json_problem(exc)) from None


def _depth(value: Any) -> int:
    """Nesting depth of a list along its first elements (numpy judges the rest)."""
    depth = 0
    while isinstance(value, list):
        depth += 1
        if not value:
            break
        value = value[0]
    return depth


def tensor_from_json(body: bytes, spec: InputSpec, max_rows: int) -> np.ndarray:
    obj = parse_json(body)
    if not isinstance(obj, dict) or "inputs" not in obj:
        raise BadInput("JSON body", 'expected an object {"inputs": [...nested list, batch first...]}')
    inputs = obj["inputs"]
    if not isinstance(inputs, list):
        raise BadInput("inputs", f"expected a nested list, got {type(inputs).__name__}")
    want = len(spec.sample) + 1
    if (depth := _depth(inputs)) > want:
        raise BadInput(
            "inputs",
            f"lists nested {depth} deep, model input {spec.name!r} is {spec.describe()} ({want} dims, batch first)",
        )
    try:
        with np.errstate(over="raise", invalid="raise"):
            x = np.array(inputs, dtype=spec.dtype)
    except (ValueError, TypeError, OverflowError, FloatingPointError) as exc:
        raise BadInput("inputs", f"not a rectangular list of {spec.dtype} numbers ({exc})") from None
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise BadInput("inputs", f"values out of range for {spec.dtype}")
    return check_shape(x, spec, max_rows, "inputs")


def parse_shape(text: str | None) -> tuple[int, ...]:
    if not text:
        raise BadInput("X-Tensor-Shape header", "is required for a binary tensor body, e.g. '1,8,8,1'")
    try:
        dims = tuple(int(d) for d in text.replace("x", ",").split(",") if d.strip())
    except ValueError:
        raise BadInput("X-Tensor-Shape header", f"{text!r:.60} is not comma-separated integers") from None
    if not dims or any(d < 0 for d in dims):
        raise BadInput("X-Tensor-Shape header", f"{text!r:.60} must be non-negative integers")
    return dims


def tensor_from_bytes(
    body: bytes, shape_header: str | None, dtype_header: str | None, spec: InputSpec, max_rows: int
) -> np.ndarray:
    shape = parse_shape(shape_header)
    dtype = (dtype_header or spec.dtype).strip().lower()
    if dtype not in DTYPE_NAMES:
        raise BadInput("X-Tensor-Dtype header", f"{dtype!r:.40} is not one of {', '.join(DTYPE_NAMES)}")
    if dtype != spec.dtype:
        raise BadInput("X-Tensor-Dtype header", f"model input {spec.name!r} takes {spec.dtype}, got {dtype}")
    dt = np.dtype(dtype).newbyteorder("<")
    want = math.prod(shape) * dt.itemsize
    if len(body) != want:
        raise BadInput("tensor body", f"{len(body)} bytes, shape {list(shape)} of {dtype} needs {want}")
    x = np.frombuffer(body, dtype=dt).reshape(shape).astype(spec.dtype, copy=False)
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise BadInput("tensor body", "holds NaN or infinite values")
    return check_shape(x, spec, max_rows, "tensor body")


def tensor_to_bytes(x: np.ndarray) -> tuple[bytes, str, str]:
    """Raw little-endian bytes of ``x`` plus the shape and dtype header values."""
    le = np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("<"))
    return le.tobytes(), ",".join(str(d) for d in x.shape), x.dtype.name


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) of an image from its header: what an answer's pixel coordinates are in
    (the image is stretched whole to the model's input). BadInput if it is not an image."""
    if simplejpeg is not None and data.startswith(b"\xff\xd8"):
        try:
            h, w, _, _ = simplejpeg.decode_jpeg_header(data)
            return int(w), int(h)
        except ValueError:
            pass
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as img:
            w, h = img.size
    except Exception as exc:  # noqa: BLE001 - any decoder failure on client bytes is a bad image
        raise BadInput("image", f"cannot be decoded ({type(exc).__name__}: {exc})") from None
    return int(w), int(h)
