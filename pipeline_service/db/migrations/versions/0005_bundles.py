"""Code bundles: bundles; pipeline_versions.bundle_digest.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24 18:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "bundles",
        sa.Column("id", BigId, nullable=False),
        sa.Column("tenant_id", BigId, nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("files", sa.JSON(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_bundles_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bundles")),
        sa.UniqueConstraint("tenant_id", "digest", name=op.f("uq_bundles_tenant_id_digest")),
    )
    with op.batch_alter_table("pipeline_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("bundle_digest", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("pipeline_versions", schema=None) as batch_op:
        batch_op.drop_column("bundle_digest")
    op.drop_table("bundles")
