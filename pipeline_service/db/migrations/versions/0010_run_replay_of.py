"""runs.replay_of_id: a dead-letter replay run's link to the run whose quarantined rows it
re-reads (`laminar quarantine replay`).

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-24 21:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "replay_of_id",
                sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                nullable=True,
            )
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_runs_replay_of_id_runs"), "runs", ["replay_of_id"], ["id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_runs_replay_of_id_runs"), type_="foreignkey")
        batch_op.drop_column("replay_of_id")
