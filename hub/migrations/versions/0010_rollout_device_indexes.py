"""rollout_device indexes for a large fleet: by device (the device list's rollout state, a
device's rollouts: a scan of every rollout's rows without it) and by rollout and state (a
rollout's counts and its waiting devices from the index alone)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 11:55:00
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_rollout_device_device", "rollout_device", ["device_id"])
    op.create_index("ix_rollout_device_rollout_state", "rollout_device", ["rollout_id", "state"])


def downgrade() -> None:
    op.drop_index("ix_rollout_device_rollout_state", table_name="rollout_device")
    op.drop_index("ix_rollout_device_device", table_name="rollout_device")
