"""Requests to the local API: an HTTP body, its query string and headers parsed once into a
:class:`Request` (:func:`parse_request`), or InputError naming what is wrong.

Bodies: multipart field ``file`` = image, JSON ``{"inputs": nested floats}``, a raw image body
(Content-Type image/*) or a binary tensor (``application/octet-stream`` + ``X-Tensor-Shape``).
The query string carries the answer's parameters (:mod:`protocol.answers.params`), the
``X-Session-Id`` / ``X-Session-Reset`` headers a stateful model's session (:mod:`agent.sessions`).
"""

from __future__ import annotations

import dataclasses
import re
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from protocol import answers
from protocol.errors import BadParameter

from .errors import InputError, MalformedBody
from .sessions import check_id


@dataclass(frozen=True)
class Request:
    image: bytes | None = None
    inputs: Any = None  # JSON nested list of floats
    filename: str = "image"
    tensor: np.ndarray | None = None  # binary tensor (X-Tensor-Shape / X-Tensor-Dtype)
    query: dict[str, str] = field(default_factory=dict)  # the answer's parameters as sent (to the cloud too)
    params: answers.Params = answers.Params()
    session: str | None = None  # X-Session-Id
    reset: bool = False  # X-Session-Reset


def parse_request(
    content_type: str,
    body: bytes,
    shape: str | None = None,
    dtype: str | None = None,
    *,
    query: str = "",
    session: str | None = None,
    reset: str | None = None,
) -> Request:
    """Turn an HTTP request into a :class:`Request`; raise InputError naming the problem: the
    body (:func:`parse_body`), the query string's answer parameters (:mod:`protocol.answers.params`)
    and the ``X-Session-Id`` / ``X-Session-Reset`` headers (:mod:`agent.sessions`)."""
    req = parse_body(content_type, body, shape, dtype)
    if not query and session is None and reset is None:
        # the usual request: no query, no session; its Request's defaults are what parsing would
        # give (an empty query, default parameters), so skip the parse and the dataclass copy
        return req
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    fields = dict(reversed(pairs))  # the first value of a repeated parameter
    try:
        params = answers.parse_params(fields)
    except BadParameter as exc:
        raise InputError(str(exc)) from None
    if reset is not None and reset.strip().lower() not in ("true", "1", "false", "0"):
        raise InputError(f"X-Session-Reset {reset!r:.40} must be true or false")
    again = reset is not None and reset.strip().lower() in ("true", "1")
    sid = check_id(session) if session is not None else None
    return dataclasses.replace(req, query=fields, params=params, session=sid, reset=again)


def parse_body(content_type: str, body: bytes, shape: str | None = None, dtype: str | None = None) -> Request:
    """Turn an HTTP body into a :class:`Request`; raise InputError naming the problem.

    ``application/octet-stream`` with an ``X-Tensor-Shape`` header (and ``X-Tensor-Dtype``,
    default float32) is a binary tensor, the same convention as edgefleet-cloud's tensor API;
    without the header it is an image."""
    ctype = content_type.split(";")[0].strip().lower()
    if ctype == "application/json":
        doc = _strict_json(body)
        if not isinstance(doc, dict) or "inputs" not in doc:
            raise InputError("JSON body must be an object with an 'inputs' field")
        depth, inputs = 0, doc["inputs"]
        while isinstance(inputs, list) and inputs:  # a tensor's depth is its first element's
            depth, inputs = depth + 1, inputs[0]
            if depth > MAX_INPUT_DEPTH:
                raise MalformedBody(
                    f"'inputs' is nested deeper than {MAX_INPUT_DEPTH} levels; a tensor has one level per dimension"
                )
        return Request(inputs=doc["inputs"])
    if ctype == "multipart/form-data":
        return _multipart_file(content_type, body)
    if ctype == "application/octet-stream" and shape is not None:
        return Request(tensor=_binary_tensor(body, shape, dtype))
    if ctype.startswith("image/") or ctype == "application/octet-stream":
        if not body:
            raise InputError("empty image body")
        return Request(image=body)
    raise InputError(f"unsupported Content-Type {content_type!r}; send multipart/form-data (file) or application/json")


MAX_INPUT_DEPTH = 16  # list levels in 'inputs' (numpy allows 64 dimensions, models use 2-5)
_NON_FINITE = (b"-Infinity", b"Infinity", b"NaN")


def _strict_json(body: bytes) -> Any:
    """RFC 8259 JSON (orjson): NaN, Infinity, numbers beyond float64 (``1e999``) and nesting
    past 1024 levels are :class:`MalformedBody` naming the problem and where, never a crash."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        pos = exc.pos
        word = next((w for w in _NON_FINITE if body.startswith(w, pos) or body.startswith(w, max(0, pos - 1))), None)
        why = (
            f"{word.decode()} is not a JSON number; send finite numbers"
            if word
            else "nested deeper than 1024 levels"
            if exc.msg == "depth limit exceeded"
            else exc.msg
        )
        raise MalformedBody(f"body is not valid JSON ({why}; at char {pos}: {body[pos : pos + 24]!r})") from None


_DTYPES = {"float32": np.float32, "uint8": np.uint8, "int8": np.int8}


def _binary_tensor(body: bytes, shape_text: str, dtype_text: str | None) -> np.ndarray:
    try:
        shape = tuple(int(d) for d in shape_text.replace("x", ",").split(",") if d.strip())
    except ValueError:
        raise InputError(f"X-Tensor-Shape {shape_text!r:.60} is not comma-separated integers") from None
    name = (dtype_text or "float32").strip().lower()
    if name not in _DTYPES:
        raise InputError(f"X-Tensor-Dtype {name!r:.30} must be one of {sorted(_DTYPES)}")
    dtype = np.dtype(_DTYPES[name])
    if not shape or any(d < 1 for d in shape) or int(np.prod(shape)) * dtype.itemsize != len(body):
        raise InputError(
            f"body has {len(body)} bytes; shape {list(shape)} of {name} needs "
            f"{int(np.prod(shape)) * dtype.itemsize if shape else 0}"
        )
    arr = np.frombuffer(body, dtype=dtype).reshape(shape)
    if dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise InputError("tensor holds NaN or infinite values")
    return arr


_DISPOSITION_NAME = re.compile(rb'(?i)content-disposition:[^\r\n]*;\s*name="?([^";\r\n]+)"?')
_FILENAME = re.compile(rb'(?i)filename="([^"\r\n]*)"')


def _multipart_file(content_type: str, body: bytes) -> Request:
    """The ``file`` field of a multipart/form-data body (a direct split: the email parser
    costs more than a small model's inference)."""
    m = re.search(r'boundary="?([^";]+)"?', content_type)
    if not m:
        raise InputError("multipart Content-Type has no boundary")
    delim = b"--" + m.group(1).strip().encode("latin-1")
    parts = body.split(delim)
    if len(parts) < 3:
        raise InputError("multipart body could not be parsed (check the boundary)")
    for part in parts[1:-1]:
        head, sep, data = part.partition(b"\r\n\r\n")
        if not sep:
            continue
        name = _DISPOSITION_NAME.search(head)
        if name and name.group(1) == b"file":
            data = data[:-2] if data.endswith(b"\r\n") else data
            if not data:
                raise InputError("multipart field 'file' is empty")
            fn = _FILENAME.search(head)
            return Request(image=data, filename=fn.group(1).decode("utf-8", "replace") if fn else "image")
    raise InputError("multipart body has no field named 'file'")
