"""The egress audit: one row per attempt of a VM to reach a name

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "egress_connections",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("vm_id", sa.String(32)),
        sa.Column("user_id", sa.String(128)),
        sa.Column("provider", sa.String(32)),
        sa.Column("source", sa.String(45), nullable=False),
        sa.Column("protocol", sa.String(8), nullable=False),
        sa.Column("name", sa.String(253)),
        sa.Column("port", sa.Integer, nullable=False),
        sa.Column("verdict", sa.String(8), nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("upstream", sa.String(300)),
        sa.Column("address", sa.String(45)),
        sa.Column("bytes_up", sa.BigInteger, nullable=False),
        sa.Column("bytes_down", sa.BigInteger, nullable=False),
        sa.Column("duration_seconds", sa.Float),
        sa.Column("key", sa.String(32), nullable=False, unique=True),
    )
    for column in ("started_at", "vm_id", "user_id"):
        op.create_index(f"ix_egress_connections_{column}", "egress_connections", [column])


def downgrade() -> None:
    for column in ("started_at", "vm_id", "user_id"):
        op.drop_index(f"ix_egress_connections_{column}", "egress_connections")
    op.drop_table("egress_connections")
