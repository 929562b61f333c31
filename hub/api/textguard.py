"""Refuse NUL and other C0 control characters in request text before any handler sees them.

PostgreSQL cannot store NUL in text columns and no identifier, group, tag or search term of
ours contains control characters, so they are refused at the edge with one clear 400 instead of
failing deep in the database. Checked: the path, the query string, and JSON bodies (which
spell them ``\\u0000``..``\\u001f``). Binary bodies (bundle archives) are left alone.
"""

from __future__ import annotations

import json
import re
from typing import Any, Awaitable, Callable
from urllib.parse import unquote

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # tab, LF, CR stay allowed
_JSON_ESCAPE = re.compile(rb"\\u00(0[0-8bcef]|1[0-9a-f])|\\u007f", re.IGNORECASE)
MAX_JSON_BYTES = 1 << 20


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
        is_json = headers.get(b"content-type", b"").split(b";")[0].strip() == b"application/json"
        body = b""
        if where is None and is_json:
            more = True
            while more:
                msg = await receive()
                body += msg.get("body", b"")
                more = msg.get("more_body", False)
                if len(body) > MAX_JSON_BYTES:
                    await _reject(send, 413, f"JSON body over {MAX_JSON_BYTES} bytes")
                    return
            if _JSON_ESCAPE.search(body) or _CONTROL.search(body.decode("utf-8", "replace")):
                where = "the JSON body"
        if where is not None:
            await _reject(send, 400, f"control characters (such as NUL) are not allowed in {where}")
            return
        if is_json:
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


async def _reject(send: Send, status: int, message: str) -> None:
    payload = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})
