"""Who is calling: a bearer token (API) or the ``ef_token`` cookie (dashboard) mapped to a role.

Roles are ordered ``viewer < operator < admin``. The API (:mod:`hub.api.deps`) and the
dashboard (:mod:`hub.web.dashboard`) both ask :func:`caller_of`; each answers a missing or
too-low role its own way (401/403 JSON, or the sign-in page). Tokens are compared in constant
time. The cookie is set only by the dashboard's sign-in form (a POST): a token never travels
in a URL.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from fastapi import Request

RANK = {"viewer": 0, "operator": 1, "admin": 2}
COOKIE = "ef_token"


@dataclass(frozen=True)
class Caller:
    role: str
    token_hint: str

    @property
    def actor(self) -> str:
        """How the audit log names this caller: role and the token's first characters."""
        return f"{self.role}:{self.token_hint}"

    def may(self, need: str) -> bool:
        return RANK[self.role] >= RANK[need]


def token_of(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.cookies.get(COOKIE)


def caller_for(tokens: Mapping[str, str], token: str | None) -> Caller | None:
    """The caller a token names (``tokens``: token -> role), or None."""
    if not token:
        return None
    found = None
    for known, role in tokens.items():
        if hmac.compare_digest(known.encode(), token.encode()):
            found = Caller(role, known[:4] + "…")
    return found


def caller_of(request: Request) -> Caller | None:
    return caller_for(request.app.state.tokens, token_of(request))
