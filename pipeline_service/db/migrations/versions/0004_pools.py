"""Pools and their leases.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24 17:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "pools",
        sa.Column("id", BigId, nullable=False),
        sa.Column("tenant_id", BigId, nullable=True),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("slots", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=120), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_pools_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pools")),
        sa.UniqueConstraint("tenant_id", "name", name=op.f("uq_pools_tenant_id_name")),
    )
    op.create_table(
        "pool_leases",
        sa.Column("id", BigId, nullable=False),
        sa.Column("pool_id", BigId, nullable=False),
        sa.Column("holder", sa.String(length=500), nullable=False),
        sa.Column("workflow_id", sa.String(length=400), nullable=False),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["pool_id"],
            ["pools.id"],
            name=op.f("fk_pool_leases_pool_id_pools"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pool_leases")),
        sa.UniqueConstraint("holder", name=op.f("uq_pool_leases_holder")),
    )
    with op.batch_alter_table("pool_leases", schema=None) as batch_op:
        batch_op.create_index("ix_pool_leases_pool", ["pool_id"], unique=False)


def downgrade() -> None:
    op.drop_table("pool_leases")
    op.drop_table("pools")
