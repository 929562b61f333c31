"""Image bytes -> a uint8 pixel array at the model's input size.

Two decoders, one result:

* **simplejpeg** (libjpeg-turbo, numpy out, no Python-level marker parsing) for a baseline or
  progressive JPEG in YCbCr or grayscale. It decodes with the same accurate DCT and fancy
  upsampling as Pillow, so the pixels are Pillow's (tests compare them); measured on
  MobileNetV2-224 uploads it takes about half of Pillow's open + load + ``np.asarray`` time
  (agent/README.md). A JPEG *at the input size* (what a camera app sends) needs nothing else. A
  larger one (a 720p frame) is decoded reduced in the DCT domain by the same 1/2..1/8 that
  Pillow's ``draft`` picks (:func:`draft_scale`; libjpeg-turbo's scaled IDCT gives Pillow's drafted
  pixels, tests compare them), then only the resize is Pillow's, called in its C core
  (:func:`_core_resize`), so neither Pillow's JPEG decoder and format plugins (~1 MB) nor
  ``PIL.Image`` (~0.7 MB) are loaded by a camera frame (issue 16 part 7, docs/agent.md
  "Footprint"). Optional: it has no 32-bit ARM wheel, and without it everything goes through
  Pillow.
* **Pillow** for everything else (JPEG, PNG, BMP, GIF, WebP or TIFF): CMYK JPEGs, PNGs, and any
  JPEG when simplejpeg is missing (reduced with ``draft`` the same way, then resized with the
  spec's filter).

A bad image raises :class:`ValueError` naming the problem; the caller turns it into its own
error type. An image whose header declares more than ``MAX_PIXELS`` pixels raises
:class:`ImageTooLarge` before any pixel is decoded: a few kilobytes of PNG or JPEG can declare
30000x30000 (2.7 GB of RGB), a decompression bomb for a device with 1-4 GB of memory.
"""

from __future__ import annotations

import io
import logging
import re
from typing import Any

import numpy as np

try:
    import simplejpeg
except ImportError:  # 32-bit ARM, or installed without it: Pillow decodes everything
    simplejpeg = None

from .errors import ImageTooLarge

log = logging.getLogger(__name__)

_SOI = b"\xff\xd8"
MAX_PIXELS = 40_000_000  # an 8K camera frame (7680x4320, 33 MP) fits; ~120 MB decoded as RGB
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF")  # what Pillow may try (as the cloud)


_FAST_COLORSPACES = {3: ("YCbCr", "Gray"), 1: ("Gray",)}


def decode(data: bytes, height: int, width: int, channels: int, resample: str) -> np.ndarray:
    """``data`` -> uint8 array (1, height, width, channels). ``resample``: a Pillow filter name."""
    fast = _fast_jpeg(data, height, width, channels, resample)
    if fast is not None:
        return fast
    return _pillow(data, height, width, channels, resample)


