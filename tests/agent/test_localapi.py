"""The local API's HTTP/1.1 layer over real sockets: keep-alive, pipelining, and every wire error
answered with a JSON body that names it."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from agent.localapi import MAX_HEAD, BadRequest, make_server, parse_head
from agent.runtime import LiteRTBackend, Model
from agent.serve import Serving
from agent.telemetry import Recorder
from protocol.messages import BundleInfo

from .bundles import MNV1


@pytest.fixture(scope="module")
def port(coral_models) -> Iterator[int]:
    model = Model(
        LiteRTBackend(coral_models / MNV1),
        BundleInfo("a" * 64, "mnv1", "1"),
        {"kind": "image", "height": 128, "width": 128, "channels": 3, "scale": 1 / 128, "offset": -1.0},
    )
    serving = Serving(Recorder(), None, None, lambda d, w: None)
    serving.swap(model)
    srv = make_server("127.0.0.1", 0, serving, lambda: {"device": "t"})
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield int(srv.server_address[1])
    srv.shutdown()
    srv.server_close()


def _tensor() -> bytes:
    return np.zeros((1, 128, 128, 3), np.uint8).tobytes()


def _post(path: str = "/v1/predict", extra: str = "", body: bytes | None = None, version: str = "HTTP/1.1") -> bytes:
    body = _tensor() if body is None else body
    return (
        f"POST {path} {version}\r\nHost: a\r\nContent-Type: application/octet-stream\r\n"
        f"X-Tensor-Shape: 1,128,128,3\r\nX-Tensor-Dtype: uint8\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


def _read_response(f: Any) -> tuple[int, dict[str, str], Any]:
    status = int(f.readline().split()[1])
    headers = {}
    while (line := f.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.lower()] = value.strip()
    return status, headers, json.loads(f.read(int(headers["content-length"])))


def _exchange(port: int, raw: bytes, answers: int = 1) -> tuple[list[tuple[int, dict[str, str], Any]], bool]:
    """Send ``raw`` on one connection, read ``answers`` responses; also say whether the server
    closed the connection afterwards."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(raw)
        f = s.makefile("rb")
        out = [_read_response(f) for _ in range(answers)]
        s.settimeout(0.5)
        try:
            closed = f.read(1) == b""
        except TimeoutError:
            closed = False
        return out, closed


def test_pipelined_requests_on_one_connection_get_their_answers_in_order(port: int) -> None:
    raw = (
        _post()
        + b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"
        + _post("/predict")
        + b"GET /v1/status?x=1 HTTP/1.1\r\nhost: a\r\n\r\n"
    )
    out, closed = _exchange(port, raw, answers=4)
    assert [code for code, _, _ in out] == [200, 200, 200, 200] and not closed
    assert out[0][2]["served_by"] == "cpu" and [len(r) for r in out[0][2]["predictions"]] == [1001]
    assert out[1][2] == {"ok": True, "model": True} and out[3][2] == {"device": "t"}
    assert out[0][2]["top"] == out[2][2]["top"]
    assert out[0][1]["content-type"] == "application/json" and "date" in out[0][1]


def test_http_10_and_connection_close_end_the_connection(port: int) -> None:
    for raw in (_post(version="HTTP/1.0"), _post(extra="Connection: close\r\n")):
        out, closed = _exchange(port, raw)
        assert out[0][0] == 200 and out[0][1].get("connection") == "close" and closed
    out, closed = _exchange(port, _post(version="HTTP/1.0", extra="Connection: keep-alive\r\n"))
    assert out[0][0] == 200 and not closed


