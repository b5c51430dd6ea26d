"""Jobs: ``deleted_at`` (DELETE /v1/jobs/{id} keeps the row as an audit record), ``artifacts_expired_at`` (the
retention sweep removed the artifacts, SIMPRUNE_ARTIFACT_TTL_DAYS) and an index on ``finished_at`` for that
sweep.

Revision ID: 0005_job_deletion_retention
Revises: 0004_job_train_dataset
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.models import UTCDateTime

revision: str = "0005_job_deletion_retention"
down_revision: str | None = "0004_job_train_dataset"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("deleted_at", UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("artifacts_expired_at", UTCDateTime(), nullable=True))
        batch.create_index("ix_jobs_finished_at", ["finished_at"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_finished_at")
        batch.drop_column("artifacts_expired_at")
        batch.drop_column("deleted_at")
