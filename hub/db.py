"""Engine and sessions. SQLite (default) gets WAL and a busy timeout so the MQTT ingest
thread and API threads can share it; PostgreSQL needs nothing special."""

from __future__ import annotations

from typing import Any

from sqlalchemy import String, cast, event, exists, func, literal
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, col, create_engine, select

from . import models  # noqa: F401  (registers tables on SQLModel.metadata)
from .errors import Invalid
from .models import Device


def make_engine(url: str, create: bool = True, **kwargs: Any) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            if ":memory:" not in url:
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()
    else:
        engine = create_engine(url, pool_pre_ping=True, **kwargs)
    if create:
        SQLModel.metadata.create_all(engine)
    return engine


def session(engine: Engine) -> Session:
    return Session(engine, expire_on_commit=False)


def has_tag(dialect: str, tag: str) -> Any:
    """SQL condition: ``tag`` is one element of the device's JSON ``tags`` list. A whole-element
    comparison (never a substring of the JSON text, so ``lab`` does not match ``lab-2``)."""
    if dialect == "postgresql":
        # the column is json; jsonb containment is false (not an error) for non-array values
        return cast(col(Device.tags), JSONB).contains([tag])
    if dialect == "sqlite":
        each = func.json_each(col(Device.tags)).table_valued("value")
        return exists(select(literal(1)).select_from(each).where(each.c.value == cast(literal(tag), String)))
    raise Invalid("tag filter", f"supports SQLite and PostgreSQL, not {dialect!r}")
