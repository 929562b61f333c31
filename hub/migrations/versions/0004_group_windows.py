"""maintenance windows per device group

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 07:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "group_window",
        sa.Column("group", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("spec", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("tz", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("updated", sa.Integer(), nullable=False),
        sa.Column("updated_by", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.PrimaryKeyConstraint("group"),
    )


def downgrade() -> None:
    op.drop_table("group_window")
