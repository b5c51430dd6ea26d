"""The FastAPI application: ``create_app(settings)``; run with ``simprune serve`` or
``uvicorn --factory app.main:create_app``."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.api.docs import install_docs
from app.api.limits import JsonBodyLimits, JsonLimits
from app.api.observe import ObserveRequests
from app.api.problems import install_problem_handlers
from app.api.ratelimit import make_buckets, make_stream_slots
from app.api.routes import datasets, device_profiles, health, jobs, meta, metrics, models
from app.core.config import Settings, get_settings
from app.storage import get_storage
from app.ui import install_ui

log = logging.getLogger("simprune.api")

DESCRIPTION = """Structured (filter) pruning of CNNs as a service.

Upload a checkpoint (`POST /v1/models`), optionally calibration data (`POST /v1/datasets`), submit a job
(`POST /v1/jobs`), follow it (`GET /v1/jobs/{id}` or the `/events` stream) and download the pruned model
(`GET /v1/jobs/{id}/artifacts/model.pt2`). Authenticate with `Authorization: Bearer <key>`
(`simprune keys create NAME`). Errors are RFC 9457 `application/problem+json`.
"""

NO_AUTH_WARNING = (
    "AUTHENTICATION IS DISABLED: anyone who can reach this server can upload models and run jobs "
    "(all requests use the default tenant). Do not expose it beyond localhost."
)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API for ``settings`` (default: from the environment)."""
    settings = settings or get_settings()
    settings.ensure_dirs()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if not settings.auth_enabled:
            log.warning(NO_AUTH_WARNING)
        yield
        if getattr(_app.state, "inspector", None) is not None:
            _app.state.inspector.close()

    app = FastAPI(
        title="simprune",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served offline by install_docs (/docs, /redoc)
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.settings = settings
    app.state.storage = get_storage(settings)
    app.state.rate_buckets = make_buckets(settings)
    app.state.stream_slots = make_stream_slots(settings)
    app.state.metrics = api_metrics = metrics.ApiMetrics(settings)
    install_problem_handlers(app)
    for r in (models.router, datasets.router, device_profiles.router, jobs.router, meta.router, health.router,
              metrics.router):
        app.include_router(r)
    install_docs(app)
    install_ui(app)
    app.add_middleware(JsonBodyLimits, limits=JsonLimits.from_settings(settings))  # inside ObserveRequests
    app.add_middleware(ObserveRequests, metrics=api_metrics)  # outermost: sees every answer, 413s included

    return app
