"""cloud.tensors.image_tensor: simplejpeg and Pillow give the same tensors; bad images are named."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cloud import tensors
from cloud.errors import BadInput, TooLarge
from cloud.spec import ImageSpec

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
    return {"720p-420": _jpeg(big, quality=90), "224-420": _jpeg(small, quality=90),
            "224-444-progressive": _jpeg(small, quality=95, subsampling=0, progressive=True),
            "224-gray": _jpeg(small.convert("L"))}


@pytest.mark.parametrize("spec", list(SPECS.values()), ids=list(SPECS))
@pytest.mark.parametrize("dtype", ["float32", "uint8"])
def test_simplejpeg_and_pillow_make_the_same_tensor(spec: ImageSpec, dtype: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
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
