"""model channels (protocol.channels): the channel a rollout targets and a device's other channels

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 11:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("rollout") as b:
        b.add_column(
            sa.Column("channel", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False, server_default="default")
        )
    with op.batch_alter_table("device") as b:
        b.add_column(sa.Column("channels", sa.JSON(), nullable=False, server_default="{}"))


def downgrade() -> None:
    with op.batch_alter_table("device") as b:
        b.drop_column("channels")
    with op.batch_alter_table("rollout") as b:
        b.drop_column("channel")
