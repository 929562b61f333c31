"""Alerts and the audit log."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from ... import alerting, audit
from ..deps import FleetDep, Operator, Viewer
from ..params import Limit, Offset
from ..schemas import AlertPublic, AuditPublic, Page, errors

router = APIRouter(prefix="/api/v1", tags=["alerts"])


@router.get("/alerts", response_model=Page[AlertPublic], responses=errors(401, 422))
def list_alerts(
    _c: Viewer,
    f: FleetDep,
    limit: Limit = 50,
    offset: Offset = 0,
    kind: Literal["offline", "latency_regression", "drift", "rollout_gate"] | None = None,
    device: Annotated[str | None, Query(max_length=64)] = None,
    open: bool = False,
) -> dict[str, Any]:
    return alerting.listing(f, limit, offset, kind, device, open)


@router.get("/audit", response_model=Page[AuditPublic], responses=errors(401, 403, 422))
def list_audit(
    _c: Operator,
    f: FleetDep,
    limit: Limit = 50,
    offset: Offset = 0,
    action: Annotated[str | None, Query(max_length=64)] = None,
) -> dict[str, Any]:
    return audit.listing(f, limit, offset, action)
