"""Fixtures for the reliability and security tests: the service tests' backends (real PostgreSQL and Redis,
fresh database per session) and data files, plus helpers that start REAL processes exactly as the deployment
runs them (``simprune worker``, ``simprune serve --no-worker``), a private ``redis-server`` and an
S3-compatible server (moto's standalone server)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SERVICE = Path(__file__).resolve().parents[1] / "service"
sys.path.insert(0, str(SERVICE))

_spec = importlib.util.spec_from_file_location("simprune_service_conftest", SERVICE / "conftest.py")
assert _spec is not None and _spec.loader is not None
_service = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_service)

pg_url = _service.pg_url
redis_url = _service.redis_url
data_files = _service.data_files
require_service = _service.require_service
