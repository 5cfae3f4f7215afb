"""VMs and IP leases

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "vms",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("image", sa.String(64), nullable=False),
        sa.Column("vmm", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("tap", sa.String(15), nullable=False, unique=True),
        sa.Column("mac", sa.String(17)),
        sa.Column("ip", sa.String(15)),
        sa.Column("netns", sa.String(64), nullable=False),
        sa.Column("pid", sa.Integer),
        sa.Column("owner_pid", sa.Integer),
        sa.Column("boot_started", sa.Float),
        sa.Column("agent_token", sa.String(128), nullable=False),
        sa.Column("boot_seconds", sa.Float),
        sa.Column("failed_step", sa.String(64)),
        sa.Column("error", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_vms_state", "vms", ["state"])
    op.create_table(
        "ip_leases",
        sa.Column("ip", sa.String(15), primary_key=True),
        sa.Column("vm_id", sa.String(32), sa.ForeignKey("vms.id"), nullable=False, unique=True),
        sa.Column("leased_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("ip_leases")
    op.drop_index("ix_vms_state", "vms")
    op.drop_table("vms")
