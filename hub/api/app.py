"""FastAPI app factory: error answers, the body guard and the routers (``hub/api/routes``).

Errors are JSON ``{"error": "<one line naming the thing and the problem>"}`` with 400 (bad
input), 401/403 (auth), 404 (unknown id), 409 (state conflict), 413 (body too large),
422 (schema validation, FastAPI's detail kept under ``detail``); each route documents the ones
it gives (:func:`hub.api.schemas.errors`). The dashboard is added by its own package
(:func:`hub.web.dashboard.install`), composed in :func:`hub.server.build`.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from protocol.errors import BadPayload

from ..errors import Conflict, Denied, HubError, NotFound
from ..fleet import Fleet
from .routes import bundles, devices, groups, hardexamples, install, ops, registry, rollouts, trust
from .textguard import TextGuard

log = logging.getLogger(__name__)


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def create_app(fleet: Fleet, connected: Any = None) -> FastAPI:
    """``connected``: optional object with ``is_set()`` (the bridge's connected event)."""
    app = FastAPI(
        title="edgefleet hub",
        version="1",
        description="Registry, signing, rollouts and telemetry for an edge-ML fleet. "
        "Authenticate with `Authorization: Bearer <token>` (roles viewer < operator "
        '< admin); errors are `{"error": "..."}`.',
    )
    app.add_middleware(TextGuard)
    app.state.fleet = fleet
    app.state.tokens = dict(fleet.config.tokens)
    app.state.connected = connected
    metrics = fleet.metrics

    @app.exception_handler(HubError)
    async def hub_error(_r: Request, exc: HubError) -> JSONResponse:
        status = (
            404
            if isinstance(exc, NotFound)
            else 409
            if isinstance(exc, Conflict)
            else 403
            if isinstance(exc, Denied)
            else 400
        )
        metrics.http_errors.labels(str(status)).inc()
        return _error(status, str(exc))

    @app.exception_handler(BadPayload)
    async def bad_payload(_r: Request, exc: BadPayload) -> JSONResponse:
        metrics.http_errors.labels("400").inc()
        return _error(400, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_r: Request, exc: StarletteHTTPException) -> Response:
        metrics.http_errors.labels(str(exc.status_code)).inc()
        return JSONResponse(
            {"error": str(exc.detail)}, status_code=exc.status_code, headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(_r: Request, exc: RequestValidationError) -> JSONResponse:
        metrics.http_errors.labels("422").inc()
        errs = exc.errors()
        first = errs[0] if errs else {}
        where = ".".join(str(x) for x in first.get("loc", ()))
        return _error(
            422,
            f"invalid {where}: {first.get('msg', 'validation failed')}",
            detail=[{"loc": list(e.get("loc", ())), "msg": e.get("msg")} for e in errs],
        )

    for module in (ops, bundles, devices, groups, rollouts, registry, trust, install, hardexamples):
        app.include_router(module.router)
    return app
