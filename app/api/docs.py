"""Offline API docs: Swagger UI and ReDoc served from the assets of the ``fastapi-offline`` package (no CDN),
and an OpenAPI document that declares bearer authentication (the "Authorize" button) and carries an example
for every request body."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/docs-assets"
BEARER = "bearerAuth"
LOCAL_IMAGES = {"Content-Security-Policy": "img-src 'self' data: blob:"}
"""ReDoc always shows a vendor logo from its CDN; this policy keeps the browser from even asking for it."""
PUBLIC_PATHS = ("/healthz", "/readyz", "/metrics")
"""Operations that need no key (everything else under /v1 takes ``Authorization: Bearer <key>``)."""


def assets_dir() -> Path:
    """The folder holding ``swagger-ui-bundle.js``, ``swagger-ui.css``, ``redoc.standalone.js``."""
    import fastapi_offline

    return Path(fastapi_offline.__file__).parent / "static"


def _form_example(schema: dict[str, Any]) -> dict[str, Any]:
    """An example multipart body from the ``example`` of each property (a placeholder for files)."""
    out: dict[str, Any] = {}
    for name, prop in schema.get("properties", {}).items():
        if prop.get("format") == "binary":
            out[name] = "<file>"
        elif "example" in prop:
            out[name] = prop["example"]
    return out


def _add_examples(doc: dict[str, Any]) -> None:
    """Give every request body content without one an ``example`` (from its schema's examples or properties)."""
    schemas = doc.get("components", {}).get("schemas", {})
    for item in doc.get("paths", {}).values():
        for op in item.values():
            if not isinstance(op, dict):
                continue
            for media in op.get("requestBody", {}).get("content", {}).values():
                if "example" in media or "examples" in media:
                    continue
                schema = media.get("schema", {})
                ref = schema.get("$ref", "")
                if ref:
                    named = schemas.get(ref.rsplit("/", 1)[-1], {})
                    if named.get("examples"):
                        media["example"] = named["examples"][0]
                        continue
                media["example"] = _form_example(schema)


def _add_security(doc: dict[str, Any]) -> None:
    """Declare the bearer scheme, required by every operation but the public probes."""
    doc.setdefault("components", {}).setdefault("securitySchemes", {})[BEARER] = {
        "type": "http", "scheme": "bearer",
        "description": "An API key from `simprune keys create NAME`, sent as `Authorization: Bearer <key>`.",
    }
    for path, item in doc.get("paths", {}).items():
        for op in item.values():
            if isinstance(op, dict):
                op["security"] = [] if path in PUBLIC_PATHS else [{BEARER: []}]


def install_docs(app: FastAPI) -> None:
    """Serve ``/docs`` (Swagger UI), ``/redoc`` and their assets locally; enrich ``/openapi.json``.

    The app must be created with ``docs_url=None, redoc_url=None``.
    """
    app.mount(ASSETS_URL, StaticFiles(directory=assets_dir()), name="docs-assets")
    title = app.title

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            _add_security(doc)
            _add_examples(doc)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json", title=f"{title} API",
            swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js", swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_URL}/favicon.png", oauth2_redirect_url="/docs/oauth2-redirect",
            swagger_ui_parameters={"persistAuthorization": False})

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    async def swagger_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        page = get_redoc_html(openapi_url=app.openapi_url or "/openapi.json", title=f"{title} API (ReDoc)",
                              redoc_js_url=f"{ASSETS_URL}/redoc.standalone.js",
                              redoc_favicon_url=f"{ASSETS_URL}/favicon.png", with_google_fonts=False)
        page.headers.update(LOCAL_IMAGES)
        return page
