"""Liveness (/healthz) and readiness (/readyz: the database and the broker answer)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app.api.deps import SettingsDep
from app.api.problems import problem_response
from app.core.celery import check_broker
from app.core.config import Settings
from app.core.db import get_engine

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


def _check_db(settings: Settings) -> None:
    with get_engine(settings.database_url).connect() as conn:
        conn.execute(text("SELECT 1"))


@router.get("/readyz", summary="Readiness", responses={503: {"description": "database or broker down"}})
async def readyz(request: Request, settings: SettingsDep) -> Any:
    """200 when the database and the broker answer, else 503 naming what failed."""
    checks: dict[str, str] = {}
    for name, fn in (("database", _check_db), ("broker", check_broker)):
        try:
            await run_in_threadpool(fn, settings)
            checks[name] = "ok"
        except Exception as exc:  # report, never raise: this is a probe
            checks[name] = f"error: {type(exc).__name__}: {exc}"[:300]
    if all(v == "ok" for v in checks.values()):
        return JSONResponse({"status": "ok", "checks": checks})
    failed = ", ".join(k for k, v in checks.items() if v != "ok")
    return problem_response(request, 503, f"not ready: {failed} unavailable", "not-ready", checks=checks)
