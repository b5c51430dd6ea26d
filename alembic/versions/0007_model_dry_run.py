"""Models: ``dry_run`` (JSON, nullable), what pruning an uploaded ONNX model would do (prunable groups, groups
kept whole and why, operators, conversion fidelity). Checkpoint uploads leave it empty.

Revision ID: 0007_model_dry_run
Revises: 0006_workers
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_model_dry_run"
down_revision: str | None = "0006_workers"  # the current tip, so that `upgrade head` keeps one head
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.add_column(sa.Column("dry_run", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.drop_column("dry_run")
