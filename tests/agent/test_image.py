"""agent.image: the simplejpeg fast path gives Pillow's pixels, and everything else is Pillow's."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agent import image
from agent.errors import ImageTooLarge

pytest.importorskip("simplejpeg")


def _jpeg(img: Image.Image, **save: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **save)
    return buf.getvalue()


def _pillow_only(
    data: bytes, h: int, w: int, c: int, monkeypatch: pytest.MonkeyPatch, resample: str = "bicubic"
) -> np.ndarray:
    with monkeypatch.context() as m:
        m.setattr(image, "simplejpeg", None)
        return image.decode(data, h, w, c, resample)


@pytest.fixture
def cat224(coral_models: Path) -> Image.Image:
    return Image.open(coral_models / "cat_720p.jpg").convert("RGB").resize((224, 224), Image.Resampling.BILINEAR)


@pytest.mark.parametrize(
    "save",
    [{"quality": 90}, {"quality": 95, "subsampling": 0}, {"quality": 80, "progressive": True}],
    ids=["420", "444", "progressive"],
)
def test_jpeg_at_input_size_decodes_to_pillows_pixels(
    cat224: Image.Image, save: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _jpeg(cat224, **save)
    calls: list[bytes] = []
    real = image.simplejpeg.decode_jpeg
    monkeypatch.setattr(image.simplejpeg, "decode_jpeg", lambda d, **kw: calls.append(d) or real(d, **kw))
    fast = image.decode(data, 224, 224, 3, "bicubic")
    assert calls, "the fast path was not taken"
    slow = _pillow_only(data, 224, 224, 3, monkeypatch)
    assert fast.shape == (1, 224, 224, 3) and fast.dtype == np.uint8
    assert np.array_equal(fast, slow)


def test_grayscale_jpeg_to_rgb_and_to_gray_models_match_pillow(
    cat224: Image.Image, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _jpeg(cat224.convert("L"))
    for channels in (3, 1):
        fast = image.decode(data, 224, 224, channels, "bicubic")
        assert np.array_equal(fast, _pillow_only(data, 224, 224, channels, monkeypatch))


def test_cmyk_jpegs_and_pngs_go_through_pillow(cat224: Image.Image, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(image.simplejpeg, "decode_jpeg", lambda *a, **k: pytest.fail("fast path taken"))
    cmyk = _jpeg(cat224.convert("CMYK"))
    buf = io.BytesIO()
    cat224.save(buf, "PNG")
    for data in (cmyk, buf.getvalue()):
        assert image.decode(data, 224, 224, 3, "bicubic").shape == (1, 224, 224, 3)


def _larger_jpegs(coral_models: Path) -> list[tuple[str, bytes]]:
    cat = Image.open(coral_models / "cat_720p.jpg").convert("RGB")
    out = [("cat_720p", (coral_models / "cat_720p.jpg").read_bytes()), ("owl", (coral_models / "owl.jpg").read_bytes())]
    for i, (w, h) in enumerate([(1001, 667), (640, 480), (333, 250), (1920, 1080), (230, 229), (150, 100)]):
        img = cat.resize((w, h))
        img = img.convert("L") if i % 3 == 2 else img
        out.append((f"{w}x{h}-{i}", _jpeg(img, quality=85, subsampling=i % 3, progressive=bool(i % 2))))
    return out


@pytest.mark.parametrize("resample", ["bicubic", "bilinear", "nearest"])
def test_a_jpeg_that_needs_resizing_decodes_drafted_by_simplejpeg_to_pillows_pixels(
    coral_models: Path, resample: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scaled decode (Pillow's draft factor, libjpeg-turbo's reduced IDCT) and Pillow's
    resize of it give exactly what Pillow's own open + draft + resize gives, for baseline and
    progressive, 4:4:4/4:2:2/4:2:0 and grayscale JPEGs, down- and upscaled, RGB and gray models."""
    calls: list[dict[str, object]] = []
    real = image.simplejpeg.decode_jpeg
    monkeypatch.setattr(image.simplejpeg, "decode_jpeg", lambda d, **kw: calls.append(kw) or real(d, **kw))
    for name, data in _larger_jpegs(coral_models):
        for h, w, c in [(224, 224, 3), (96, 128, 3), (300, 300, 3), (28, 28, 1), (513, 513, 3)]:
            if c == 1 and image.simplejpeg.decode_jpeg_header(data)[2] != "Gray":
                continue  # a colour JPEG for a gray model: Pillow's own conversion (not this path)
            calls.clear()
            fast = image.decode(data, h, w, c, resample)
            assert calls and calls[0].get("min_height"), f"{name} -> {w}x{h}: the fast path was not taken"
            slow = _pillow_only(data, h, w, c, monkeypatch, resample)
            assert fast.shape == slow.shape == (1, h, w, c)
            assert np.array_equal(fast, slow), f"{name} -> {w}x{h}x{c} {resample}"


