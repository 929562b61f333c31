"""Liveness, readiness and Prometheus metrics (no token: what probes and scrapers call).

``/healthz`` is liveness: 200 while the process answers, whatever its dependencies do (a
restart would not bring a broker back), with a body that says how they are. ``/readyz`` is
readiness: the same body, 503 while the database does not answer or the broker session is down,
so a load balancer or an orchestrator sends no traffic to a hub that would lose it. A hub run
without a broker (tests, a registry-only hub) says ``broker: none`` and is ready.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from ... import gauges
from ...fleet import Fleet
from ..deps import FleetDep
from ..schemas import HealthPublic

router = APIRouter(tags=["ops"])
log = logging.getLogger(__name__)


def health(db_error: str | None, broker: bool | None) -> HealthPublic:
    """The verdict from what was observed: ``db_error`` (None: the database answered) and the
    broker session (True up, False down, None: no broker)."""
    down = []
    if db_error is not None:
        down.append(f"database unreachable: {db_error}")
    if broker is False:
        down.append("broker session not connected")
    return HealthPublic(
        status="degraded" if down else "ok",
        ready=not down,
        db="ok" if db_error is None else "unreachable",
        broker="none" if broker is None else "connected" if broker else "disconnected",
        mqtt=broker,
        down=down,
    )


def _probe(request: Request, f: Fleet) -> HealthPublic:
    try:
        with f.session() as s:
            s.exec(text("SELECT 1"))  # type: ignore[call-overload]
        db_error = None
    except SQLAlchemyError as exc:
        # the body (unauthenticated) names the error class; the log has the detail
        log.warning("health probe: database unreachable: %s", exc)
        db_error = type(getattr(exc, "orig", None) or exc).__name__
    connected = request.app.state.connected
    return health(db_error, connected.is_set() if connected is not None else None)


@router.get("/healthz", response_model=HealthPublic)
def healthz(request: Request, f: FleetDep) -> HealthPublic:
    """Liveness: 200 while the hub answers; the body says whether its database and broker are up."""
    return _probe(request, f)


@router.get(
    "/readyz",
    response_model=HealthPublic,
    responses={503: {"model": HealthPublic, "description": "not ready: `down` names what is down"}},
)
def readyz(request: Request, f: FleetDep) -> HealthPublic | JSONResponse:
    """Readiness: 200 when the database answers and the broker session is up (or the hub runs
    without a broker), else 503 naming what is down."""
    verdict = _probe(request, f)
    if not verdict.ready:
        return JSONResponse(verdict.model_dump(), status_code=503)
    return verdict


@router.get("/metrics", response_class=Response)
def prometheus(f: FleetDep) -> Response:
    gauges.refresh(f)
    return Response(generate_latest(f.metrics.registry), media_type=CONTENT_TYPE_LATEST)
