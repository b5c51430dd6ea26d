"""Jobs: drop ``method`` (it duplicates ``spec["method"]``), add ``train_dataset_id`` (the fine-tuning dataset,
a foreign key like ``calibration_dataset_id``), backfilled as the worker chose it before: for a job with a
``finetune`` section, ``spec["finetune"]["dataset_id"]``, else its calibration dataset.

The data migrations run in Python over the rows (in batches), so they are the same on SQLite and PostgreSQL; a
dataset id that no longer exists is left out (the column is a foreign key). The downgrade restores ``method``
from ``spec["method"]`` and puts ``train_dataset_id`` back into ``spec["finetune"]["dataset_id"]``.

Revision ID: 0004_job_train_dataset
Revises: 0003_job_progress_detail
Create Date: 2026-11-26
"""

from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0004_job_train_dataset"
down_revision: str | None = "0003_job_progress_detail"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH = 500

jobs = sa.table(
    "jobs",
    sa.column("id", sa.String(64)),
    sa.column("spec", sa.JSON()),
    sa.column("calibration_dataset_id", sa.String(64)),
    sa.column("method", sa.String(64)),
    sa.column("train_dataset_id", sa.String(64)),
)
datasets = sa.table("datasets", sa.column("id", sa.String(64)))


def _rows(bind: sa.Connection, *columns: str) -> Iterator[list[sa.Row[Any]]]:
    """``id`` and ``columns`` of every job, in batches of ``BATCH`` (keyset pagination on the primary key)."""
    last = ""
    while True:
        rows = bind.execute(
            sa.select(jobs.c.id, *(jobs.c[c] for c in columns)).where(jobs.c.id > last).order_by(jobs.c.id)
            .limit(BATCH)
        ).all()
        if not rows:
            return
        last = rows[-1].id
        yield list(rows)


def _train_dataset_id(spec: Any, calibration_dataset_id: str | None) -> str | None:
    """The dataset a job fine-tunes on, as the worker chose it before this revision."""
    finetune = spec.get("finetune") if isinstance(spec, dict) else None
    if not isinstance(finetune, dict) or not finetune:
        return None
    dataset_id = finetune.get("dataset_id")
    return dataset_id if isinstance(dataset_id, str) and dataset_id else calibration_dataset_id


def _method(spec: Any) -> str:
    method = spec.get("method") if isinstance(spec, dict) else None
    return str(method)[:64] if method else "unknown"


def _update(bind: sa.Connection, column: str, values: dict[str, Any]) -> None:
    if values:
        stmt = jobs.update().where(jobs.c.id == sa.bindparam("job_id")).values({column: sa.bindparam("value")})
        bind.execute(stmt, [{"job_id": k, "value": v} for k, v in values.items()])


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("train_dataset_id", sa.String(64), nullable=True))
        batch.create_foreign_key("fk_jobs_train_dataset_id_datasets", "datasets", ["train_dataset_id"], ["id"],
                                 ondelete="SET NULL")
        batch.drop_column("method")
    bind = op.get_bind()
    for rows in _rows(bind, "spec", "calibration_dataset_id"):
        wanted = {r.id: ds for r in rows if (ds := _train_dataset_id(r.spec, r.calibration_dataset_id))}
        if not wanted:
            continue
        existing = set(bind.execute(sa.select(datasets.c.id).where(datasets.c.id.in_(set(wanted.values())))).scalars())
        _update(bind, "train_dataset_id", {job_id: ds for job_id, ds in wanted.items() if ds in existing})


def _with_train_dataset(spec: Any, train_dataset_id: str | None) -> dict[str, Any] | None:
    """``spec`` with ``finetune.dataset_id`` set to ``train_dataset_id`` (None: no change needed)."""
    if not train_dataset_id or not isinstance(spec, dict) or not isinstance(spec.get("finetune"), dict):
        return None
    if spec["finetune"].get("dataset_id") == train_dataset_id:
        return None
    return {**spec, "finetune": {**spec["finetune"], "dataset_id": train_dataset_id}}


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("method", sa.String(64), nullable=True))
    bind = op.get_bind()
    for rows in _rows(bind, "spec", "train_dataset_id"):
        _update(bind, "method", {r.id: _method(r.spec) for r in rows})
        specs = {r.id: new for r in rows if (new := _with_train_dataset(r.spec, r.train_dataset_id)) is not None}
        _update(bind, "spec", specs)
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("method", existing_type=sa.String(64), nullable=False)
        batch.drop_constraint("fk_jobs_train_dataset_id_datasets", type_="foreignkey")
        batch.drop_column("train_dataset_id")
