"""The local API's HTTP/1.1 server: one thread per connection, keep-alive, routes to :mod:`serve`.

Why not ``http.server``: ``python -m bench agent`` puts a server that only reads the request,
invokes the model and writes a fixed answer within noise of a bare ``invoke()``, so everything
above that is ours. This server reads each request with a few large ``recv`` calls, parses the
head in one pass and writes each answer with one ``sendall``, and names every wire error in
JSON. Measured against the ``BaseHTTPRequestHandler`` version in A/B runs (MobileNetV2-224,
wrk): tensor requests within noise, JPEG requests 0.2 ms faster in one run and within noise in
another - the HTTP layer was not where most of the agent's overhead was (docs/adr/0005).

Wire rules (each violation gets a JSON error naming it, then the connection closes):

* request line ``METHOD TARGET HTTP/1.0|HTTP/1.1`` (else 400); the head (request line + header
  lines) at most 64 KiB and 100 header lines (431); header lines ``Name: value`` with a token
  name (400 otherwise: no obsolete line folding, no whitespace before the colon);
* the body is ``Content-Length`` bytes (digits only, one value; 400), at most ``MAX_BODY`` (413);
  ``Transfer-Encoding`` is not supported (501: send Content-Length);
* ``Expect: 100-continue`` is answered ``100 Continue`` before the body is read;
* HTTP/1.1 keeps the connection open unless ``Connection: close``; HTTP/1.0 closes unless
  ``Connection: keep-alive``; an idle connection is closed after ``IDLE_TIMEOUT_S``;
* routes: ``POST /v1/predict`` and ``/predict``, ``GET /healthz``, ``GET /v1/status``, and
  ``GET /metrics`` (Prometheus text, :mod:`agent.metrics`) when ``http_metrics`` is on, and
  ``GET|POST|DELETE /v1/update/hold`` (an app defers switching to a new bundle: ``POST
  {"minutes": N, "reason": "..."}``, N up to ``max_hold_minutes``; 422 names a bad value;
  ``DELETE`` lets go; every answer is the hold's state, agent/README.md); per model channel
  (agent.channels) ``POST /v1/models/{channel}/predict`` and ``GET /v1/models/{channel}/healthz``
  (``default`` is the routes above; a channel the device does not run is 404); other paths 404,
  other methods 405 (with ``Allow``). Errors are ``{"error", "detail"}``;
* a predict body that is not strict JSON (NaN, Infinity, ``1e999``, nesting past 1024 levels,
  ``inputs`` deeper than 16) is 400; an image declaring more than ``agent.image.MAX_PIXELS``
  pixels is 413 (decoded never); other bad input 422. The connection stays open.
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import re
import socket
import socketserver
import time
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path
from typing import Any, Protocol

from . import memory
from .errors import AgentError, HoldRefused, InputError, MalformedBody, TooLarge, Unavailable
from .metrics import CONTENT_TYPE as METRICS_TYPE, AgentMetrics
from .serve import MAX_BODY, Answer, Serving, parse_request

log = logging.getLogger(__name__)

MAX_HEAD = 65536
MAX_HEADERS = 100
IDLE_TIMEOUT_S = 300.0
SERVER = "edgefleet-agent"
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")  # RFC 9110 field-name
_ROUTES = {"/v1/predict": "POST", "/predict": "POST", "/healthz": "GET", "/v1/status": "GET"}


class BadRequest(AgentError):
    """The request cannot be read; ``status`` and the message say why. The connection closes."""

    reason = "bad_request"

    def __init__(self, status: HTTPStatus, detail: str, allow: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.allow = allow  # for 405


class Head:
    """A parsed request head: method, path, query (the text after "?"), version, headers (lower-case names,
    first value wins, as ``email.message.Message.get``)."""

    __slots__ = ("method", "path", "query", "version", "headers")

    def __init__(self, method: str, target: str, version: str, headers: dict[str, str]) -> None:
        self.method, self.version, self.headers = method, version, headers
        path, _, self.query = target.partition("?")
        self.path = "/" + path.lstrip("/") if path.startswith("//") else path

    @property
    def keep_alive(self) -> bool:
        conn = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.1":
            return conn != "close"
        return conn == "keep-alive"


def parse_head(block: bytes) -> Head:
    """The bytes before the blank line -> :class:`Head`; :class:`BadRequest` naming the problem."""
    text = block.decode("iso-8859-1")
    lines = text.split("\n")
    words = lines[0].rstrip("\r").split()
    if len(words) != 3 or words[2] not in ("HTTP/1.1", "HTTP/1.0"):
        raise BadRequest(
            HTTPStatus.BAD_REQUEST, f"bad request line {lines[0].rstrip()[:80]!r}: expected 'METHOD /path HTTP/1.1'"
        )
    if len(lines) - 1 > MAX_HEADERS:
        raise BadRequest(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, f"more than {MAX_HEADERS} header lines")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        line = line.rstrip("\r")
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.match(name) or "\r" in value:
            raise BadRequest(
                HTTPStatus.BAD_REQUEST,
                f"bad header line {line[:80]!r}: expected 'Name: value' "
                "(no line folding, no space before the colon, no CR)",
            )
        headers.setdefault(name.lower(), value.strip(" \t"))
    return Head(words[0], words[1], words[2], headers)


def body_length(head: Head) -> int:
    if "transfer-encoding" in head.headers:
        raise BadRequest(
            HTTPStatus.NOT_IMPLEMENTED, "Transfer-Encoding is not supported; send the body with Content-Length"
        )
    text = head.headers.get("content-length", "0")
    if not text.isdigit() or not text.isascii():
        raise BadRequest(HTTPStatus.BAD_REQUEST, f"Content-Length {text[:40]!r} is not a number")
    length = int(text)
    if length > MAX_BODY:
        raise BadRequest(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body of {length} bytes exceeds {MAX_BODY}")
    return length


_date = (0, "")


def http_date() -> str:
    """The Date header for now, formatted once per second."""
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, email.utils.formatdate(now, usegmt=True))
    return _date[1]


def response(
    status: int, body: bytes, close: bool = False, extra: str = "", content_type: str = "application/json"
) -> bytes:
    return (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nServer: {SERVER}\r\nDate: {http_date()}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n{extra}"
        f"{'Connection: close' + chr(13) + chr(10) if close else ''}\r\n"
    ).encode("latin-1") + body


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _error(status: HTTPStatus, detail: str) -> bytes:
    return json.dumps({"error": status.phrase.lower(), "detail": detail}).encode()


class Closed(AgentError):
    """The client closed the connection (between requests, or in the middle of one)."""

    reason = "closed"


class UpdateHold(Protocol):
    """What the hold route drives (the updater: :meth:`agent.updater.Updater.set_hold`)."""

    def set_hold(self, minutes: Any, reason: Any) -> dict[str, Any]: ...

    def clear_hold(self) -> dict[str, Any]: ...

    def hold_status(self) -> dict[str, Any]: ...


HOLD_PATH = "/v1/update/hold"
_CHANNEL_PATH = re.compile(r"/v1/models/([a-z][a-z0-9_-]{0,31})/(predict|healthz)\Z")


def _handler(
    serving: Serving,
    status: Callable[[], dict[str, Any]],
    metrics: AgentMetrics | None = None,
    hold: UpdateHold | None = None,
    channels: Callable[[str], Serving | None] | None = None,
) -> type[socketserver.BaseRequestHandler]:
    routes = {**_ROUTES, "/metrics": "GET"} if metrics is not None else dict(_ROUTES)
    if hold is not None:
        routes[HOLD_PATH] = "GET, POST, DELETE"

    class Connection(socketserver.BaseRequestHandler):
        request: socket.socket

        def setup(self) -> None:
            if self.request.family in (socket.AF_INET, socket.AF_INET6):
                # answers are one send each; without this Nagle + delayed ACK can add ~40 ms
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.request.settimeout(IDLE_TIMEOUT_S)
            self.buf = bytearray()

        def handle(self) -> None:
            try:
                while self.one():
                    pass
            except (Closed, TimeoutError, ConnectionError):
                pass
            except OSError as exc:
                log.debug("local API connection: %s", exc)
            finally:
                memory.trim()  # the connection's buffers back to the kernel, off every request's path

        def _fill(self, need: int) -> None:
            """Receive until the buffer holds ``need`` bytes."""
            while len(self.buf) < need:
                chunk = self.request.recv(max(65536, need - len(self.buf)))
                if not chunk:
                    raise Closed()
                self.buf += chunk

        def _head(self) -> bytes | None:
            """The next request head (without the blank line), or None when the client closed
            the connection between requests."""
            start = 0
            while True:
                end = self.buf.find(b"\r\n\r\n", start)
                if end >= 0:
                    head, self.buf = bytes(self.buf[:end]), self.buf[end + 4 :]
                    return head
                end = self.buf.find(b"\n\n", start)  # bare-LF clients
                if end >= 0:
                    head, self.buf = bytes(self.buf[:end]), self.buf[end + 2 :]
                    return head
                if len(self.buf) > MAX_HEAD:
                    raise BadRequest(
                        HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, f"request head longer than {MAX_HEAD} bytes"
                    )
                start = max(0, len(self.buf) - 3)
                chunk = self.request.recv(65536)
                if not chunk:
                    if self.buf.strip():
                        raise Closed()
                    return None
                self.buf += chunk

        def one(self) -> bool:
            """Serve one request; False when the connection is done."""
            try:
                block = self._head()
                if block is None:
                    return False
                head = parse_head(block.lstrip(b"\r\n"))  # stray CRLF before a request is allowed
                allowed = routes.get(head.path)
                served: Serving | None = serving
                if allowed is None and channels is not None and (m := _CHANNEL_PATH.match(head.path)):
                    allowed = "POST" if m[2] == "predict" else "GET"
                    served = channels(m[1])
                if allowed is not None and head.method not in allowed.split(", "):
                    raise BadRequest(
                        HTTPStatus.METHOD_NOT_ALLOWED, f"{head.path} takes {allowed}, not {head.method}", allow=allowed
                    )
                length = body_length(head)
                if (
                    allowed is not None
                    and head.method == "POST"
                    and head.version == "HTTP/1.1"
                    and head.headers.get("expect", "").lower() == "100-continue"
                ):
                    self.request.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                self._fill(length)  # every request's body is read, whatever its route
                body = bytes(self.buf[:length])
                del self.buf[:length]
            except BadRequest as exc:
                extra = f"Allow: {exc.allow}\r\n" if exc.allow else ""
                self.request.sendall(response(exc.status, _error(exc.status, str(exc)), close=True, extra=extra))
                return False
            if allowed is None:
                return self._send(
                    HTTPStatus.NOT_FOUND,
                    _error(HTTPStatus.NOT_FOUND, f"no route {head.method} {head.path}"),
                    head.keep_alive,
                )
            if head.path == HOLD_PATH and hold is not None:
                return self._hold(hold, head, body)
            if served is None:
                return self._send(
                    HTTPStatus.NOT_FOUND,
                    _error(HTTPStatus.NOT_FOUND, f"no model channel {head.path.split('/')[3]!r} on this device"),
                    head.keep_alive,
                )
            if allowed == "GET":
                return self._get(head, served)
            return self._post(head, body, served)

        def _hold(self, hold: UpdateHold, head: Head, body: bytes) -> bool:
            if head.method == "GET":
                return self._send(200, json.dumps(hold.hold_status()).encode(), head.keep_alive)
            if head.method == "DELETE":
                return self._send(200, json.dumps(hold.clear_hold()).encode(), head.keep_alive)
            try:
                req = json.loads(body or b"{}", parse_constant=_no_constant)
                if not isinstance(req, dict):
                    raise HoldRefused(f'the body must be a JSON object like {{"minutes": 30}}, got {body[:40]!r}')
                unknown = set(req) - {"minutes", "reason"}
                if unknown:
                    raise HoldRefused(f"unknown fields {sorted(unknown)}; known: minutes, reason")
                doc = hold.set_hold(req.get("minutes"), req.get("reason", ""))
            except (ValueError, RecursionError) as exc:  # HoldRefused, or a body that is not JSON
                code = HTTPStatus.UNPROCESSABLE_ENTITY if isinstance(exc, HoldRefused) else HTTPStatus.BAD_REQUEST
                return self._send(code, _error(code, str(exc)), head.keep_alive)
            return self._send(200, json.dumps(doc).encode(), head.keep_alive)

        def _get(self, head: Head, served: Serving) -> bool:
            if head.path == "/healthz" or head.path.endswith("/healthz"):
                ok = served.ready
                doc: dict[str, Any] = {"ok": ok, "model": served.model is not None}
                return self._send(200 if ok else 503, json.dumps(doc).encode(), head.keep_alive)
            if head.path == "/metrics" and metrics is not None:
                page = response(200, metrics.render(), close=not head.keep_alive, content_type=METRICS_TYPE)
                self.request.sendall(page)
                return head.keep_alive
            return self._send(200, json.dumps(status()).encode(), head.keep_alive)

        def _post(self, head: Head, body: bytes, served: Serving) -> bool:
            h = head.headers
            try:
                req = parse_request(
                    h.get("content-type", ""),
                    body,
                    h.get("x-tensor-shape"),
                    h.get("x-tensor-dtype"),
                    query=head.query,
                    session=h.get("x-session-id"),
                    reset=h.get("x-session-reset"),
                )
                out: Answer = served.respond(req)
            except MalformedBody as exc:
                return self._send(HTTPStatus.BAD_REQUEST, _error(HTTPStatus.BAD_REQUEST, str(exc)), head.keep_alive)
            except TooLarge as exc:
                return self._send(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    _error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, str(exc)),
                    head.keep_alive,
                )
            except InputError as exc:
                return self._send(
                    HTTPStatus.UNPROCESSABLE_ENTITY, _error(HTTPStatus.UNPROCESSABLE_ENTITY, str(exc)), head.keep_alive
                )
            except Unavailable as exc:
                return self._send(
                    HTTPStatus.SERVICE_UNAVAILABLE, _error(HTTPStatus.SERVICE_UNAVAILABLE, str(exc)), head.keep_alive
                )
            except Exception as exc:  # the server keeps serving whatever one request does
                log.exception("predict failed")
                return self._send(
                    HTTPStatus.INTERNAL_SERVER_ERROR,
                    _error(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(exc).__name__}: {exc}"),
                    head.keep_alive,
                )
            keep = self._send(200, out.body(), head.keep_alive)  # the answer leaves now...
            try:
                out.settle()  # ...and the bookkeeping runs after it
            except Exception:  # telemetry must not take the connection down
                log.exception("bookkeeping after a prediction failed")
            return keep

        def _send(self, code: int, body: bytes, keep_alive: bool) -> bool:
            self.request.sendall(response(code, body, close=not keep_alive))
            return keep_alive

    return Connection


class TCPServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type[socketserver.BaseRequestHandler]) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, handler)


class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def make_server(
    host: str,
    port: int,
    serving: Serving,
    status: Callable[[], dict[str, Any]],
    metrics: AgentMetrics | None = None,
    hold: UpdateHold | None = None,
    channels: Callable[[str], Serving | None] | None = None,
) -> TCPServer:
    return TCPServer((host, port), _handler(serving, status, metrics, hold, channels))


def make_unix_server(
    path: Path,
    serving: Serving,
    status: Callable[[], dict[str, Any]],
    metrics: AgentMetrics | None = None,
    hold: UpdateHold | None = None,
    channels: Callable[[str], Serving | None] | None = None,
) -> UnixServer:
    """The same API on a Unix socket (mode 0660): local apps without a TCP port."""
    if path.is_socket():
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    srv = UnixServer(str(path), _handler(serving, status, metrics, hold, channels))
    os.chmod(path, 0o660)
    return srv
