"""desired documents kept byte for byte, to republish after a broker restart

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 22:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "desired_doc",
        sa.Column("device", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("expires", sa.Integer(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("device"),
    )


def downgrade() -> None:
    op.drop_table("desired_doc")
