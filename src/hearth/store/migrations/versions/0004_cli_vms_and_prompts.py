"""CLI VMs (their user and last use), credential leases, prompts

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("vms") as batch:
        batch.add_column(sa.Column("user_id", sa.String(128)))
        batch.add_column(sa.Column("last_active_at", sa.DateTime(timezone=True)))
        batch.create_index("ix_vms_user_id", ["user_id"])
    with op.batch_alter_table("credentials") as batch:
        batch.add_column(sa.Column("leased_vm_id", sa.String(32)))
        batch.add_column(sa.Column("leased_version", sa.Integer))
        batch.add_column(sa.Column("leased_digest", sa.String(64)))
    op.create_table(
        "prompts",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("vm_id", sa.String(32)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("prompt", sa.Text, nullable=False),
        sa.Column("output", sa.Text, nullable=False),
        sa.Column("exit_code", sa.Integer),
        sa.Column("error", sa.Text),
        sa.Column("first_output_seconds", sa.Float),
        sa.Column("duration_seconds", sa.Float),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
    )
    op.create_index("ix_prompts_user_id", "prompts", ["user_id"])


def downgrade() -> None:
    op.drop_index("ix_prompts_user_id", "prompts")
    op.drop_table("prompts")
    with op.batch_alter_table("credentials") as batch:
        batch.drop_column("leased_digest")
        batch.drop_column("leased_version")
        batch.drop_column("leased_vm_id")
    with op.batch_alter_table("vms") as batch:
        batch.drop_index("ix_vms_user_id")
        batch.drop_column("last_active_at")
        batch.drop_column("user_id")
