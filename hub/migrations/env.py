"""Alembic environment: uses the engine handed in by :func:`hub.migrations.upgrade`, or the
``-x url=...`` / ``sqlalchemy.url`` given on the command line."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, text
from sqlmodel import SQLModel

from hub import models  # noqa: F401  (registers the tables)

cfg = context.config
target_metadata = SQLModel.metadata
MIGRATION_LOCK_KEY = 0x6566_6D69_6772  # "efmigr"


def run() -> None:
    engine = cfg.attributes.get("engine")
    if engine is None:
        url = context.get_x_argument(as_dictionary=True).get("url") or cfg.get_main_option("sqlalchemy.url")
        if not url:
            raise SystemExit("give a database: alembic -x url=sqlite:///hub.db ...")
        engine = create_engine(url)
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # hub replicas started together on a fresh database: one migrates, the others wait
            # here until it commits and then find nothing to do (released at commit)
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True, compare_type=True)
        context.run_migrations()


run()
