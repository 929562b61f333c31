"""Tiny HTTP client for the demo: image uploads to an agent's local API or the cloud fallback,
and the agent's status."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
import uuid
from typing import Any

import numpy as np
from PIL import Image


def png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def post_image(
    url: str, image: bytes, filename: str = "digit.png", timeout: float = 10, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + image
        + f"\r\n--{boundary}--\r\n".encode()
    )
    req = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            doc: dict[str, Any] = json.loads(resp.read())
            return doc
    except urllib.error.HTTPError as exc:
        return {"error": f"HTTP {exc.code}: {exc.read()[:300].decode(errors='replace')}"}
    except OSError as exc:
        return {"error": str(exc)}


def get_json(url: str, timeout: float = 10) -> dict[str, Any]:
    """A JSON object from ``url``, or ``{"error": ...}`` saying why there is none."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            doc = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return {"error": f"HTTP {exc.code}: {exc.read()[:300].decode(errors='replace')}"}
    except (OSError, ValueError) as exc:
        return {"error": str(exc)}
    return doc if isinstance(doc, dict) else {"error": f"expected a JSON object, got {doc!r:.60}"}


def top1(answer: dict[str, Any]) -> int | None:
    top = answer.get("top")
    if top:
        return int(top[0]["index"])
    preds = answer.get("predictions")
    if preds:  # [N, K], one row per input; an older agent answered the one row flat
        row = np.atleast_2d(np.asarray(preds, dtype=float))[0]
        return int(row.argmax())
    return None
