"""rollout stages (hub.stages): the stage a rollout device runs and each stage's verdict and figures

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 11:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("rollout_device") as b:
        b.add_column(sa.Column("stage", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False, server_default=""))
        b.add_column(sa.Column("stages", sa.JSON(), nullable=False, server_default="{}"))


def downgrade() -> None:
    with op.batch_alter_table("rollout_device") as b:
        b.drop_column("stages")
        b.drop_column("stage")