def test_the_720p_path_loads_neither_pillows_jpeg_decoder_nor_its_plugins_nor_pil_image(coral_models: Path) -> None:
    """What keeps ~1 MB of Pillow out of the agent after a camera frame, and ~0.7 MB more by
    resizing through Pillow's C core without ``PIL.Image`` (docs/agent.md Footprint)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from agent import image\n"
        f"data = open({str(coral_models / 'cat_720p.jpg')!r}, 'rb').read()\n"
        "assert image.decode(data, 224, 224, 3, 'bicubic').shape == (1, 224, 224, 3)\n"
        "print(sorted(m for m in sys.modules if m.endswith('ImagePlugin') or m == 'PIL.Image'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_pillow_whose_core_takes_other_arguments_resizes_through_pil_image_to_the_same_pixels(
    coral_models: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    data = (coral_models / "cat_720p.jpg").read_bytes()
    core = image.decode(data, 224, 224, 3, "bicubic")

    def changed_core(*args: object) -> np.ndarray:
        raise TypeError("function takes exactly 2 arguments (1 given)")

    monkeypatch.setattr(image, "_core_resize", changed_core)
    monkeypatch.setattr(image, "_core_failed", False)
    assert np.array_equal(image.decode(data, 224, 224, 3, "bicubic"), core)
    assert image._core_failed and "resizing through PIL.Image" in caplog.text


def test_a_huge_jpeg_is_refused_by_name_not_decoded_by_simplejpeg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(image, "MAX_PIXELS", 100 * 100)
    monkeypatch.setattr(image.simplejpeg, "decode_jpeg", lambda *a, **k: pytest.fail("decoded"))
    data = _jpeg(Image.new("RGB", (200, 100)))
    with pytest.raises(ImageTooLarge, match="declares 200x100 = 20000 pixels"):
        image.decode(data, 32, 32, 3, "bilinear")


def test_a_truncated_jpeg_is_named_as_unreadable(cat224: Image.Image) -> None:
    data = _jpeg(cat224)
    with pytest.raises(ValueError, match="not a readable image"):
        image.decode(data[: len(data) // 3], 224, 224, 3, "bicubic")
    with pytest.raises(ValueError, match="not a readable image"):
        image.decode(b"\xff\xd8 not really a jpeg", 224, 224, 3, "bicubic")


def test_an_image_declaring_more_than_max_pixels_is_refused_before_decoding() -> None:
    """A 48 MP PNG header over a few bytes of data: refused from the header with its size
    (Pillow's own limit, 89 MP, would let it decode 144 MB of RGB)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 8000, 6000, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )
    with pytest.raises(ImageTooLarge, match="declares 8000x6000 = 48000000 pixels; at most 40000000"):
        image.decode(png, 224, 224, 3, "bilinear")


# files a seeded mutation fuzzer found against edgefleet-cloud (zlib + base64, tests/cloud):
# Pillow's DDS, SPIDER and TIFF decoders raised NotImplementedError, AttributeError, TypeError
DECODER_CRASHERS = {
    "dds-notimplementederror": (
        "eNrtzrEJACAMRNHrLM0IGcYNXMfCzRURG+3EwuKHPLgQAkkpe5EUTXJNVXflR26r52D7xdgEAAAAAADwUv3vpw4X3iQi"
    ),
    "spider-attributeerror": (
        "eNrty4EJwCAMBdEPDmZbHcU9mlEdpVYFgxOUcgdPjBjJoqRravV5FLT3/jndfK+ruWfL7UjbbhERfax6AAAAAACAf3sAKF2FLw=="
    ),
    "tiff-typeerror": (
        "eNrz9NRi4GBgYOBkYGBkYWAEshSAmBGJzcTIDGaDVDFD2SDMhsQWZGQF01VALIakVxzKZmBhYJCBqW9gAAN2fKABg4EM/"
        "kPpevZRMApGwZAEABaoITI="
    ),
}


@pytest.mark.parametrize("name", sorted(DECODER_CRASHERS))
def test_a_file_that_crashes_a_pillow_decoder_is_named_as_unreadable(name: str) -> None:
    """Whatever a decoder raises on the client's bytes is a bad image (422), never a 500."""
    import base64
    import zlib

    data = zlib.decompress(base64.b64decode(DECODER_CRASHERS[name]))
    with pytest.raises(ValueError, match="not a readable image"):
        image.decode(data, 224, 224, 3, "bilinear")
