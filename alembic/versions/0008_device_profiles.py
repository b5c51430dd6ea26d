"""Device profiles: the ``device_profiles`` table (uploaded latency profiles, one file each in storage, per
tenant) and ``jobs.device_profile_id`` (the profile of a latency-targeted job, a foreign key like the dataset
ids: set to NULL when the profile is deleted after the job ended).

Revision ID: 0008_device_profiles
Revises: 0007_model_dry_run
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.models import UTCDateTime

revision: str = "0008_device_profiles"
down_revision: str | None = "0007_model_dry_run"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FK_JOBS = "fk_jobs_device_profile_id_device_profiles"


def upgrade() -> None:
    op.create_table(
        "device_profiles",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("tenant_id", sa.String(64), sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("arch", sa.String(200), nullable=False),
        sa.Column("input_size", sa.JSON(), nullable=False),
        sa.Column("batch_size", sa.Integer(), nullable=False),
        sa.Column("device_type", sa.String(8), nullable=False),
        sa.Column("device_name", sa.String(200), nullable=False),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("storage_key", sa.String(500), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_device_profiles_tenant_created", "device_profiles", ["tenant_id", "created_at", "id"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("device_profile_id", sa.String(64), nullable=True))
        batch.create_foreign_key(FK_JOBS, "device_profiles", ["device_profile_id"], ["id"], ondelete="SET NULL")


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint(FK_JOBS, type_="foreignkey")
        batch.drop_column("device_profile_id")
    op.drop_index("ix_device_profiles_tenant_created", table_name="device_profiles")
    op.drop_table("device_profiles")
