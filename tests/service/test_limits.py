"""Issue 12 regressions, on both backends: each sends the exact bad request, checks the status and the
problem+json body, that nothing stored changed, and that the API still answers. Request limits (JSON body
size, nesting, string length, members, finite numbers) on job bodies, multipart fields, model fields and
cursors; bounded model inspection; links from SIMPRUNE_PUBLIC_URL, never from Host; error text that neither
echoes huge input nor names server files; the /metrics token; ``simprune keys list|revoke``."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import typer
from fastapi.testclient import TestClient
from service_helpers import make_embedded, new_key, stored_files
from test_api import assert_problem, counts, upload_model
from typer.testing import CliRunner

from app import cli as server_cli
from app.core.config import Settings
from app.core.db import session_scope
from app.main import create_app
from app.models import Job


def state(settings: Settings) -> tuple[Any, ...]:
    """What is stored: row counts, files, and every job's spec."""
    with session_scope(settings.database_url) as s:
        specs = sorted(json.dumps(j.spec, sort_keys=True) for j in s.query(Job).all())
    return counts(settings), sorted(map(str, stored_files(settings))), specs


def healthy(api: TestClient) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    assert api.get("/v1/jobs").status_code == 200


def nested(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


@pytest.fixture
def model(api: TestClient, data_files: dict[str, Path]) -> dict[str, Any]:
    resp = upload_model(api, data_files["ckpt"])
    assert resp.status_code == 201, resp.text
    return resp.json()


JSON_CT = {"Content-Type": "application/json"}


def _bad_job_bodies(model_id: str) -> list[tuple[str, bytes, int, str]]:
    head = f'{{"model_id": "{model_id}", "method": "l1", "pruning_ratio": 0.3'
    many = ", ".join(f'"k{i}": 1' for i in range(100))
    return [  # (case, raw body, status, words expected in the detail)
        ("50MB-string", (head + ', "options": {"x": "' + "a" * (50 << 20) + '"}}').encode(), 413, "limit"),
        ("long-string", (head + ', "options": {"x": "' + "a" * 100_000 + '"}}').encode(), 422, "characters"),
        ("nested-600", (head + ', "options": {"x": ' + nested(600) + "}}").encode(), 422, "nested"),
        ("nested-100k", (head + ', "options": {"x": ' + nested(100_000) + "}}").encode(), 422, "nested"),
        ("many-keys", (head + ', "options": {' + many + "}}").encode(), 422, "members"),
        ("lr-Infinity", (head + ', "finetune": {"lr": Infinity}}').encode(), 422, "finite"),
        ("lr-NaN", (head + ', "finetune": {"lr": NaN}}').encode(), 422, "finite"),
        ("lr-1e999", (head + ', "finetune": {"lr": 1e999}}').encode(), 422, "finite"),
        ("option-NaN", (head + ', "options": {"x": -Infinity}}').encode(), 422, "finite"),
        ("huge-int", (head + ', "seed": ' + "9" * 30 + "}").encode(), 422, "64 bits"),
        ("method-1MB", ('{"model_id": "x", "method": "' + "m" * 200_000 + '"}').encode(), 422, "characters"),
    ]


def test_json_job_bodies_within_limits(api: TestClient, model: dict[str, Any]) -> None:
    before = state(api.settings)  # type: ignore[attr-defined]
    for case, raw, status, word in _bad_job_bodies(model["id"]):
        resp = api.post("/v1/jobs", content=raw, headers=JSON_CT)
        body = assert_problem(resp, status)
        assert word in body["detail"], (case, body)
        assert len(resp.content) < 3000, case  # the input is never echoed back whole
    # a chunked body (no Content-Length to refuse on) is cut off once it passes the limit
    big = (b'{"options": {"x": "' + b"a" * (2 << 20) + b'"}}')
    resp = api.post("/v1/jobs", content=iter([big[i:i + 65536] for i in range(0, len(big), 65536)]), headers=JSON_CT)
    assert assert_problem(resp, 413)["limit"] == api.settings.max_json_body_bytes  # type: ignore[attr-defined]
    assert state(api.settings) == before  # type: ignore[attr-defined]
    healthy(api)
    ok = api.post("/v1/jobs", json={"model_id": model["id"], "method": "l1", "pruning_ratio": 0.3, "options": {}})
    assert ok.status_code == 202, ok.text


def test_finetune_fields_checked_at_submission(api: TestClient, model: dict[str, Any]) -> None:
    """Item 9's cases: epochs 0 and num_workers beyond 32 are refused with the field named."""
    before = state(api.settings)  # type: ignore[attr-defined]
    base = {"model_id": model["id"], "method": "l1", "pruning_ratio": 0.3, "train_dataset_id": None}
    for field, value in (("epochs", 0), ("num_workers", 33), ("num_workers", 10_000), ("lr", -1)):
        body = assert_problem(api.post("/v1/jobs", json={**base, "finetune": {field: value}}), 422)
        assert body["errors"][0]["loc"][-2:] == ["finetune", field], body
    assert state(api.settings) == before  # type: ignore[attr-defined]
    healthy(api)


def test_multipart_and_model_fields_within_limits(api: TestClient, data_files: dict[str, Path]) -> None:
    ckpt = data_files["ckpt"].read_bytes()
    before = state(api.settings)  # type: ignore[attr-defined]
    job_form = {"arch": "cifar_resnet20", "method": "l1", "pruning_ratio": "0.3"}
    cases: list[tuple[str, dict[str, str], str, int, str]] = [
        ("options-nested", {**job_form, "options": '{"x": ' + nested(600) + "}"}, "/v1/jobs", 422, "nested"),
        ("options-nested-deep", {**job_form, "options": nested(30_000)}, "/v1/jobs", 422, "nested"),
        ("options-inf", {**job_form, "options": '{"x": Infinity}'}, "/v1/jobs", 422, "finite"),
        ("finetune-nan", {**job_form, "finetune": '{"lr": NaN}'}, "/v1/jobs", 422, "finite"),
        ("ratio-nan", {**job_form, "pruning_ratio": "nan"}, "/v1/jobs", 422, "finite"),
        ("flops-inf", {"arch": "cifar_resnet20", "method": "l1", "target_flops_reduction": "inf"}, "/v1/jobs",
         422, "finite"),
        ("mean-nan", {"arch": "cifar_resnet20", "mean": "nan,nan,nan"}, "/v1/models", 422, "finite"),
        ("std-inf", {"arch": "cifar_resnet20", "std": "[1e999, 1, 1]"}, "/v1/models", 422, "finite"),
        ("mean-nested", {"arch": "cifar_resnet20", "mean": nested(600)}, "/v1/models", 422, "nested"),
        ("mean-nested-deep", {"arch": "cifar_resnet20", "mean": nested(30_000)}, "/v1/models", 422, "nested"),
        ("input-huge", {"arch": "cifar_resnet20", "input_size": "3," + "9" * 5000}, "/v1/models", 422, "finite"),
        ("method-60k", {**job_form, "method": "m" * 60_000}, "/v1/jobs", 422, "64 characters"),
    ]
    for case, form, url, status, word in cases:
        resp = api.post(url, data=form, files={"file": ("r20.safetensors", ckpt)})
        body = assert_problem(resp, status)
        assert word in body["detail"], (case, body)
        assert len(resp.content) < 3000, case
    assert state(api.settings) == before  # type: ignore[attr-defined]
    healthy(api)


def test_crafted_cursors_answer_400(api: TestClient) -> None:
    import base64

    for raw in (nested(600).encode(), nested(50).encode(), b'["2026-01-01T00:00:00", {"a": 1}]', b"1e999"):
        cursor = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        for path in ("/v1/jobs", "/v1/models", "/v1/datasets"):
            body = assert_problem(api.get(path, params={"cursor": cursor}), 400)
            assert body["type"].endswith("/invalid-cursor")
    healthy(api)


def test_model_inspection_is_bounded(api: TestClient, data_files: dict[str, Path]) -> None:
    """Item 2: an input size far beyond the architecture's is refused before anything runs; the model is never
    run in the API process (a separate inspector with a memory limit)."""
    before = state(api.settings)  # type: ignore[attr-defined]
    for size, word in (("3,1024,1024", "too large"), ("3,100000,100000", "up to 65536"), ("3,4000,4000", "too large"),
                       ("3,32", "3 values"), ("3,32,32,32", "3 values"), ("1000,32,32", "channels")):
        start = time.monotonic()
        body = assert_problem(upload_model(api, data_files["ckpt"], input_size=size), 422)
        assert word in body["detail"] and "alloc" not in body["detail"].lower(), (size, body)
        assert time.monotonic() - start < 10
    assert state(api.settings) == before  # type: ignore[attr-defined]
    ok = upload_model(api, data_files["ckpt"], input_size="3,64,64")  # within 4x: accepted
    assert ok.status_code == 201, ok.text
    assert ok.json()["input_size"] == [3, 64, 64]
    inspector = api.app.state.inspector  # type: ignore[attr-defined]
    pid = inspector._proc.pid
    assert pid != os.getpid()
    limits = Path(f"/proc/{pid}/limits").read_text()
    line = next(x for x in limits.splitlines() if x.startswith("Max address space"))
    assert "unlimited" not in line.split()[3], line
    healthy(api)


def test_inspection_time_limit(tmp_path: Path, data_files: dict[str, Path]) -> None:
    # ResNet-20 at 128 x 128 took under 0.05 s on a quiet fast CPU (the test was flaky at that limit): a 256 x
    # 256 input (8 x the native side, allowed here) against 2 ms cannot finish in time on any machine
    s = make_embedded(tmp_path / "data", inspect_timeout_s=0.002, max_input_scale=8.0)
    with TestClient(create_app(s), raise_server_exceptions=False) as c:
        c.headers["Authorization"] = f"Bearer {new_key(s)}"
        before = state(s)
        body = assert_problem(upload_model(c, data_files["ckpt"], input_size="3,256,256"), 422)
        assert "longer than 0.002 s" in body["detail"]
        assert state(s) == before
        assert c.app.state.inspector._proc is None  # type: ignore[attr-defined]  # killed
        assert c.get("/healthz").status_code == 200


def test_errors_name_no_server_file_and_echo_no_huge_input(api: TestClient, data_files: dict[str, Path]) -> None:
    settings: Settings = api.settings  # type: ignore[attr-defined]
    before = state(settings)
    resp = upload_model(api, data_files["junk"])
    body = assert_problem(resp, 422)
    assert "junk.pt" in body["detail"]
    assert str(settings.data_dir) not in resp.text and "upload-" not in resp.text
    resp = api.post("/v1/jobs", json={"model_id": "mdl_x", "method": "m" * 4000, "pruning_ratio": 0.3})
    assert_problem(resp, 422)
    assert len(resp.content) < 3000
    assert state(settings) == before
    healthy(api)


def test_links_come_from_public_url_never_host(settings: Settings, data_files: dict[str, Path]) -> None:
    from app.models import Artifact, new_id

    for public in ("", "https://prune.example.com/api"):
        s = settings.model_copy(update={"public_url": public})
        with TestClient(create_app(s), raise_server_exceptions=False) as c:
            c.headers["Authorization"] = f"Bearer {new_key(s)}"
            model = upload_model(c, data_files["ckpt"]).json()
            resp = c.post("/v1/jobs", json={"model_id": model["id"], "method": "l1", "pruning_ratio": 0.3},
                          headers={"Host": "evil.example", "X-Forwarded-Host": "evil.example"})
            assert resp.status_code == 202, resp.text
            job_id = resp.json()["id"]
            assert resp.headers["location"] == f"{public}/v1/jobs/{job_id}"
            with session_scope(s.database_url) as db:
                db.add(Artifact(id=new_id("art"), job_id=job_id, name="plan.json", size=2, sha256="0" * 64,
                                storage_key=f"jobs/{job_id}/1/plan.json", content_type="application/json"))
            got = c.get(f"/v1/jobs/{job_id}", headers={"Host": "evil.example"}).json()
            assert got["artifacts"][0]["url"] == f"{public}/v1/jobs/{job_id}/artifacts/plan.json"
            assert "evil" not in json.dumps(got)
            c.post(f"/v1/jobs/{job_id}/cancel")


def test_public_url_must_be_a_url() -> None:
    with pytest.raises(ValueError, match="PUBLIC_URL"):
        Settings(public_url="evil.example/x?y")


def test_metrics_token(settings: Settings) -> None:
    s = settings.model_copy(update={"metrics_token": "s3cret-token"})
    with TestClient(create_app(s), raise_server_exceptions=False) as c:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret-token"}):
            assert_problem(c.get("/metrics", headers=headers), 401)
        ok = c.get("/metrics", headers={"Authorization": "Bearer s3cret-token"})
        assert ok.status_code == 200 and "simprune_jobs" in ok.text
    with TestClient(create_app(settings)) as c:  # no token configured: open, as before
        assert c.get("/metrics").status_code == 200


@pytest.fixture
def cli() -> Any:
    saved = {k: v for k, v in os.environ.items() if k.startswith("SIMPRUNE_")}
    app = typer.Typer()
    server_cli.register(app)
    yield app
    for k in [k for k in os.environ if k.startswith("SIMPRUNE_")]:
        del os.environ[k]
    os.environ.update(saved)
    from app.core.config import get_settings

    get_settings.cache_clear()


def test_keys_list_and_revoke(cli: Any, tmp_path: Path) -> None:
    data = tmp_path / "data"
    run = CliRunner().invoke
    res = run(cli, ["keys", "create", "alice", "--data-dir", str(data)])
    assert res.exit_code == 0, res.output
    key = res.output.strip().splitlines()[-1]
    run(cli, ["keys", "create", "bob", "--data-dir", str(data)])
    listed = run(cli, ["keys", "list", "--data-dir", str(data)])
    assert listed.exit_code == 0, listed.output
    rows = [line.split("\t") for line in listed.output.strip().splitlines()[1:]]
    assert [r[2] for r in rows] == ["alice", "bob"] and all(r[-1] == "active" for r in rows)
    assert key not in listed.output and key.split("_")[1] in listed.output  # the prefix, never the secret
    s = Settings(data_dir=data, auth_cache_s=0.5)
    with TestClient(create_app(s), raise_server_exceptions=False) as c:
        c.headers["Authorization"] = f"Bearer {key}"
        assert c.get("/v1/models").status_code == 200
        res = run(cli, ["keys", "revoke", rows[0][0], "--data-dir", str(data)])
        assert res.exit_code == 0 and "revoked" in res.output, res.output
        time.sleep(0.6)  # past the replica's cache of verified keys
        assert_problem(c.get("/v1/models"), 401)
    after = run(cli, ["keys", "list", "--data-dir", str(data), "--active"])
    assert [line.split("\t")[2] for line in after.output.strip().splitlines()[1:]] == ["bob"]
    missing = run(cli, ["keys", "revoke", "key_nope", "--data-dir", str(data)])
    assert missing.exit_code == 1