def draft_scale(w: int, h: int, width: int, height: int) -> int:
    """The DCT-domain reduction (1, 2, 4 or 8) Pillow's ``JpegImageFile.draft`` picks for a
    ``w`` x ``h`` JPEG wanted at ``width`` x ``height``: the largest that keeps both sides at or
    above the target."""
    scale = min(w // width, h // height)
    return next((s for s in (8, 4, 2, 1) if scale >= s), 1)


def _fast_jpeg(data: bytes, height: int, width: int, channels: int, resample: str) -> np.ndarray | None:
    """The simplejpeg path, or None when it does not apply (Pillow then decides, and names the
    problem if the bytes are not a usable image)."""
    if simplejpeg is None or not data.startswith(_SOI):
        return None
    colorspace = "RGB" if channels == 3 else "GRAY"
    try:
        h, w, jpeg_colorspace, _ = simplejpeg.decode_jpeg_header(data)
        if jpeg_colorspace not in _FAST_COLORSPACES.get(channels, ()) or h * w > MAX_PIXELS:
            return None  # CMYK and the like, or too large: Pillow converts, or refuses by name
        if (h, w) == (height, width):
            px: np.ndarray = simplejpeg.decode_jpeg(data, colorspace=colorspace)
            return px.reshape(1, height, width, channels)
        s = draft_scale(w, h, width, height)
        dh, dw = -(-h // s), -(-w // s)  # what libjpeg (and Pillow's draft) make of 1/s
        px = simplejpeg.decode_jpeg(data, colorspace=colorspace, min_height=dh, min_width=dw)
    except ValueError:  # truncated or odd: let Pillow decide (and word the error)
        return None
    if px.shape[:2] != (dh, dw):  # simplejpeg chose another factor: Pillow's pixels would differ
        return None
    return _resize(px, height, width, channels, resample)


_FILTERS = {"nearest": 0, "bilinear": 2, "bicubic": 3}  # PIL.Image.Resampling's values
_core_failed = False


def _resize(px: np.ndarray, height: int, width: int, channels: int, resample: str) -> np.ndarray:
    """Pillow's resize of decoded pixels, without Pillow's decoders or plugins: through its C core
    (:func:`_core_resize`), or, should a Pillow's private core take other arguments, through
    ``PIL.Image`` (same pixels, ~0.7 MB more resident once imported)."""
    global _core_failed
    if not _core_failed:
        try:
            return _core_resize(px, height, width, channels, resample)
        except (AttributeError, TypeError) as exc:
            _core_failed = True
            log.warning("Pillow's C core resize is not usable (%s); resizing through PIL.Image", exc)
    from PIL import Image

    img = Image.fromarray(px.reshape(px.shape[0], px.shape[1]) if channels == 1 else px)
    img = img.resize((width, height), getattr(Image.Resampling, resample.upper()))
    return np.asarray(img, dtype=np.uint8).reshape(1, height, width, channels)


def _core_resize(px: np.ndarray, height: int, width: int, channels: int, resample: str) -> np.ndarray:
    """The calls ``Image.fromarray``, ``Image.resize`` and ``np.asarray(image)`` make into
    ``PIL._imaging``, made directly: importing ``PIL.Image`` (and ``ImageFile``, which
    ``tobytes`` imports) costs ~0.7 MB of Python objects the agent keeps for good (measured with
    the 720p traffic of ``python -m bench agent``; docs/agent.md "Footprint"). Same pixels: tests
    compare them with Pillow's own resize."""
    from PIL import _imaging as core

    mode = "L" if channels == 1 else "RGB"
    h, w = int(px.shape[0]), int(px.shape[1])
    im = core.new(mode, (w, h))
    dec = core.raw_decoder(mode, mode, 0, 1)  # frombytes' "raw" decoder: rawmode, stride, ystep
    dec.setimage(im, (0, 0, w, h))
    dec.decode(np.ascontiguousarray(px))
    out = im.resize((width, height), _FILTERS[resample.lower()], (0.0, 0.0, float(w), float(h)))
    enc = core.raw_encoder(mode, mode)
    enc.setimage(out, (0, 0, width, height))
    chunks = []
    try:
        while True:
            _, status, chunk = enc.encode(max(65536, width * 4))  # tobytes' buffer size
            chunks.append(chunk)
            if status:
                break
    finally:
        enc.cleanup()
    if status < 0:
        raise ValueError(f"resize to {width}x{height} failed (Pillow's raw encoder returned {status})")
    return np.frombuffer(b"".join(chunks), np.uint8).reshape(1, height, width, channels)


def _pillow(data: bytes, height: int, width: int, channels: int, resample: str) -> np.ndarray:
    """Only ``IMAGE_FORMATS`` are tried (Pillow's rarer plugins are attack surface no camera
    needs), and whatever a decoder raises on the client's bytes is the file's fault: a
    :class:`ValueError` naming it, as edgefleet-cloud does (fuzzed DDS, SPIDER and TIFF files
    made Pillow raise NotImplementedError, AttributeError, TypeError there)."""
    from PIL import Image, UnidentifiedImageError

    mode = "L" if channels == 1 else "RGB"
    try:
        src: Any = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)  # reads the header only
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own check refuses at open, past its MAX_IMAGE_PIXELS (89 MP: a warning, an
        # error under -W error) or twice that (an error): beyond ours either way
        raise ImageTooLarge(f"image declares {_bomb_pixels(exc)} pixels; at most {MAX_PIXELS} are decoded") from None
    except UnidentifiedImageError:
        raise ValueError(f"file is not a readable image (expected {', '.join(IMAGE_FORMATS)})") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure on client bytes is a bad image
        raise ValueError(f"file is not a readable image ({type(exc).__name__}: {exc})") from None
    w, h = src.size
    if w * h > MAX_PIXELS:
        raise ImageTooLarge(f"image declares {w}x{h} = {w * h} pixels; at most {MAX_PIXELS} are decoded")
    try:
        if src.format == "JPEG":
            src.draft(mode, (width, height))  # let the JPEG decoder downscale by 1/2..1/8 first
        img = src if src.mode == mode else src.convert(mode)
        if img.size != (width, height):
            img = img.resize((width, height), getattr(Image.Resampling, resample.upper()))
        return np.asarray(img, dtype=np.uint8).reshape(1, height, width, channels)
    except MemoryError:
        raise ImageTooLarge(f"image of {w}x{h} pixels needs more memory to decode than this device has") from None
    except Exception as exc:  # noqa: BLE001 - as above
        raise ValueError(f"file is not a readable image ({type(exc).__name__}: {exc})") from None


def _bomb_pixels(exc: Exception) -> int:
    """The pixel count in Pillow's bomb message; the least it can be if the wording changes."""
    m = re.search(r"\((\d+) pixels\)", str(exc))
    from PIL import Image

    return int(m.group(1)) if m else (Image.MAX_IMAGE_PIXELS or MAX_PIXELS) + 1


def size_of(data: bytes) -> tuple[int, int]:
    """(width, height) of an image from its header (what the answer's pixel coordinates are in:
    the decoders stretch the whole image to the model's input). ValueError if it is not one."""
    if simplejpeg is not None and data.startswith(_SOI):
        try:
            h, w, _, _ = simplejpeg.decode_jpeg_header(data)
            return int(w), int(h)
        except ValueError:
            pass
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as img:
            w, h = img.size
    except Exception as exc:  # noqa: BLE001 - decode() has already named what is wrong with the bytes
        raise ValueError(f"file is not a readable image ({type(exc).__name__}: {exc})") from None
    return int(w), int(h)
