"""Tenant quotas and the run queue: tenant_quotas; runs.priority, submitted_at, launch_options.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 17:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "tenant_quotas",
        sa.Column("tenant_id", BigId, nullable=False),
        sa.Column("max_concurrent_runs", sa.Integer(), nullable=True),
        sa.Column("max_queued_runs", sa.Integer(), nullable=True),
        sa.Column("overflow_policy", sa.String(length=16), nullable=False),
        sa.Column("allowed_step_types", sa.JSON(), nullable=True),
        sa.Column("max_steps_per_pipeline", sa.Integer(), nullable=True),
        sa.Column("retry_after_seconds", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=120), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_tenant_quotas_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_tenant_quotas")),
    )
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("priority", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("submitted_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("launch_options", sa.JSON(), nullable=True))
        batch_op.create_index("ix_runs_tenant_status", ["tenant_id", "status"], unique=False)
    # Runs recorded before the queue existed were all started at once.
    op.execute("UPDATE runs SET submitted_at = created_at")


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index("ix_runs_tenant_status")
        batch_op.drop_column("launch_options")
        batch_op.drop_column("submitted_at")
        batch_op.drop_column("priority")
    op.drop_table("tenant_quotas")
