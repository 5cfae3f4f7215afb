"""Credentials the provider refused: why and when, until the next version replaces them

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("credentials") as batch:
        batch.add_column(sa.Column("invalid_reason", sa.Text))
        batch.add_column(sa.Column("invalid_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    with op.batch_alter_table("credentials") as batch:
        batch.drop_column("invalid_at")
        batch.drop_column("invalid_reason")
