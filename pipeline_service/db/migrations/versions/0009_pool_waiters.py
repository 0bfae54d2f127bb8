"""pool_waiters: step attempts waiting for a pool slot, in arrival order.

A full pool grants freed slots to the longest-waiting attempt first, and the API shows a
waiting step's pool, its wait and its place in the line.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-24 20:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "pool_waiters",
        sa.Column("id", BigId, nullable=False),
        sa.Column("pool_id", BigId, nullable=False),
        sa.Column("holder", sa.String(length=500), nullable=False),
        sa.Column("workflow_id", sa.String(length=400), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["pool_id"],
            ["pools.id"],
            name=op.f("fk_pool_waiters_pool_id_pools"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pool_waiters")),
        sa.UniqueConstraint("holder", name=op.f("uq_pool_waiters_holder")),
    )
    with op.batch_alter_table("pool_waiters", schema=None) as batch_op:
        batch_op.create_index("ix_pool_waiters_pool", ["pool_id"], unique=False)
        batch_op.create_index("ix_pool_waiters_workflow", ["workflow_id"], unique=False)


def downgrade() -> None:
    op.drop_table("pool_waiters")
