"""The audit log: every operator action, newest first (written by Fleet.audit)."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import func
from sqlmodel import col, select

from .fleet import Fleet
from .models import (
    AuditEntry,
)

log = logging.getLogger(__name__)


def listing(fleet: Fleet, limit: int = 50, offset: int = 0, action: str | None = None) -> dict[str, Any]:
    with fleet.session() as s:
        q = select(AuditEntry)
        if action:
            q = q.where(AuditEntry.action == action)
        total = s.exec(select(func.count()).select_from(q.subquery())).one()
        rows = s.exec(q.order_by(col(AuditEntry.id).desc()).offset(offset).limit(limit)).all()
        return {"items": [a.model_dump() for a in rows], "total": total, "limit": limit, "offset": offset}
