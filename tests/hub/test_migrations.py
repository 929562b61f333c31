"""Alembic migrations build exactly the schema the models declare, on SQLite and PostgreSQL."""

from __future__ import annotations

import subprocess
import sys

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlmodel import SQLModel

from hub import migrations
from hub.db import make_engine

from ..conftest import REPO


def test_upgrade_head_matches_the_models_and_is_idempotent(db_url):
    engine = make_engine(db_url, create=False)
    try:
        migrations.upgrade(engine)
        migrations.upgrade(engine)  # a restart of the hub runs it again: nothing to do
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), SQLModel.metadata)
        assert diff == [], f"models and migrations disagree: {diff}"
        tables = set(inspect(engine).get_table_names())
        assert {
            "device",
            "model",
            "bundle",
            "build",
            "rollout",
            "rollout_device",
            "telemetry_window",
            "report",
            "alert",
            "audit",
            "enroll_token",
            "alembic_version",
        } <= tables
    finally:
        engine.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_replicas_starting_together_on_an_empty_database_both_come_up(db_url):
    """Two hub processes (replicas) migrate one fresh PostgreSQL schema at once: one does the work,
    the other waits on the advisory lock and finds nothing to do (without it one of them fails
    on a table the other has just created, about one start in three here)."""
    code = (
        "import sys; from hub import migrations; from hub.db import make_engine; "
        "migrations.upgrade(make_engine(sys.argv[1], create=False))"
    )
    for _ in range(3):
        procs = [
            subprocess.Popen([sys.executable, "-c", code, db_url], cwd=REPO, stderr=subprocess.PIPE, text=True)
            for _ in range(2)
        ]
        errors = [p.communicate(timeout=120)[1] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], errors
        engine = make_engine(db_url, create=False)
        try:
            with engine.begin() as conn:  # empty again for the next round
                for table in inspect(conn).get_table_names():
                    conn.exec_driver_sql(f'DROP TABLE "{table}" CASCADE')
        finally:
            engine.dispose()
