"""Request metrics as a plain ASGI middleware (no per-request task or body re-wrapping, unlike Starlette's
``BaseHTTPMiddleware``): latency by method, route template and status, and refused uploads."""

from __future__ import annotations

import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

UPLOAD_ROUTES = ("/v1/models", "/v1/datasets")


class ObserveRequests:
    """Observe each HTTP request's duration into ``metrics.requests`` (and count 4xx uploads)."""

    def __init__(self, app: ASGIApp, metrics: Any) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"]
            self.metrics.requests.labels(method, route, str(status)).observe(time.perf_counter() - start)
            if method == "POST" and route in UPLOAD_ROUTES and 400 <= status < 500:
                self.metrics.uploads_rejected.labels(route.rsplit("/", 1)[-1]).inc()
