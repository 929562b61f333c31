"""Request dependencies: the fleet, and the caller's role (:mod:`hub.auth`) as route guards.

A route needs a token whose role is at least its own; otherwise 401 (no/unknown token) or 403
(role too low). The bearer scheme is declared through FastAPI's ``HTTPBearer`` so the OpenAPI
document carries it; the dashboard's ``ef_token`` cookie is accepted too (:func:`hub.auth.token_of`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..auth import Caller, caller_of
from ..fleet import Fleet

BEARER = HTTPBearer(auto_error=False, description="an API token: viewer, operator or admin")


def get_fleet(request: Request) -> Fleet:
    return request.app.state.fleet  # type: ignore[no-any-return]


FleetDep = Annotated[Fleet, Depends(get_fleet)]


def require(role: str) -> Callable[..., Caller]:
    def dep(
        request: Request, _declared: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)] = None
    ) -> Caller:
        caller = caller_of(request)
        if caller is None:
            raise HTTPException(401, "missing or unknown bearer token", headers={"WWW-Authenticate": "Bearer"})
        if not caller.may(role):
            raise HTTPException(403, f"role {caller.role} may not do this; needs {role}")
        return caller

    return dep


Viewer = Annotated[Caller, Depends(require("viewer"))]
Operator = Annotated[Caller, Depends(require("operator"))]
Admin = Annotated[Caller, Depends(require("admin"))]
