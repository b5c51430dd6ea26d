"""Fixtures for the service tests: the embedded backend (SQLite + SQLite broker) and the real PostgreSQL +
Redis backend (a fresh database and a private Redis db/queue per session), tiny checkpoints and datasets,
in-process API clients, a live uvicorn server and real worker processes.

PostgreSQL/Redis tests FAIL when the services are unreachable and ``CI=true``; otherwise they are skipped.
"""

from __future__ import annotations

import os
import random
import secrets
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from service_helpers import base_overrides, make_embedded, new_key

from app.core.config import Settings
from app.core.db import dispose_engine, upgrade_database

PG_ADMIN_URL = os.environ.get("SIMPRUNE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_service(name: str, error: Exception | None) -> None:
    """Fail in CI, skip elsewhere, when a service the test needs is unreachable."""
    if error is None:
        return
    msg = f"{name} unreachable: {type(error).__name__}: {error}"
    if IN_CI:
        pytest.fail(f"{msg} (CI=true: the service tests need it)")
    pytest.skip(msg)


# --- data ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def data_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A random-init cifar_resnet20 checkpoint (safetensors and .pt), a small .npz, bad files."""
    import torch

    from simprune.checkpoint import save_state_dict
    from simprune.zoo import build_model

    d = tmp_path_factory.mktemp("files")
    torch.manual_seed(0)
    model = build_model("cifar_resnet20", num_classes=10)
    files = {"ckpt": save_state_dict(model.state_dict(), d / "resnet20.safetensors")}
    torch.save(model.state_dict(), d / "resnet20.pt")
    files["ckpt_pt"] = d / "resnet20.pt"
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, size=(40, 32, 32, 3), dtype=np.uint8)
    y = np.arange(40, dtype=np.int64) % 10
    np.savez(d / "calib.npz", x=x, y=y)
    files["npz"] = d / "calib.npz"
    (d / "junk.pt").write_bytes(b"this is not a checkpoint at all\n" * 10)
    files["junk"] = d / "junk.pt"
    with zipfile.ZipFile(d / "evil.zip", "w") as zf:
        zf.writestr("cats/ok.png", b"\x89PNG fake")
        zf.writestr("../../escape.png", b"\x89PNG fake")
    files["evil_zip"] = d / "evil.zip"
    return files


# --- backends --------------------------------------------------------------------------------------------


@contextmanager
def fresh_pg_database() -> Iterator[str]:
    """A new, empty PostgreSQL database (its SQLAlchemy URL), dropped afterwards."""
    import psycopg

    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except Exception as exc:  # noqa: BLE001
        require_service("PostgreSQL", exc)
        raise
    name = f"simprune_test_{secrets.token_hex(6)}"
    admin.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    try:
        yield url
    finally:
        dispose_engine(url)
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this session (dropped at the end), migrated to head."""
    with fresh_pg_database() as url:
        upgrade_database(url)
        yield url


@pytest.fixture
def empty_pg_url() -> Iterator[str]:
    """A fresh, empty (not migrated) PostgreSQL database for one test."""
    with fresh_pg_database() as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis broker URL on a randomly chosen db number (keys of this run's queues are removed afterwards)."""
    import redis

    db = random.randint(1, 15)
    client = redis.Redis(REDIS_HOST, REDIS_PORT, db=db, socket_connect_timeout=3)
    try:
        client.ping()
    except Exception as exc:  # noqa: BLE001
        require_service("Redis", exc)
        raise
    yield f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"
    for key in client.scan_iter("*prune_test_*"):
        client.delete(key)
    client.close()


@pytest.fixture(params=["embedded", "postgres"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Settings for one backend: the embedded default, or PostgreSQL + Redis."""
    if request.param == "embedded":
        return make_embedded(tmp_path / "data")
    pg = request.getfixturevalue("pg_url")
    rd = request.getfixturevalue("redis_url")
    s = Settings(data_dir=tmp_path / "data", database_url=pg, broker_url=rd, **base_overrides())
    s.ensure_dirs()
    return s


@pytest.fixture
def api(settings: Settings) -> Iterator[Any]:
    """An in-process client of the API for ``settings``, authenticated with a fresh key."""
    from fastapi.testclient import TestClient

    from app.main import create_app

    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        client.headers["Authorization"] = f"Bearer {new_key(settings)}"
        client.settings = settings  # type: ignore[attr-defined]
        yield client


