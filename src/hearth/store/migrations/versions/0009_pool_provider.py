"""Warm pool VMs prepared for one provider: its login started, its sign-in page shown

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("vms") as batch:
        batch.add_column(sa.Column("pool_provider", sa.String(32)))


def downgrade() -> None:
    with op.batch_alter_table("vms") as batch:
        batch.drop_column("pool_provider")
