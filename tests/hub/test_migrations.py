"""Alembic migrations build exactly the schema the models declare, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlmodel import SQLModel

from hub import migrations
from hub.db import make_engine


def test_upgrade_head_matches_the_models_and_is_idempotent(db_url):
    engine = make_engine(db_url, create=False)
    try:
        migrations.upgrade(engine)
        migrations.upgrade(engine)  # a restart of the hub runs it again: nothing to do
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}),
                                    SQLModel.metadata)
        assert diff == [], f"models and migrations disagree: {diff}"
        tables = set(inspect(engine).get_table_names())
        assert {"device", "model", "bundle", "build", "rollout", "rollout_device", "telemetry_window",
                "report", "alert", "audit", "enroll_token", "alembic_version"} <= tables
    finally:
        engine.dispose()
