"""The Alembic migrations build exactly the schema the ORM models declare, on SQLite and PostgreSQL; the scripts
live in the repository's top-level ``alembic/`` folder (no ``__init__.py``: it must not shadow the library);
0004's data migration (``jobs.method`` dropped, ``jobs.train_dataset_id`` backfilled) and its downgrade;
0005 (job deletion and retention columns) and 0008 (device profiles) up and down."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from app.core.db import alembic_config, migrations_dir, upgrade_database
from app.models import Base

REPO = Path(__file__).resolve().parents[2]
BEFORE_0004 = "0003_job_progress_detail"


def _diff(url: str) -> list:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            return compare_metadata(ctx, Base.metadata)
    finally:
        engine.dispose()


def test_sqlite_migrations_match_models(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade_database(url)
    assert _diff(url) == []


def test_postgres_migrations_match_models(pg_url: str) -> None:
    assert _diff(pg_url) == []


def test_the_scripts_are_the_top_level_alembic_folder() -> None:
    scripts = REPO / "alembic"
    assert migrations_dir() == scripts  # source checkout / editable install; a wheel has them in app/migrations
    assert not (scripts / "__init__.py").exists() and not (scripts / "versions" / "__init__.py").exists()
    names = sorted(p.name for p in (scripts / "versions").glob("0*.py"))
    assert names[:4] == ["0001_initial.py", "0002_job_reliability.py", "0003_job_progress_detail.py",
                         "0004_job_train_dataset.py"]
    # run from the repository root, `import alembic` is still the library
    out = subprocess.run([sys.executable, "-c", "import alembic; print(alembic.__file__)"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    assert "site-packages" in out or "dist-packages" in out, out


NOW = "2026-01-01 00:00:00"
SPECS_BEFORE_0004 = {  # job id -> (spec, calibration dataset)
    "job_a": ({"method": "dcff", "finetune": {"epochs": 1, "dataset_id": "ds_train"}}, "ds_calib"),
    "job_b": ({"method": "l1", "finetune": {"epochs": 1, "dataset_id": "ds_deleted"}}, None),
    "job_c": ({"method": "l2", "finetune": {"epochs": 2}}, "ds_calib"),  # trained on the calibration data
    "job_d": ({"method": "fpgm", "finetune": None}, "ds_calib"),
    "job_e": ({"method": "random"}, None),
}


def _execute(url: str, sql: str, rows: list[dict[str, object]]) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        for row in rows:
            conn.execute(sa.text(sql), row)
    engine.dispose()


def _seed_before_0004(url: str) -> None:
    """Jobs as the schema before 0004 stored them: with ``method``, the fine-tuning dataset only in the spec."""
    _execute(url, "INSERT INTO tenants (id, name, created_at) VALUES ('t1', 't', :now)", [{"now": NOW}])
    _execute(url, "INSERT INTO datasets (id, tenant_id, format, samples, classes, filename, sha256, size, "
                  "storage_key, created_at) VALUES (:id, 't1', 'npz', 10, 2, 'a.npz', 'x', 1, 'k', :now)",
             [{"id": "ds_train", "now": NOW}, {"id": "ds_calib", "now": NOW}])
    _execute(url, "INSERT INTO jobs (id, tenant_id, method, spec, calibration_dataset_id, status, progress, "
                  "cancel_requested, attempts, created_at) VALUES (:id, 't1', :method, :spec, :calib, 'queued', 0, "
                  "false, 0, :now)",
             [{"id": job_id, "method": spec["method"], "spec": json.dumps(spec), "calib": calib, "now": NOW}
              for job_id, (spec, calib) in SPECS_BEFORE_0004.items()])


def _jobs(url: str) -> dict[str, dict[str, object]]:
    engine = create_engine(url)
    with engine.connect() as conn:
        cols = {c["name"] for c in sa.inspect(conn).get_columns("jobs")}
        wanted = [c for c in ("method", "train_dataset_id") if c in cols]
        table = sa.table("jobs", sa.column("id"), sa.column("spec", sa.JSON()), *map(sa.column, wanted))
        rows = conn.execute(sa.select(table).order_by(table.c.id)).mappings().all()
    engine.dispose()
    return {r["id"]: {k: v for k, v in r.items() if k != "id"} for r in rows}


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_0004_backfills_train_dataset_and_downgrades(backend: str, tmp_path: Path,
                                                      request: pytest.FixtureRequest) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}" if backend == "sqlite" else request.getfixturevalue("empty_pg_url")
    upgrade_database(url, BEFORE_0004)
    _seed_before_0004(url)

    upgrade_database(url)
    assert _diff(url) == []
    jobs = _jobs(url)
    assert {job_id: j["train_dataset_id"] for job_id, j in jobs.items()} == {
        "job_a": "ds_train",
        "job_b": None,  # the dataset is gone: the foreign key stays empty
        "job_c": "ds_calib",  # no finetune.dataset_id: the worker trained on the calibration data
        "job_d": None,
        "job_e": None,
    }
    assert all(j["spec"] == SPECS_BEFORE_0004[job_id][0] for job_id, j in jobs.items())  # specs untouched
    # a job stored the new way: the training dataset only in the column
    new_spec = {"method": "ssc", "finetune": {"epochs": 1}}
    _execute(url, "INSERT INTO jobs (id, tenant_id, spec, train_dataset_id, status, progress, cancel_requested, "
                  "attempts, created_at) VALUES ('job_f', 't1', :spec, 'ds_train', 'queued', 0, false, 0, :now)",
             [{"spec": json.dumps(new_spec), "now": NOW}])

    command.downgrade(alembic_config(url), BEFORE_0004)
    jobs = _jobs(url)
    assert {job_id: j["method"] for job_id, j in jobs.items()} == {
        "job_a": "dcff", "job_b": "l1", "job_c": "l2", "job_d": "fpgm", "job_e": "random", "job_f": "ssc"}
    assert jobs["job_f"]["spec"] == {"method": "ssc", "finetune": {"epochs": 1, "dataset_id": "ds_train"}}
    assert jobs["job_a"]["spec"] == SPECS_BEFORE_0004["job_a"][0]
    assert jobs["job_c"]["spec"]["finetune"] == {"epochs": 2, "dataset_id": "ds_calib"}  # same choice as before

    upgrade_database(url)  # and up again
    assert _jobs(url)["job_f"]["train_dataset_id"] == "ds_train"


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_0005_adds_deletion_and_retention_columns(backend: str, tmp_path: Path,
                                                  request: pytest.FixtureRequest) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}" if backend == "sqlite" else request.getfixturevalue("empty_pg_url")
    upgrade_database(url, "0004_job_train_dataset")
    _execute(url, "INSERT INTO tenants (id, name, created_at) VALUES ('t1', 't', :now)", [{"now": NOW}])
    _execute(url, "INSERT INTO jobs (id, tenant_id, spec, status, progress, cancel_requested, attempts, created_at) "
                  "VALUES ('job_a', 't1', :spec, 'succeeded', 1, false, 1, :now)",
             [{"spec": json.dumps({"method": "l1"}), "now": NOW}])
    upgrade_database(url)
    assert _diff(url) == []
    engine = create_engine(url)
    with engine.connect() as conn:
        cols = {c["name"] for c in sa.inspect(conn).get_columns("jobs")}
        row = conn.execute(sa.text("SELECT deleted_at, artifacts_expired_at, status FROM jobs")).one()
        indexes = {i["name"] for i in sa.inspect(conn).get_indexes("jobs")}
    engine.dispose()
    assert {"deleted_at", "artifacts_expired_at"} <= cols and tuple(row) == (None, None, "succeeded")
    assert "ix_jobs_finished_at" in indexes
    command.downgrade(alembic_config(url), "0004_job_train_dataset")
    engine = create_engine(url)
    with engine.connect() as conn:
        cols = {c["name"] for c in sa.inspect(conn).get_columns("jobs")}
        assert conn.execute(sa.text("SELECT count(*) FROM jobs")).scalar() == 1
    engine.dispose()
    assert not {"deleted_at", "artifacts_expired_at"} & cols


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_0008_adds_device_profiles_and_downgrades(backend: str, tmp_path: Path,
                                                  request: pytest.FixtureRequest) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}" if backend == "sqlite" else request.getfixturevalue("empty_pg_url")
    upgrade_database(url, "0007_model_dry_run")
    _execute(url, "INSERT INTO tenants (id, name, created_at) VALUES ('t1', 't', :now)", [{"now": NOW}])
    _execute(url, "INSERT INTO jobs (id, tenant_id, spec, status, progress, cancel_requested, attempts, created_at) "
                  "VALUES ('job_a', 't1', :spec, 'succeeded', 1, false, 1, :now)",
             [{"spec": json.dumps({"method": "l1"}), "now": NOW}])
    upgrade_database(url)
    assert _diff(url) == []
    _execute(url, "INSERT INTO device_profiles (id, tenant_id, name, arch, input_size, batch_size, device_type, "
                  "device_name, filename, sha256, size, storage_key, created_at) VALUES ('prf_a', 't1', 'p', "
                  "'cifar_resnet20', '[3, 32, 32]', 1, 'cpu', 'x', 'p.json', 'h', 10, 'k', :now)", [{"now": NOW}])
    _execute(url, "UPDATE jobs SET device_profile_id = 'prf_a'", [{}])
    engine = create_engine(url)
    with engine.begin() as conn:  # an ended job keeps its row when its profile is deleted, without the profile
        if backend == "sqlite":
            conn.exec_driver_sql("PRAGMA foreign_keys=ON")  # as the service's engine does
        conn.execute(sa.text("DELETE FROM device_profiles"))
        assert conn.execute(sa.text("SELECT device_profile_id FROM jobs")).one() == (None,)
    engine.dispose()
    command.downgrade(alembic_config(url), "0007_model_dry_run")
    engine = create_engine(url)
    with engine.connect() as conn:
        cols = {c["name"] for c in sa.inspect(conn).get_columns("jobs")}
        tables = set(sa.inspect(conn).get_table_names())
        assert conn.execute(sa.text("SELECT count(*) FROM jobs")).scalar() == 1
    engine.dispose()
    assert "device_profile_id" not in cols and "device_profiles" not in tables
    upgrade_database(url)  # and up again
    assert _diff(url) == []
