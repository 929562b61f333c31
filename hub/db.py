"""Engine and sessions. SQLite (default) gets WAL and a busy timeout so the MQTT ingest
thread and API threads can share it; PostgreSQL needs nothing special, except that hub replicas
on one PostgreSQL database serialize their rollout work with :func:`rollout_section`."""

from __future__ import annotations

from typing import Any

from sqlalchemy import String, cast, event, exists, func, literal, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, col, create_engine, select

from protocol import codec

from . import models  # noqa: F401  (registers tables on SQLModel.metadata)
from .errors import Invalid
from .models import Device


def make_engine(url: str, create: bool = True, **kwargs: Any) -> Engine:
    # JSON columns read back as json.loads reads them, through orjson where its answer is the
    # same (protocol.codec.loads_stored): rollups and the alert scan read them by the million
    kwargs.setdefault("json_deserializer", codec.loads_stored)
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


ROLLOUT_LOCK_KEY = 0x6566_726F_6C6C  # "efroll": the one advisory lock the hub takes


def rollout_section(s: Session) -> None:
    """Make the rest of ``s``'s transaction exclusive among every hub on this database.

    Rollout runs and desired-seq allocation are read-modify-write: the next seq is one past what
    the device row says, a rollout's next state follows from its rows. In one process
    ``Fleet.rollout_lock`` keeps them apart; two hub processes on one database (replicas,
    ``--shared-group``) would interleave and issue one seq twice, or open a cohort twice. On
    PostgreSQL this takes a transaction-level advisory lock, held until ``s`` commits or rolls
    back (or its connection dies with a killed replica), so call it first, before the reads the
    decision rests on. SQLite admits one writer at a time and no second host: nothing to do."""
    if s.get_bind().dialect.name == "postgresql":
        s.connection().execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ROLLOUT_LOCK_KEY})


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