def test_expect_100_continue_is_answered_before_the_body(port: int) -> None:
    head, _, body = _post(extra="Expect: 100-continue\r\n").partition(b"\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(head + b"\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        s.sendall(body)
        status, _, doc = _read_response(s.makefile("rb"))
        assert status == 200 and doc["served_by"] == "cpu"


@pytest.mark.parametrize(
    "raw, status, needle",
    [
        (b"POST /v1/predict\r\nHost: a\r\n\r\n", 400, "bad request line"),
        (b"GET /healthz HTTP/2.0\r\n\r\n", 400, "bad request line"),
        (b"GET /healthz HTTP/1.1\r\nNo colon here\r\n\r\n", 400, "bad header line"),
        (b"GET /healthz HTTP/1.1\r\nBad Name: x\r\n\r\n", 400, "bad header line"),
        (b"GET /healthz HTTP/1.1\r\nX-A: one\r\n two\r\n\r\n", 400, "line folding"),
        (b"GET /healthz HTTP/1.1\r\n" + b"X: y\r\n" * 101 + b"\r\n", 431, "more than 100 header lines"),
        (b"GET /healthz HTTP/1.1\r\nX: " + b"y" * (MAX_HEAD + 10), 431, "longer than"),
        (b"POST /v1/predict HTTP/1.1\r\nContent-Length: ten\r\n\r\n", 400, "'ten' is not a number"),
        (b"POST /v1/predict HTTP/1.1\r\nContent-Length: 999999999999\r\n\r\n", 413, "exceeds"),
        (
            b"POST /v1/predict HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            501,
            "Content-Length",
        ),
        (b"PUT /v1/predict HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405, "takes POST, not PUT"),
    ],
)
def test_wire_errors_are_named_and_close_the_connection(port: int, raw: bytes, status: int, needle: str) -> None:
    out, closed = _exchange(port, raw)
    code, headers, doc = out[0]
    assert code == status and needle in doc["detail"] and closed
    assert set(doc) == {"error", "detail"}
    if status == 405:
        assert headers["allow"] == "POST"


def test_bad_input_and_unknown_routes_keep_the_connection(port: int) -> None:
    raw = (
        _post(body=b"\x00" * 10)
        + b"DELETE /nope HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
        + b"GET /healthz HTTP/1.1\r\n\r\n"
    )
    out, closed = _exchange(port, raw, answers=3)
    assert [code for code, _, _ in out] == [422, 404, 200] and not closed
    assert "needs 49152" in out[0][2]["detail"] and "no route DELETE /nope" in out[1][2]["detail"]


def test_a_client_that_leaves_mid_body_costs_nothing(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(_post()[:500])
    out, _ = _exchange(port, b"GET /healthz HTTP/1.1\r\n\r\n")
    assert out[0][0] == 200


def test_parse_head_reads_names_case_insensitively_first_value_wins() -> None:
    head = parse_head(b"POST //v1/predict?a=b HTTP/1.1\r\nHost: a\r\nX-A:   spaced\t \r\nx-a: twice\r\nEmpty:")
    assert (head.method, head.path, head.version) == ("POST", "/v1/predict", "HTTP/1.1")
    assert head.headers == {"host": "a", "x-a": "spaced", "empty": ""} and head.keep_alive
    assert parse_head(b"GET / HTTP/1.1\nHost: lf").headers == {"host": "lf"}  # bare LF line ends
    with pytest.raises(BadRequest, match="no CR"):
        parse_head(b"GET / HTTP/1.1\r\nX-Cr: a\rb")


def _png_declaring(width: int, height: int) -> bytes:
    """A few dozen bytes of PNG whose header declares ``width`` x ``height`` RGB pixels."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def _jpeg_declaring(width: int, height: int) -> bytes:
    """A real 16x16 JPEG whose frame header (SOF0) is patched to declare ``width`` x ``height``."""
    import io
    import struct

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 10, 10)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _post_as(ctype: str, body: bytes) -> bytes:
    return (
        f"POST /v1/predict HTTP/1.1\r\nHost: a\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


@pytest.mark.parametrize(
    "body, needle",
    [
        (_png_declaring(30000, 30000), "declares 900000000 pixels"),  # past Pillow's own bomb limit
        (_jpeg_declaring(30000, 30000), "declares 900000000 pixels"),
        (_jpeg_declaring(12000, 12000), "declares 144000000 pixels"),  # Pillow warns (89-179 MP)
        (_png_declaring(8000, 6000), "declares 8000x6000 = 48000000 pixels"),  # under Pillow's, over ours
    ],
    ids=["png-30000", "jpeg-30000", "jpeg-12000", "png-8000x6000"],
)
def test_an_image_bomb_gets_413_naming_its_size_and_the_agent_keeps_serving(
    port: int, body: bytes, needle: str
) -> None:
    """A small file declaring huge dimensions is refused from its header (never decoded), with
    413 naming the size; the next request on the same connection is served."""
    out, closed = _exchange(port, _post_as("image/png", body) + _post(), answers=2)
    (code, _, doc), (after, _, _) = out
    assert code == 413 and needle in doc["detail"] and "at most 40000000" in doc["detail"], doc
    assert after == 200 and not closed


@pytest.mark.parametrize(
    "body, needle",
    [
        (b'{"inputs": [[0.5, NaN]]}', "NaN is not a JSON number"),
        (b'{"inputs": [[0.5, Infinity]]}', "Infinity is not a JSON number"),
        (b'{"inputs": [[0.5, -Infinity]]}', "-Infinity is not a JSON number"),
        (b'{"inputs": [[0.5, 1e999]]}', "infinity when parsed as double; at char 18: b'1e999]]}'"),
        (b'{"inputs": ' + b"[" * 5000 + b"]" * 5000 + b"}", "nested deeper than 1024 levels"),
        (b'{"inputs": ' + b"[" * 100 + b"0" + b"]" * 100 + b"}", "'inputs' is nested deeper than 16 levels"),
        (b"{not json", "body is not valid JSON"),
    ],
    ids=["nan", "infinity", "minus-infinity", "1e999", "nested-5000", "inputs-nested-100", "not-json"],
)
def test_non_finite_or_deeply_nested_json_gets_400_naming_the_problem(port: int, body: bytes, needle: str) -> None:
    out, closed = _exchange(port, _post_as("application/json", body) + _post(), answers=2)
    (code, _, doc), (after, _, _) = out
    assert code == 400 and needle in doc["detail"], doc
    assert after == 200 and not closed


def test_a_json_number_beyond_float32_is_named_not_a_crash(port: int) -> None:
    """1e300 is valid JSON but no float32: a 422 naming the range (numpy's overflow warning is an
    error under this suite's settings, so a missed one would be a 500 here)."""
    tensor = np.zeros((1, 128, 128, 3)).tolist()
    tensor[0][0][0][0] = 1e300
    out, _ = _exchange(port, _post_as("application/json", json.dumps({"inputs": tensor}).encode()))
    assert out[0][0] == 422 and "beyond the float32 range" in out[0][2]["detail"]
