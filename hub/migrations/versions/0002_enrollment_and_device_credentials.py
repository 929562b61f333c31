"""enrollment and device credentials

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 12:28:50.083399
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("device", schema=None) as batch_op:
        batch_op.add_column(sa.Column("mqtt_password_hash", sqlmodel.sql.sqltypes.AutoString(), nullable=True))

    with op.batch_alter_table("enroll_token", schema=None) as batch_op:
        batch_op.add_column(sa.Column("group", sqlmodel.sql.sqltypes.AutoString(), nullable=False, server_default=""))
        batch_op.add_column(sa.Column("tags", sa.JSON(), nullable=False, server_default="[]"))
        batch_op.add_column(
            sa.Column("created_by", sqlmodel.sql.sqltypes.AutoString(), nullable=False, server_default="")
        )


def downgrade() -> None:
    with op.batch_alter_table("enroll_token", schema=None) as batch_op:
        batch_op.drop_column("created_by")
        batch_op.drop_column("tags")
        batch_op.drop_column("group")

    with op.batch_alter_table("device", schema=None) as batch_op:
        batch_op.drop_column("mqtt_password_hash")
