"""step_runs.tables: the warehouse tables a step attempt loaded.

A retry that reuses the step hands them (python `outputs:`) to the steps that run again.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24 17:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("step_runs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("tables", sa.JSON(), nullable=False, server_default=sa.text("'{}'"))
        )


def downgrade() -> None:
    with op.batch_alter_table("step_runs", schema=None) as batch_op:
        batch_op.drop_column("tables")
