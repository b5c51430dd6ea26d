"""Dashboard pages. Each route renders a page shell; ``static/app.js`` fills it from the API with the key the
user signed in with. The pages themselves hold no tenant data, so they need no key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
templates = Jinja2Templates(directory=HERE / "templates")
router = APIRouter(prefix="/ui", include_in_schema=False)

NAV = (("jobs", "Jobs", "/ui/jobs"), ("models", "Models", "/ui/models"), ("datasets", "Datasets", "/ui/datasets"),
       ("new", "New job", "/ui/jobs/new"), ("docs", "API docs", "/docs"))


def _render(request: Request, template: str, page: str, title: str, **ctx: Any) -> HTMLResponse:
    settings = request.app.state.settings
    return templates.TemplateResponse(request, template, {
        "page": page, "title": title, "nav": NAV, "auth_enabled": settings.auth_enabled, **ctx})


@router.get("", response_class=HTMLResponse)
@router.get("/", response_class=HTMLResponse)
def home() -> RedirectResponse:
    """The jobs list (app.js sends a visitor without a key to the sign-in page)."""
    return RedirectResponse("/ui/jobs", status_code=307)


@router.get("/login", response_class=HTMLResponse)
def login(request: Request) -> HTMLResponse:
    """Sign in with an API key (kept in sessionStorage)."""
    return _render(request, "login.html", "login", "Sign in")


@router.get("/models", response_class=HTMLResponse)
def models(request: Request) -> HTMLResponse:
    """Uploaded checkpoints, and the upload form."""
    return _render(request, "models.html", "models", "Models")


@router.get("/datasets", response_class=HTMLResponse)
def datasets(request: Request) -> HTMLResponse:
    """Uploaded datasets, and the upload form."""
    return _render(request, "datasets.html", "datasets", "Datasets")


@router.get("/jobs", response_class=HTMLResponse)
def jobs(request: Request) -> HTMLResponse:
    """Jobs, newest first, filtered by status."""
    return _render(request, "jobs.html", "jobs", "Jobs")


@router.get("/jobs/new", response_class=HTMLResponse)
def new_job(request: Request) -> HTMLResponse:
    """The job form, generated from GET /v1/methods and GET /v1/architectures."""
    return _render(request, "new_job.html", "new", "New job")


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job(request: Request, job_id: str) -> HTMLResponse:
    """One job: live progress, then its report, plots and downloads."""
    return _render(request, "job.html", "job", f"Job {job_id}", job_id=job_id)


@router.get("/models/{model_id}/compare", response_class=HTMLResponse)
def compare(request: Request, model_id: str) -> HTMLResponse:
    """Every finished job of one model: accuracy against FLOPs reduction and measured speedup."""
    return _render(request, "compare.html", "compare", f"Compare jobs of {model_id}", model_id=model_id)
