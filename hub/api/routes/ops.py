"""Liveness and Prometheus metrics (no token: what probes and scrapers call)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from ... import gauges
from ..deps import FleetDep
from ..schemas import HealthPublic

router = APIRouter(tags=["ops"])


@router.get("/healthz", response_model=HealthPublic)
def healthz(request: Request, f: FleetDep) -> HealthPublic:
    with f.session() as s:
        s.exec(text("SELECT 1"))  # type: ignore[call-overload]
    connected = request.app.state.connected
    return HealthPublic(status="ok", db="ok", mqtt=connected.is_set() if connected is not None else None)


@router.get("/metrics", response_class=Response)
def prometheus(f: FleetDep) -> Response:
    gauges.refresh(f)
    return Response(generate_latest(f.metrics.registry), media_type=CONTENT_TYPE_LATEST)
