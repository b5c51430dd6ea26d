"""RFC 9457 problem details: every error the API returns is ``application/problem+json``."""

from __future__ import annotations

import logging
import re
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from simprune.errors import InputError, UnsafeInputError

log = logging.getLogger("simprune.api")

PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "https://simprune.dev/problems/"


class Problem(HTTPException):
    """An HTTP error with an RFC 9457 ``type`` slug and optional extension members."""

    def __init__(
        self,
        status: int,
        detail: str,
        type_: str | None = None,
        title: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(status_code=status, detail=detail, headers=headers)
        self.type_ = type_
        self.title = title
        self.extra = extra


MAX_DETAIL_CHARS = 1000
"""Problem details are cut to this length: a client's oversized input is never echoed back whole."""
MAX_ERRORS = 20


def clean_text(request: Request, text: str, limit: int) -> str:
    """``text`` without the server's file paths (anything under DATA_DIR, e.g. an upload's temp file, becomes
    ``<server file>``), cut to ``limit`` characters."""
    settings = getattr(request.app.state, "settings", None) if "app" in request.scope else None
    if settings is not None:
        root = str(settings.data_dir)
        if root in text:
            text = re.sub(re.escape(root) + r"[^\s'\",;:)]*", "<server file>", text)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text) - limit} more characters)"


def _clean_error(request: Request, error: Any) -> Any:
    if not isinstance(error, dict):
        return error
    out = dict(error)
    if isinstance(out.get("msg"), str):
        out["msg"] = clean_text(request, out["msg"], 300)
    if isinstance(out.get("loc"), list):
        out["loc"] = [x[:100] if isinstance(x, str) else x for x in out["loc"][:16]]
    out.pop("input", None)
    return out


def problem_response(
    request: Request,
    status: int,
    detail: Any,
    type_: str | None = None,
    title: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """A problem+json response for ``request``."""
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + type_ if type_ else "about:blank",
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": clean_text(request, detail if isinstance(detail, str) else str(detail), MAX_DETAIL_CHARS),
        "instance": request.url.path[:MAX_DETAIL_CHARS],
    }
    extra = jsonable_encoder(extra)
    if isinstance(extra.get("errors"), list):
        extra["errors"] = [_clean_error(request, e) for e in extra["errors"][:MAX_ERRORS]]
    body.update(extra)
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def install_problem_handlers(app: FastAPI) -> None:
    """Map HTTP errors, validation errors, engine input errors and anything unexpected to problem+json."""

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc, Problem):
            return problem_response(request, exc.status_code, exc.detail, exc.type_, exc.title, exc.headers,
                                    **exc.extra)
        return problem_response(request, exc.status_code, exc.detail, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors) or "invalid request"
        return problem_response(request, 422, detail, "validation-error", "Invalid request", errors=errors)

    @app.exception_handler(UnsafeInputError)
    async def _unsafe(request: Request, exc: UnsafeInputError) -> JSONResponse:
        return problem_response(request, 422, str(exc), "unsafe-input", "Input refused as unsafe")

    @app.exception_handler(InputError)
    async def _input(request: Request, exc: InputError) -> JSONResponse:
        return problem_response(request, 422, str(exc), "invalid-input", "Invalid input")

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: ClientDisconnect) -> JSONResponse:
        log.info("client disconnected during %s %s", request.method, request.url.path)
        return problem_response(request, 400, "the client disconnected before the request was complete")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(request, 500, "internal server error (see the server log)")
