"""The API's front door, :class:`Guard`: API key, per-key fairness, load shedding
(:mod:`cloud.admission`) and body limit, checked before FastAPI parses anything.
:func:`error_response` is the one error body of the API (``{"detail", "code"}``), used here and
by the routes in :mod:`cloud.api`.
"""

from __future__ import annotations

import time

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .config import ApiKey
from .errors import AuthError, Overloaded, TooLarge
from .metrics import Metrics
from .service import Service

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/docs", "/openapi.json", "/docs/oauth2-redirect"})


def error_response(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail, "code": code}, status_code=status, headers=headers)


class Guard:
    """Pure ASGI middleware, before FastAPI parses anything: checks the API key (except on
    ``OPEN_PATHS``), bounds every request body whatever its method or Content-Type (buffered,
    at most ``limit`` bytes; a larger Content-Length is refused before one body byte is read,
    a chunked body as soon as it passes the limit) and records latency per route and status.
    Doing this here rather than in per-route dependencies keeps the per-request cost of the hot
    path low (see docs/cloud.md)."""

    def __init__(self, app: ASGIApp, limit: int, metrics: Metrics, service: Service) -> None:
        self.app = app
        self.limit = limit
        self.metrics = metrics
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        key: ApiKey | None = None
        admitted = False
        try:
            if self.service.config.auth_required and scope["path"] not in OPEN_PATHS:
                try:
                    key = self.service.authenticate(_presented_key(scope))
                except AuthError as exc:
                    status["code"] = 401
                    self.metrics.errors.labels(exc.code).inc()
                    await error_response(401, exc.code, str(exc), {"WWW-Authenticate": "Bearer"})(scope, receive, send)
                    return
                if key is not None and not self.service.admit(key):
                    status["code"] = 429
                    self.metrics.errors.labels(Overloaded.code).inc()
                    self.metrics.shed.labels("key_inflight").inc()
                    await error_response(
                        429,
                        Overloaded.code,
                        f"API key {key.name!r} already has "
                        f"{self.service.config.limits.per_key_inflight} requests in flight",
                        {"Retry-After": "1"},
                    )(scope, receive, send)
                    key = None  # not admitted: nothing to release
                    return
            if scope["method"] == "POST" and scope["path"] not in OPEN_PATHS:  # every prediction route
                verdict = self.service.enter_prediction(time.monotonic())
                if not verdict.admitted:
                    status["code"] = 503
                    self.metrics.errors.labels(Overloaded.code).inc()
                    self.metrics.shed.labels(verdict.bound or "max_inflight").inc()
                    await error_response(
                        503,
                        Overloaded.code,
                        f"overloaded, request not queued: {verdict.reason}",
                        {"Retry-After": str(round(verdict.retry_after_s))},
                    )(scope, receive, send)
                    return
                admitted = True
            # every method: no route may ever see an unbounded body, whatever it is declared as
            body = await self._read_body(scope, receive)
            if body is None:
                status["code"] = 413
                resp = error_response(
                    413, TooLarge.code, f"bad request body: larger than the limit of {self.limit} bytes"
                )
                self.metrics.errors.labels(TooLarge.code).inc()
                await resp(scope, receive, send)
                return
            receive = _replay(body, receive)
            await self.app(scope, receive, send_wrapped)
        finally:
            if key is not None:
                self.service.release(key)
            if admitted:
                self.service.leave_prediction(time.monotonic())
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            self.metrics.request_seconds.labels(path, str(status["code"])).observe(time.perf_counter() - start)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes | None:
        for key, value in scope.get("headers", []):
            if key == b"content-length":
                try:
                    if int(value) > self.limit:
                        return None
                except ValueError:
                    pass
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


def _presented_key(scope: Scope) -> str | None:
    bearer = None
    headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
    for key, value in headers:
        if key == b"x-api-key":
            return value.decode("latin-1")
        if key == b"authorization" and value[:7].lower() == b"bearer ":
            bearer = value[7:].decode("latin-1").strip()
    return bearer


def _replay(body: bytes, downstream: Receive) -> Receive:
    """Hand the buffered body to the app once, then pass through (for disconnect events)."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await downstream()

    return receive
