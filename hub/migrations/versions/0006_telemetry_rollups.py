"""telemetry rollups (1-minute and 1-hour, hub.rollups) and the receive-time index they need

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 08:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "telemetry_rollup",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("resolution", sa.Integer(), nullable=False),
        sa.Column("bucket", sa.Integer(), nullable=False),
        sa.Column("device", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("bundle", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("windows", sa.Integer(), nullable=False),
        sa.Column("window_start", sa.Integer(), nullable=False),
        sa.Column("window_end", sa.Integer(), nullable=False),
        sa.Column("inferences", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("tpu", sa.BigInteger(), nullable=False),
        sa.Column("cpu", sa.BigInteger(), nullable=False),
        sa.Column("cloud", sa.BigInteger(), nullable=False),
        sa.Column("latency", sa.JSON(), nullable=False),
        sa.Column("drift", sa.JSON(), nullable=False),
        sa.Column("shadow", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("resolution", "bucket", "device", "bundle", name="uq_telemetry_rollup"),
    )
    op.create_index("ix_telemetry_rollup_res_bucket", "telemetry_rollup", ["resolution", "bucket"], unique=False)
    op.create_index("ix_telemetry_rollup_device", "telemetry_rollup", ["device", "resolution", "bucket"], unique=False)
    op.create_index("ix_telemetry_received", "telemetry_window", ["received"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_telemetry_received", table_name="telemetry_window")
    op.drop_index("ix_telemetry_rollup_device", table_name="telemetry_rollup")
    op.drop_index("ix_telemetry_rollup_res_bucket", table_name="telemetry_rollup")
    op.drop_table("telemetry_rollup")
