"""cloud.tensors.image_tensor: simplejpeg and Pillow give the same tensors; bad images are named."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cloud import tensors
from cloud.errors import BadInput, TooLarge
from cloud.spec import ImageSpec

from .conftest import DECODER_CRASHERS, decoder_crasher, png_declaring

simplejpeg = pytest.importorskip("simplejpeg")
CAT = Path(__file__).resolve().parents[2].parent / "shared" / "models" / "coral" / "cat_720p.jpg"
SPECS = {
    "rgb224-nchw": ImageSpec(224, 224, 3, 1 / 255, 0.0, "nchw"),
    "rgb224-nhwc-bilinear": ImageSpec(224, 224, 3, 1 / 128, -1.0, "nhwc", resize="bilinear"),
    "gray8-nhwc": ImageSpec(8, 8, 1, 1 / 255, 0.0, "nhwc"),
    "gray224-uint8": ImageSpec(224, 224, 1, 1.0, 0.0, "nhwc"),
}


def _cat() -> Image.Image:
    if CAT.exists():
        return Image.open(CAT).convert("RGB")
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (360, 640, 3), dtype=np.uint8))


def _jpeg(img: Image.Image, **save: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **save)
    return buf.getvalue()


def _uploads() -> dict[str, bytes]:
    big = _cat()
    small = big.resize((224, 224), Image.Resampling.BILINEAR)
    return {
        "720p-420": _jpeg(big, quality=90),
        "224-420": _jpeg(small, quality=90),
        "224-444-progressive": _jpeg(small, quality=95, subsampling=0, progressive=True),
        "224-gray": _jpeg(small.convert("L")),
    }


@pytest.mark.parametrize("spec", list(SPECS.values()), ids=list(SPECS))
@pytest.mark.parametrize("dtype", ["float32", "uint8"])
def test_simplejpeg_and_pillow_make_the_same_tensor(
    spec: ImageSpec, dtype: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    used: list[int] = []
    real = simplejpeg.decode_jpeg
    monkeypatch.setattr(simplejpeg, "decode_jpeg", lambda d, **kw: used.append(1) or real(d, **kw))
    for name, data in _uploads().items():
        fast = tensors.image_tensor(data, spec, dtype, 16_000_000)
        with monkeypatch.context() as m:
            m.setattr(tensors, "simplejpeg", None)
            slow = tensors.image_tensor(data, spec, dtype, 16_000_000)
        assert fast.shape == slow.shape == (1, *spec.sample_shape), name
        assert fast.dtype == slow.dtype and np.array_equal(fast, slow), name
    assert len(used) == len(_uploads())


def test_cmyk_and_png_go_through_pillow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(simplejpeg, "decode_jpeg", lambda *a, **k: pytest.fail("fast path taken"))
    img = _cat().resize((224, 224))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    for data in (_jpeg(img.convert("CMYK")), buf.getvalue()):
        assert tensors.image_tensor(data, SPECS["rgb224-nchw"], "float32", 16_000_000).shape == (1, 3, 224, 224)


def test_an_oversized_jpeg_is_refused_from_its_header_and_a_broken_one_is_named() -> None:
    data = _uploads()["720p-420"]
    with pytest.raises(TooLarge, match="image"):
        tensors.image_tensor(data, SPECS["rgb224-nchw"], "float32", 1000)
    with pytest.raises(BadInput, match="cannot be decoded|not an image"):
        tensors.image_tensor(data[: len(data) // 4], SPECS["rgb224-nchw"], "float32", 16_000_000)
    with pytest.raises(BadInput, match="not an image"):
        tensors.image_tensor(b"\xff\xd8 but no jpeg", SPECS["rgb224-nchw"], "float32", 16_000_000)


def _gif_declaring(w: int, h: int) -> bytes:
    return (
        b"GIF89a" + struct.pack("<HH", w, h) + b"\0\0\0,\0\0\0\0" + struct.pack("<HH", w, h) + b"\0\x02\x02\x44\x01\0;"
    )


def _bmp_declaring(w: int, h: int) -> bytes:
    return b"BM" + struct.pack("<IHHI", 54, 0, 0, 54) + struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, 0, 0, 0, 0, 0)


def _tiff_declaring(w: int, h: int) -> bytes:
    tags = [(256, 4, w), (257, 4, h), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 8), (278, 4, h), (279, 4, 1)]
    ifd = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", t, k, 1, v) for t, k, v in tags)
    return b"II*\0" + struct.pack("<I", 8) + ifd + b"\0\0\0\0"


def _jpeg_declaring(w: int, h: int, mode: str) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (8, 8)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, h, w)
    return bytes(data)


def _webp_declaring(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buf, "WEBP", lossless=True)
    data = bytearray(buf.getvalue())
    vp8l = data.find(b"VP8L") + 8  # signature byte, then 14 bits width-1, 14 bits height-1
    bits = int.from_bytes(data[vp8l + 1 : vp8l + 5], "little")
    bits = (bits & ~0xFFFFFFF) | (w - 1) | ((h - 1) << 14)
    data[vp8l + 1 : vp8l + 5] = bits.to_bytes(4, "little")
    return bytes(data)


BOMBS = {
    "png-30000x30000": png_declaring(30000, 30000),
    "png-5000x4000": png_declaring(5000, 4000),  # under Pillow's own limit, over ours
    "gif-30000x30000": _gif_declaring(30000, 30000),
    "bmp-30000x30000": _bmp_declaring(30000, 30000),
    "bmp-top-down-30000x30000": _bmp_declaring(30000, -30000),
    "tiff-30000x30000": _tiff_declaring(30000, 30000),
    "jpeg-ycbcr-30000x30000": _jpeg_declaring(30000, 30000, "RGB"),
    "jpeg-gray-30000x30000": _jpeg_declaring(30000, 30000, "L"),
    "jpeg-cmyk-30000x30000": _jpeg_declaring(30000, 30000, "CMYK"),
    "webp-16383x16383": _webp_declaring(16383, 16383),
}


@pytest.mark.parametrize("name", list(BOMBS))
def test_an_image_bomb_declaring_30000x30000_is_refused_as_too_large_before_decoding(name: str) -> None:
    with pytest.raises(TooLarge, match=r"bad image: \d+ exceeds the limit of 16000000"):
        tensors.image_tensor(BOMBS[name], SPECS["rgb224-nchw"], "float32", 16_000_000)


@pytest.mark.parametrize("name", list(DECODER_CRASHERS))
def test_a_file_that_crashes_a_pillow_decoder_is_a_bad_image_not_a_server_error(name: str) -> None:
    data = decoder_crasher(name)
    with pytest.raises(BadInput, match="not an image|cannot be decoded"):
        tensors.image_tensor(data, SPECS["gray8-nhwc"], "float32", 16_000_000)


def test_rare_pillow_formats_are_not_opened_and_the_common_ones_are() -> None:
    for fmt, mode in (("DDS", "RGBA"), ("SPIDER", "F"), ("ICO", "RGBA"), ("PCX", "RGB"), ("SGI", "RGB")):
        buf = io.BytesIO()
        Image.new(mode, (16, 16)).save(buf, format=fmt)
        with pytest.raises(BadInput, match="not an image in a format served here"):
            tensors.image_tensor(buf.getvalue(), SPECS["gray8-nhwc"], "float32", 16_000_000)
    for fmt in tensors.IMAGE_FORMATS:
        buf = io.BytesIO()
        Image.new("RGB", (16, 16), (9, 99, 199)).save(buf, format=fmt)
        assert tensors.image_tensor(buf.getvalue(), SPECS["gray8-nhwc"], "float32", 16_000_000).shape == (1, 8, 8, 1)
