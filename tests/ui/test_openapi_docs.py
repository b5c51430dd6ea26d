"""The OpenAPI document declares bearer auth and an example for every request body; /docs and /redoc load
their assets from this server only (the browser test renders them with the network blocked)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from service_helpers import make_embedded

from app.main import create_app


def test_bearer_auth_and_an_example_for_every_request_body(tmp_path: Path) -> None:
    with TestClient(create_app(make_embedded(tmp_path / "d"))) as c:
        doc: dict[str, Any] = c.get("/openapi.json").json()
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer", "description": doc["components"]["securitySchemes"]["bearerAuth"][
            "description"]}
    bodies = 0
    for path, item in doc["paths"].items():
        for method, op in item.items():
            assert op["security"] == ([] if path in ("/healthz", "/readyz", "/metrics") else [{"bearerAuth": []}])
            for ctype, media in op.get("requestBody", {}).get("content", {}).items():
                bodies += 1
                assert media.get("example") or media.get("examples"), f"{method} {path} {ctype}: no example"
    assert bodies >= 4
    assert not [p for p in doc["paths"] if p.startswith(("/ui", "/docs", "/redoc"))]


def test_docs_pages_reference_only_local_assets(tmp_path: Path) -> None:
    with TestClient(create_app(make_embedded(tmp_path / "d"))) as c:
        for page in ("/docs", "/redoc"):
            html = c.get(page).text
            assert not re.findall(r"""(?:src|href)=["']?(?:https?:)?//""", html), html
            for asset in re.findall(r"/docs-assets/[\w.-]+", html):
                resp = c.get(asset)
                assert resp.status_code == 200 and len(resp.content) > 1000, asset
        assert c.get("/redoc").headers["content-security-policy"].startswith("img-src 'self'")
