"""Warm pool VMs: the pool marker, and the image build each VM booted from

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("vms") as batch:
        batch.add_column(sa.Column("image_build", sa.String(64)))
        batch.add_column(sa.Column("pool", sa.String(16)))
        batch.create_index("ix_vms_pool", ["pool"])


def downgrade() -> None:
    with op.batch_alter_table("vms") as batch:
        batch.drop_index("ix_vms_pool")
        batch.drop_column("pool")
        batch.drop_column("image_build")
