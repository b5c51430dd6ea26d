"""A job the spec rejects never gets a 202: 422 problem+json naming the field, for JSON and one-call multipart
submissions, with nothing stored; a third-party method (entry point) is listed, validated and runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from service_helpers import make_embedded, new_key
from test_api import assert_problem, counts, upload_model

from app.core.config import Settings
from app.main import create_app

BAD_OPTIONS = [
    ({"mm": 3}, "mm: Extra inputs are not permitted"),
    ({"m": "3"}, "m: Input should be a valid integer"),
    ({"m": 0}, "m: Input should be greater than or equal to 1"),
]


@pytest.mark.parametrize("options, needle", BAD_OPTIONS)
def test_bad_method_options_get_422_naming_the_option(api: TestClient, data_files: dict[str, Path],
                                                      options: dict[str, Any], needle: str) -> None:
    model = upload_model(api, data_files["ckpt"]).json()
    before = counts(api.settings)  # type: ignore[attr-defined]
    resp = api.post("/v1/jobs", json={"model_id": model["id"], "method": "nystrom_sim", "pruning_ratio": 0.3,
                                      "options": options})
    body = assert_problem(resp, 422)
    assert needle in body["detail"] and body["errors"][0]["loc"] == ["options"]
    with open(data_files["ckpt"], "rb") as fh:  # one-call multipart: refused before the upload is stored
        resp = api.post("/v1/jobs", files={"file": ("m.safetensors", fh)},
                        data={"arch": "cifar_resnet20", "method": "nystrom_sim", "pruning_ratio": "0.3",
                              "options": json.dumps(options)})
    assert needle in assert_problem(resp, 422)["detail"]
    assert counts(api.settings) == before  # type: ignore[attr-defined]


def test_bad_finetune_and_missing_data_get_422(api: TestClient, data_files: dict[str, Path]) -> None:
    model = upload_model(api, data_files["ckpt"]).json()
    jobs_before = counts(api.settings)[2]  # type: ignore[attr-defined]
    base = {"model_id": model["id"], "method": "l1", "pruning_ratio": 0.3}
    body = assert_problem(api.post("/v1/jobs", json={**base, "finetune": {"epochs": 0}}), 422)
    assert body["errors"][0]["loc"][-2:] == ["finetune", "epochs"]
    body = assert_problem(api.post("/v1/jobs", json={**base, "finetune": {"epochs": 1}}), 422)
    assert "train_dataset_id" in body["detail"]
    body = assert_problem(api.post("/v1/jobs", json={**base, "method": "qsfm"}), 422)
    assert body["errors"][0]["loc"] == ["body", "calibration_dataset_id"]
    body = assert_problem(api.post("/v1/jobs", json={**base, "method": "dcff", "allocation": "global"}), 422)
    assert {e["loc"][-1] for e in body["errors"]} == {"finetune", "allocation"}
    assert counts(api.settings)[2] == jobs_before  # type: ignore[attr-defined]


def test_training_dataset_is_a_reference_of_the_job(api: TestClient, data_files: dict[str, Path]) -> None:
    model = upload_model(api, data_files["ckpt"]).json()
    with open(data_files["npz"], "rb") as fh:
        ds = api.post("/v1/datasets", files={"file": ("c.npz", fh)}).json()
    job = api.post("/v1/jobs", json={"model_id": model["id"], "method": "l1", "pruning_ratio": 0.3,
                                     "train_dataset_id": ds["id"], "finetune": {"epochs": 1}})
    assert job.status_code == 202, job.text
    assert job.json()["train_dataset_id"] == ds["id"] and job.json()["method"] == "l1"
    api.post(f"/v1/jobs/{job.json()['id']}/cancel")


@pytest.fixture
def embedded(tmp_path: Path) -> Settings:
    return make_embedded(tmp_path / "data")


def test_plugin_method_listed_validated_and_run(method_plugin: str, embedded: Settings,
                                               data_files: dict[str, Path]) -> None:
    from worker.tasks import execute_job

    with TestClient(create_app(embedded), raise_server_exceptions=False) as api:
        api.headers["Authorization"] = f"Bearer {new_key(embedded)}"
        listed = {m["name"]: m for m in api.get("/v1/methods").json()["items"]}
        assert listed["keep_first"]["options"][-1]["name"] == "offset"
        model = upload_model(api, data_files["ckpt"]).json()
        job = {"model_id": model["id"], "method": "keep_first", "pruning_ratio": 0.5, "exports": ["safetensors"]}
        assert "offset" in assert_problem(api.post("/v1/jobs", json={**job, "options": {"offset": -1}}), 422)[
            "detail"]
        accepted = api.post("/v1/jobs", json=job)
        assert accepted.status_code == 202, accepted.text
        assert execute_job(accepted.json()["id"], embedded) == "succeeded"
        done = api.get(f"/v1/jobs/{accepted.json()['id']}").json()
        assert done["result"]["method"] == "keep_first" and done["result"]["flops_reduction"] > 0.3
