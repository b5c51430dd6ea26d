"""Workers: the ``workers`` table, a registry each worker process writes (registered at start, heartbeat, removed
at a clean stop). Routing reads it to know whether a GPU worker is alive, with any broker (SQLite or Redis).

Revision ID: 0006_workers
Revises: 0005_job_deletion_retention
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.models import UTCDateTime

revision: str = "0006_workers"
# on 0005 (written at the same time, on 0004): one chain, so `upgrade head` keeps working for everyone
down_revision: str | None = "0005_job_deletion_retention"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("gpu", sa.String(64), nullable=True),
        sa.Column("queues", sa.JSON(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("heartbeat_at", UTCDateTime(), nullable=False),
        sa.Column("jobs_done", sa.Integer(), nullable=False),
        sa.Column("gpu_memory", sa.JSON(), nullable=True),
    )
    op.create_index("ix_workers_heartbeat_at", "workers", ["heartbeat_at"])


def downgrade() -> None:
    op.drop_index("ix_workers_heartbeat_at", table_name="workers")
    op.drop_table("workers")
