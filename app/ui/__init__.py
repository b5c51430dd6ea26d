"""The web dashboard at ``/ui``: server-rendered pages (Jinja2) whose data comes from the public API through a
little vanilla JavaScript (``static/app.js``), authenticated with the API key kept in the browser's
sessionStorage (sent as ``Authorization: Bearer``, never in a URL)."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from app.ui.routes import STATIC_DIR, router


def install_ui(app: FastAPI) -> None:
    """Mount the dashboard pages and their static files (no CDN: everything is served from here)."""
    app.mount("/ui/static", StaticFiles(directory=STATIC_DIR), name="ui-static")
    app.include_router(router)
