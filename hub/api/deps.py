"""Request dependencies: the fleet, and the caller's role from a bearer token.

Roles are ordered ``viewer < operator < admin``. A request needs a token whose role is at
least the route's; otherwise 401 (no/unknown token) or 403 (role too low). The dashboard page
also accepts the token from the ``ef_token`` cookie, set by the sign-in form at ``/ui/login``
(a POST: a token never travels in a URL).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated, Callable

from fastapi import Depends, HTTPException, Request

from ..fleet import Fleet

RANK = {"viewer": 0, "operator": 1, "admin": 2}


@dataclass(frozen=True)
class Caller:
    role: str
    token_hint: str

    @property
    def actor(self) -> str:
        return f"{self.role}:{self.token_hint}"


def get_fleet(request: Request) -> Fleet:
    return request.app.state.fleet  # type: ignore[no-any-return]


FleetDep = Annotated[Fleet, Depends(get_fleet)]


def token_of(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.cookies.get("ef_token")


def caller_of(request: Request) -> Caller | None:
    token = token_of(request)
    if not token:
        return None
    tokens: dict[str, str] = request.app.state.tokens
    for known, role in tokens.items():
        if hmac.compare_digest(known.encode(), token.encode()):
            return Caller(role, known[:4] + "…")
    return None


def require(role: str) -> Callable[[Request], Caller]:
    def dep(request: Request) -> Caller:
        caller = caller_of(request)
        if caller is None:
            raise HTTPException(401, "missing or unknown bearer token",
                                headers={"WWW-Authenticate": "Bearer"})
        if RANK[caller.role] < RANK[role]:
            raise HTTPException(403, f"role {caller.role} may not do this; needs {role}")
        return caller
    return dep


Viewer = Annotated[Caller, Depends(require("viewer"))]
Operator = Annotated[Caller, Depends(require("operator"))]
Admin = Annotated[Caller, Depends(require("admin"))]
