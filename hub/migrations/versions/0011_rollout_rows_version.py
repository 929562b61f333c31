"""rollout.rows_version: bumped with every write to a rollout's rollout_device rows, so a hub can
keep the rows between runs and read them again only when another writer (a replica) moved them

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05 22:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("rollout") as b:
        b.add_column(sa.Column("rows_version", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("rollout") as b:
        b.drop_column("rows_version")
