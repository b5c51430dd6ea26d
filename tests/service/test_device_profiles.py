"""Device profiles over the API on both backends: upload, list, get and delete per tenant (the profile file
format round trip), refused malformed or oversized profiles (422/413, nothing stored), latency-targeted jobs
(``target_speedup`` with ``device_profile_id`` or ``latency_profile: "worker"``) validated at submission and run
by the worker on a small model with a profile measured here, and the remote CLI (``simprune profiles ...``,
``simprune submit --target-speedup S --profile FILE|ID|worker``)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from service_helpers import make_embedded, new_key, stored_files
from sqlalchemy import func, select
from test_api import assert_problem, counts, upload_model

from app.core.config import Settings
from app.core.db import session_scope
from app.main import create_app
from app.models import DeviceProfile as ProfileRow
from simprune.profiles import MAX_GROUPS, MAX_PROFILE_BYTES, DeviceProfile, load_profile, parse_profile, save_profile

ENDPOINT = "/v1/device-profiles"


def make_profile(arch: str = "cifar_resnet20", input_size: tuple[int, ...] = (3, 32, 32)) -> DeviceProfile:
    """A small hand-written profile: two groups with a ladder of kept counts, one removable block."""
    return DeviceProfile.model_validate({
        "arch": arch, "input_size": list(input_size), "batch_size": 1,
        "environment": {"device_type": "cpu", "device_name": "test cpu", "threads": 1, "torch": "2.0"},
        "created": datetime(2026, 11, 26, tzinfo=timezone.utc).isoformat(),
        "dense_ms": 4.0, "fixed_ms": 1.0, "round_to": 8,
        "groups": {"layer1.0.conv1": {"channels": 16, "ladder": [[4, 3.4], [8, 3.6], [12, 3.8]]},
                   "layer2.0.conv1": {"channels": 32, "ladder": [[8, 3.2], [16, 3.5], [24, 3.8]]}},
        "blocks": {"layer3.2": {"ms": 3.5, "groups": []}},
    })


def profile_bytes(**kw: Any) -> bytes:
    return make_profile(**kw).model_dump_json(indent=1).encode()


def upload(api: TestClient, data: bytes, filename: str = "cpu.json", **fields: str) -> Any:
    return api.post(ENDPOINT, files={"file": (filename, data, "application/json")}, data=fields)


def profile_rows(settings: Settings) -> int:
    with session_scope(settings.database_url) as s:
        return s.scalar(select(func.count()).select_from(ProfileRow)) or 0


def test_upload_list_get_delete_round_trip(api: TestClient, tmp_path: Path) -> None:
    original = make_profile()
    raw = profile_bytes()
    resp = upload(api, raw, name="edge box")
    assert resp.status_code == 201, resp.text
    meta = resp.json()
    assert meta["id"].startswith("prf_") and meta["name"] == "edge box" and meta["arch"] == "cifar_resnet20"
    assert meta["input_size"] == [3, 32, 32] and meta["device_type"] == "cpu" and meta["device_name"] == "test cpu"
    assert meta["size"] == len(raw) and meta["filename"] == "cpu.json"
    assert upload(api, raw).json()["name"] == "cpu"  # default name: the file name without its extension

    listed = api.get(ENDPOINT, params={"limit": 1}).json()
    assert len(listed["items"]) == 1 and listed["next_cursor"]
    rest = api.get(ENDPOINT, params={"limit": 1, "cursor": listed["next_cursor"]}).json()
    assert [p["id"] for p in rest["items"]] == [meta["id"]] and rest["next_cursor"] is None

    detail = api.get(f"{ENDPOINT}/{meta['id']}").json()
    assert {k: v for k, v in detail.items() if k != "profile"} == meta
    assert parse_profile(detail["profile"]) == original  # the file format round trip, through the service
    path = tmp_path / "back.json"
    path.write_text(json.dumps(detail["profile"]))
    assert load_profile(path) == original
    assert load_profile(save_profile(load_profile(path), tmp_path / "again.json")) == original

    assert api.delete(f"{ENDPOINT}/{meta['id']}").status_code == 204
    assert_problem(api.get(f"{ENDPOINT}/{meta['id']}"), 404)
    assert_problem(api.delete(f"{ENDPOINT}/{meta['id']}"), 404)
    assert len(api.get(ENDPOINT).json()["items"]) == 1 and len(stored_files(api.settings)) == 1


def test_profiles_belong_to_their_tenant(api: TestClient, data_files: dict[str, Path]) -> None:
    mine = upload(api, profile_bytes()).json()
    own_key = api.headers["Authorization"]
    api.headers["Authorization"] = f"Bearer {new_key(api.settings, 'other')}"  # type: ignore[attr-defined]
    try:  # as another tenant
        assert api.get(ENDPOINT).json()["items"] == []
        assert_problem(api.get(f"{ENDPOINT}/{mine['id']}"), 404)
        assert_problem(api.delete(f"{ENDPOINT}/{mine['id']}"), 404)
        model = upload_model(api, data_files["ckpt"]).json()
        body = assert_problem(api.post("/v1/jobs", json={
            "model_id": model["id"], "method": "l1", "target_speedup": 1.5, "device_profile_id": mine["id"]}), 422)
        assert body["errors"][0]["loc"] == ["body", "device_profile_id"] and "not found" in body["detail"]
    finally:
        api.headers["Authorization"] = own_key
    assert api.get(f"{ENDPOINT}/{mine['id']}").status_code == 200
    assert_problem(api.get(ENDPOINT, headers={"Authorization": "Bearer sp_wrong"}), 401)


def _broken(mutate: Any) -> bytes:
    doc = json.loads(profile_bytes())
    mutate(doc)
    return json.dumps(doc).encode()


REFUSED = {  # case -> (file content, status, text the problem must contain)
    "not_json": (b'{"format": "simprune-device-profile/1", ', 422, "not valid JSON"),
    "not_an_object": (b"[1, 2, 3]", 422, "invalid device profile"),
    "empty": (b"", 422, "empty"),
    "missing_field": (_broken(lambda d: d.pop("dense_ms")), 422, "dense_ms"),
    "wrong_type": (_broken(lambda d: d.update(batch_size="one")), 422, "batch_size"),
    "unknown_field": (_broken(lambda d: d.update(script="rm -rf /")), 422, "script"),
    "bad_ladder": (_broken(lambda d: d["groups"]["layer1.0.conv1"].update(ladder=[[99, 1.0]])), 422,
                   "groups.layer1.0.conv1"),
    "nan": (profile_bytes().replace(b'"dense_ms": 4.0', b'"dense_ms": NaN'), 422, "dense_ms"),
    "deep": (b"[" * 100_000 + b"]" * 100_000, 422, "not valid JSON"),
    "too_many_groups": (_broken(lambda d: d.update(groups={f"g{i}": {"channels": 1, "ladder": [[0, 1.0]]}
                                                            for i in range(MAX_GROUPS + 1)})), 422, "groups"),
    "too_large": (b" " * (MAX_PROFILE_BYTES + 1) + profile_bytes(), 413, "exceeds"),
}


def test_refused_profiles_leave_nothing_behind(api: TestClient) -> None:
    before = profile_rows(api.settings)  # type: ignore[attr-defined]
    for case, (data, status, needle) in sorted(REFUSED.items()):  # one service per backend for all cases
        body = assert_problem(upload(api, data), status)
        assert needle in body["detail"], (case, body)
        assert profile_rows(api.settings) == before, case  # type: ignore[attr-defined]
        assert stored_files(api.settings) == [], case  # type: ignore[attr-defined]


def test_bad_form_fields_are_refused(api: TestClient) -> None:
    before = profile_rows(api.settings)  # type: ignore[attr-defined]
    assert "name" in assert_problem(upload(api, profile_bytes(), name="x" * 201), 422)["detail"]
    assert "file" in assert_problem(api.post(ENDPOINT, data={"name": "n"}, files={"other": ("a", b"1")}),
                                    422)["detail"]
    assert_problem(api.post(ENDPOINT, json={"arch": "x"}), 415)
    assert profile_rows(api.settings) == before and stored_files(api.settings) == []  # type: ignore[attr-defined]


def test_latency_jobs_are_validated(api: TestClient, data_files: dict[str, Path]) -> None:
    model = upload_model(api, data_files["ckpt"]).json()
    fits = upload(api, profile_bytes()).json()
    other_arch = upload(api, profile_bytes(arch="cifar_resnet32")).json()
    other_size = upload(api, profile_bytes(input_size=(3, 64, 64))).json()
    base = {"model_id": model["id"], "method": "l1", "target_speedup": 1.5, "exports": ["safetensors"]}
    before = counts(api.settings)  # type: ignore[attr-defined]

    refused = [
        (base, "target_speedup"),
        ({**base, "device_profile_id": other_arch["id"]}, "device_profile_id"),
        ({**base, "device_profile_id": other_size["id"]}, "device_profile_id"),
        ({**base, "device_profile_id": "prf_missing"}, "device_profile_id"),
        ({**base, "device_profile_id": fits["id"], "latency_profile": "worker"}, "device_profile_id"),
        ({**base, "latency_profile": "phone"}, "latency_profile"),
    ]
    for body, field in refused:
        problem = assert_problem(api.post("/v1/jobs", json=body), 422)
        assert field in problem["detail"] and problem["errors"][0]["loc"][-1] == field, problem
    assert "cifar_resnet32" in assert_problem(api.post("/v1/jobs", json=refused[1][0]), 422)["detail"]
    with open(data_files["ckpt"], "rb") as fh:  # one-call multipart: the checkpoint is not kept either
        resp = api.post("/v1/jobs", files={"file": ("m.safetensors", fh)},
                        data={"arch": "cifar_resnet20", "method": "l1", "target_speedup": "1.5",
                              "device_profile_id": other_arch["id"]})
    assert "device_profile_id" in assert_problem(resp, 422)["detail"]
    assert counts(api.settings) == before  # type: ignore[attr-defined]

    job = api.post("/v1/jobs", json={**base, "device_profile_id": fits["id"]})
    assert job.status_code == 202, job.text
    assert job.json()["device_profile_id"] == fits["id"] and job.json()["spec"]["target_speedup"] == 1.5
    conflict = assert_problem(api.delete(f"{ENDPOINT}/{fits['id']}"), 409)  # a queued job uses it
    assert job.json()["id"] in conflict["detail"]
    worker_job = api.post("/v1/jobs", json={**base, "latency_profile": "worker"})
    assert worker_job.status_code == 202, worker_job.text
    assert worker_job.json()["device_profile_id"] is None
    assert worker_job.json()["spec"]["latency_profile"] == "worker"
    for j in (job, worker_job):
        api.post(f"/v1/jobs/{j.json()['id']}/cancel")
    assert api.delete(f"{ENDPOINT}/{fits['id']}").status_code == 204  # ended jobs keep no hold on it
    assert api.get(f"/v1/jobs/{job.json()['id']}").json()["device_profile_id"] is None


def _measured_profile(ckpt: Path) -> bytes:
    """A CPU profile of the tiny model, measured here (quickly: short budget, no round_to scan, no checks)."""
    from simprune.checkpoint import load_state_dict
    from simprune.profiling import ProfileSettings, measure_profile
    from simprune.zoo import build_model

    model = build_model("cifar_resnet20", num_classes=10)
    model.load_state_dict(load_state_dict(ckpt))
    quick = ProfileSettings(repeats=3, budget_s=20.0, round_candidates=(), checks=0, threads=1)
    return measure_profile(model.eval(), "cifar_resnet20", (3, 32, 32), "cpu", quick).profile.model_dump_json().encode()


def test_latency_targeted_job_runs_through_the_worker(tmp_path: Path, data_files: dict[str, Path]) -> None:
    from worker.tasks import execute_job

    settings = make_embedded(tmp_path / "data")
    with TestClient(create_app(settings), raise_server_exceptions=False) as api:
        api.headers["Authorization"] = f"Bearer {new_key(settings)}"
        model = upload_model(api, data_files["ckpt"]).json()
        prof = upload(api, _measured_profile(data_files["ckpt"]))
        assert prof.status_code == 201, prof.text
        accepted = api.post("/v1/jobs", json={"model_id": model["id"], "method": "l1", "target_speedup": 1.3,
                                              "device_profile_id": prof.json()["id"], "exports": ["safetensors"],
                                              "measure_latency": True})
        assert accepted.status_code == 202, accepted.text
        assert execute_job(accepted.json()["id"], settings) == "succeeded"
        done = api.get(f"/v1/jobs/{accepted.json()['id']}").json()
        assert done["status"] == "succeeded", done["error"]
        result = done["result"]
        assert result["predicted_speedup"] >= 1.2 and result["flops_reduction"] > 0, result
        assert result["latency_target"]["profile_source"] == "file"  # the uploaded profile reached the engine
        assert result["latency"] and "latency_target" in result
        assert api.delete(f"{ENDPOINT}/{prof.json()['id']}").status_code == 204  # the job ended: no hold on it


def test_remote_cli_profiles_and_latency_submit(tmp_path: Path, data_files: dict[str, Path]) -> None:
    import typer
    from service_helpers import LiveServer
    from typer.testing import CliRunner

    from simprune.cli import remote

    cli = typer.Typer()
    remote.register(cli)
    settings = make_embedded(tmp_path / "data")  # no worker: jobs stay queued
    good, wrong = tmp_path / "good.json", tmp_path / "wrong.json"
    good.write_bytes(profile_bytes())
    wrong.write_bytes(profile_bytes(arch="cifar_resnet32"))
    with LiveServer(settings) as server:
        env = {"SIMPRUNE_SERVER": server.url, "SIMPRUNE_API_KEY": new_key(settings)}

        def run(*argv: str) -> Any:
            return CliRunner().invoke(cli, list(argv), env=env)

        submit = ["submit", str(data_files["ckpt"]), "--arch", "cifar_resnet20", "--method", "l1",
                  "--target-speedup", "1.5", "--export", "safetensors"]
        res = run(*submit, "--profile", str(wrong))  # rejected: the profile and the model uploaded for it go
        assert res.exit_code == 2 and "device_profile_id" in res.output, res.output
        assert "removed the device profile" in res.output and profile_rows(settings) == 0
        res = run(*submit, "--profile", str(good))
        assert res.exit_code == 0, res.output
        job_id = res.stdout.strip().splitlines()[-1]
        listed = json.loads(run("profiles", "list", "--json").stdout)
        assert [p["name"] for p in listed] == ["good"]
        prof_id = listed[0]["id"]
        res = run(*submit, "--profile", str(good))  # the same file again: reused, not uploaded
        assert res.exit_code == 0 and f"reusing device profile {prof_id}" in res.output, res.output
        res = run(*submit, "--profile", "worker")
        assert res.exit_code == 0, res.output
        shown = json.loads(run("jobs", "show", res.stdout.strip().splitlines()[-1], "--json").stdout)
        assert shown["spec"]["latency_profile"] == "worker" and shown["device_profile_id"] is None
        assert "is used by active job" in run("profiles", "delete", prof_id).output  # queued jobs use it
        assert json.loads(run("profiles", "show", prof_id).stdout)["profile"]["arch"] == "cifar_resnet20"
        res = run("profiles", "upload", str(good), "--name", "second")
        assert res.exit_code == 0 and res.stdout.strip().startswith("prf_"), res.output
        assert run("profiles", "delete", res.stdout.strip()).exit_code == 0
        assert run("jobs", "cancel", job_id).exit_code == 0
        models = len(json.loads(run("models", "list", "--json").stdout))
        assert "neither" in run(*submit, "--profile", "nonsense").output
        assert len(json.loads(run("models", "list", "--json").stdout)) == models
