"""One guard for every request body, before any handler sees it.

Size: a body is refused with 413 before it is read when its Content-Length says it is too
large, and as soon as the bytes read pass the limit otherwise. Limits by route: the one
unauthenticated body route (``POST /api/v1/enroll``) takes 4 KiB, bundle uploads are the
route's own business (``MAX_BUNDLE_BYTES``), everything else 1 MiB. A 50 MB body to the enroll
route used to grow the hub from 112 to 393 MB.

Text: NUL and other C0 control characters are refused with 400 in the path, the query string
and every body but a bundle upload, whatever its Content-Type says (``Application/JSON`` and
``application/x+json`` are JSON to FastAPI too, and once let a NUL into ``device.group``);
JSON spells them ``\\u0000``..``\\u001f``, forms ``%00``. PostgreSQL cannot store NUL in text
columns and no identifier, group, tag or search term of ours contains control characters.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote, unquote_to_bytes

from protocol import codec
from protocol.errors import BadPayload

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # tab, LF, CR stay allowed
_CONTROL_BYTES = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_JSON_ESCAPE = re.compile(rb"\\u00(0[0-8bcef]|1[0-9a-f])|\\u007f", re.IGNORECASE)
MAX_JSON_BYTES = 1 << 20
MAX_UNAUTHENTICATED_BYTES = 4096
UNAUTHENTICATED = {("POST", "/api/v1/enroll")}
BINARY = {("POST", "/api/v1/bundles")}  # streamed and bounded by the route itself


def body_limit(method: str, path: str) -> int | None:
    """Bytes a body may have on this route; None: the route bounds it."""
    if (method, path) in BINARY:
        return None
    if (method, path) in UNAUTHENTICATED:
        return MAX_UNAUTHENTICATED_BYTES
    return MAX_JSON_BYTES


class TextGuard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        where = None
        if _CONTROL.search(scope.get("path", "")):
            where = "the URL path"
        elif _CONTROL.search(unquote(scope.get("query_string", b"").decode("latin-1"))):
            where = "the query string"
        headers = dict(scope.get("headers") or [])
        limit = body_limit(scope.get("method", ""), scope.get("path", ""))
        declared = headers.get(b"content-length", b"")
        if limit is not None and declared.isdigit() and int(declared) > limit:
            await _reject(send, 413, f"body of {int(declared)} bytes is over this route's {limit}")
            return
        body = b""
        if where is None and limit is not None:
            more = True
            while more:
                msg = await receive()
                if msg.get("type") == "http.disconnect":
                    return
                body += msg.get("body", b"")
                more = msg.get("more_body", False)
                if len(body) > limit:
                    await _reject(send, 413, f"body over this route's {limit} bytes")
                    return
            if (
                _JSON_ESCAPE.search(body)
                or _CONTROL_BYTES.search(body)
                or (b"%" in body and _CONTROL_BYTES.search(unquote_to_bytes(body)))
            ):
                where = "the request body"
        if where is not None:
            await _reject(send, 400, f"control characters (such as NUL) are not allowed in {where}")
            return
        if body and _is_json(headers.get(b"content-type", b"")):
            try:
                codec.loads(body, "JSON body")
            except BadPayload as exc:  # FastAPI would take NaN, 1e999 (inf) or a RecursionError
                await _reject(send, 400, str(exc))
                return
        if limit is not None:
            replayed = False

            async def replay() -> Message:
                nonlocal replayed
                if replayed:
                    return await receive()
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}

            await self.app(scope, replay, send)
            return
        await self.app(scope, receive, send)


def _is_json(content_type: bytes) -> bool:
    """What FastAPI parses as JSON: no type, ``application/json`` or ``application/*+json``,
    in any letter case."""
    media = content_type.split(b";")[0].strip().lower()
    return media in (b"", b"application/json") or (media.startswith(b"application/") and media.endswith(b"+json"))


async def _reject(send: Send, status: int, message: str) -> None:
    payload = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": payload})
