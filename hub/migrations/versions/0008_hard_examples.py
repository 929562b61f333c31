"""hard examples: low-confidence inputs devices uploaded, per model version (hub.hardexamples)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 11:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "hard_example",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("sample_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("bundle", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("model", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("version", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("ts", sa.Integer(), nullable=False),
        sa.Column("received", sa.Integer(), nullable=False),
        sa.Column("content_type", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("sha256", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("path", sqlmodel.sql.sqltypes.AutoString(length=512), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=True),
        sa.Column("measure", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("answer", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("device", "sample_id", name="uq_hard_example_device_sample"),
    )
    op.create_index("ix_hard_example_model_version", "hard_example", ["model", "version", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_hard_example_model_version", table_name="hard_example")
    op.drop_table("hard_example")
