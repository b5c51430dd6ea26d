"""The remote CLI against a live server and a real worker: ``submit`` with every kind of job field (reusing
uploads by content hash, removing them when the job is rejected), ``jobs list|show|wait|cancel|download|delete``,
``models list``, ``datasets list``, the 401 hint, and the client's event iterator."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from service_helpers import LiveServer, WorkerProcess, make_embedded, new_key
from typer.testing import CliRunner, Result

from simprune.cli import remote
from simprune.client import Client


@pytest.fixture(scope="module")
def cli() -> typer.Typer:
    app = typer.Typer()
    remote.register(app)
    return app


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One server with a worker for the module, and a key."""
    s = make_embedded(tmp_path_factory.mktemp("remote") / "data")
    with LiveServer(s) as server, WorkerProcess(s) as worker:
        yield {"url": server.url, "key": new_key(s), "worker": worker}


@pytest.fixture
def idle(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A server whose queue no worker reads: its jobs stay queued."""
    s = make_embedded(tmp_path / "data")
    with LiveServer(s) as server:
        yield {"url": server.url, "key": new_key(s)}


def run(cli: typer.Typer, srv: dict[str, Any], *argv: str, key: str | None = None) -> Result:
    env = {"SIMPRUNE_SERVER": srv["url"], "SIMPRUNE_API_KEY": key or srv["key"]}
    return CliRunner().invoke(cli, list(argv), env=env)


def out_json(res: Result) -> Any:
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def other_checkpoint(tmp_path: Path) -> Path:
    """A cifar_resnet20 checkpoint with other weights (another content hash)."""
    import torch

    from simprune.checkpoint import save_state_dict
    from simprune.zoo import build_model

    torch.manual_seed(1)
    return save_state_dict(build_model("cifar_resnet20", num_classes=10).state_dict(), tmp_path / "other.safetensors")


def test_submit_every_field_reuses_uploads_and_downloads(cli: typer.Typer, live: dict[str, Any],
                                                         data_files: dict[str, Path], tmp_path: Path) -> None:
    npz, out = str(data_files["npz"]), tmp_path / "out"
    res = run(cli, live, "submit", str(data_files["ckpt"]), "--arch", "cifar_resnet20", "--method", "l1",
              "--target-flops-reduction", "0.3", "-o", "seed=3", "--allocation", "global", "--round-to", "2",
              "--no-bn", "--sequential", "--no-output-recon", "--output-recon-augment", "shift",
              "--output-recon-mix", "none",
              "--calib", npz, "--eval", npz, "--train", npz,
              "--calib-samples", "16",
              "--eval-samples", "16", "--batch-size", "8", "--seed", "1", "--export", "onnx", "--export",
              "safetensors", "--finetune-epochs", "1", "--finetune-lr", "0.001", "--finetune-batch-size", "8",
              "--no-distill", "--train-samples", "16", "--finetune-max-steps", "2", "--time-limit-s", "300",
              "--wait", "--out", str(out))
    assert res.exit_code == 0, f"{res.output}\n{live['worker'].log()}"
    job_id = res.output.strip().splitlines()[-1]
    assert job_id.startswith("job_") and "reusing dataset" in res.output  # --eval and --train: the same file
    assert {p.name for p in out.iterdir()} >= {"model.onnx", "weights.safetensors", "report.json"}
    assert not (out / "model.pt2").exists()
    job = out_json(run(cli, live, "jobs", "show", job_id, "--json"))
    spec = job["spec"]
    assert spec["options"] == {"seed": 3} and spec["allocation"] == "global" and spec["round_to"] == 2
    assert spec["compensation"] == {"bn": False, "sequential": True, "output_recon": False}
    assert spec["output_recon_augment"] == "shift" and spec["output_recon_mix"] == "none"
    assert spec["finetune"]["epochs"] == 1 and spec["finetune"]["distill"] is False
    assert spec["finetune"]["max_steps_per_epoch"] == 2 and spec["time_limit_s"] == 300
    assert job["calibration_dataset_id"] == job["eval_dataset_id"] == job["train_dataset_id"]
    assert job["result"]["finetune"]["history"], job["result"]
    # a second submit of the same checkpoint uploads nothing
    again = run(cli, live, "submit", str(data_files["ckpt"]), "--arch", "cifar_resnet20", "--pruning-ratio", "0.2")
    assert again.exit_code == 0 and "reusing model" in again.output, again.output
    assert len(out_json(run(cli, live, "models", "list", "--json"))) == 1
    (ds,) = out_json(run(cli, live, "datasets", "list", "--json"))
    assert ds["id"] == job["eval_dataset_id"] and ds["samples"] == 40


def test_a_rejected_job_removes_what_it_uploaded(cli: typer.Typer, live: dict[str, Any],
                                                data_files: dict[str, Path], tmp_path: Path) -> None:
    before = {m["id"] for m in out_json(run(cli, live, "models", "list", "--json"))}
    res = run(cli, live, "submit", str(other_checkpoint(tmp_path)), "--arch", "cifar_resnet20",
              "--method", "qsfm", "--target-flops-reduction", "0.3")  # qsfm needs calibration data
    assert res.exit_code == 2 and "422" in res.output and "calibration" in res.output, res.output
    assert "removed the model" in res.output
    assert {m["id"] for m in out_json(run(cli, live, "models", "list", "--json"))} == before


def test_jobs_list_show_download_wait(cli: typer.Typer, live: dict[str, Any], data_files: dict[str, Path],
                                      tmp_path: Path) -> None:
    res = run(cli, live, "submit", str(data_files["ckpt"]), "--arch", "cifar_resnet20", "--pruning-ratio", "0.25",
              "--export", "onnx")
    job_id = res.output.strip().splitlines()[-1]
    waited = run(cli, live, "jobs", "wait", job_id)
    assert waited.exit_code == 0 and waited.stdout.strip() == "succeeded", waited.output
    listed = out_json(run(cli, live, "jobs", "list", "--json", "--status", "succeeded"))
    assert job_id in [j["id"] for j in listed] and all(j["status"] == "succeeded" for j in listed)
    table = run(cli, live, "jobs", "list")
    assert table.exit_code == 0 and job_id in table.stdout
    shown = run(cli, live, "jobs", "show", job_id)
    assert shown.exit_code == 0 and "succeeded" in shown.stdout and "model.onnx" in shown.stdout
    got = run(cli, live, "jobs", "download", job_id, "model.onnx", "--out", str(tmp_path / "dl"))
    assert got.exit_code == 0 and (tmp_path / "dl" / "model.onnx").stat().st_size > 1000, got.output
    missing = run(cli, live, "jobs", "download", job_id, "nope.bin", "--out", str(tmp_path / "dl"))
    assert missing.exit_code == 2 and "404" in missing.output
    finished = run(cli, live, "jobs", "cancel", job_id)
    assert finished.exit_code == 2 and "409" in finished.output


def test_cancel_and_delete_a_queued_job(cli: typer.Typer, idle: dict[str, Any], data_files: dict[str, Path]) -> None:
    res = run(cli, idle, "submit", str(data_files["ckpt"]), "--arch", "cifar_resnet20", "--pruning-ratio", "0.25")
    job_id = res.output.strip().splitlines()[-1]
    cancelled = run(cli, idle, "jobs", "cancel", job_id)
    assert cancelled.exit_code == 0 and cancelled.stdout.strip() == f"{job_id} cancelled", cancelled.output
    deleted = run(cli, idle, "jobs", "delete", job_id)
    assert deleted.exit_code == 0, deleted.output
    gone = run(cli, idle, "jobs", "show", job_id)
    assert gone.exit_code == 2 and "410" in gone.output and "deleted" in gone.output
    assert out_json(run(cli, idle, "jobs", "list", "--json")) == []


def test_a_bad_key_says_where_the_key_goes(cli: typer.Typer, idle: dict[str, Any]) -> None:
    res = run(cli, idle, "models", "list", key="sp_wrong")
    assert res.exit_code == 2 and "401" in res.output
    assert "--api-key" in res.output and "SIMPRUNE_API_KEY" in res.output


def test_client_events_follow_a_job_to_its_end(live: dict[str, Any], data_files: dict[str, Path]) -> None:
    with Client(live["url"], api_key=live["key"]) as c:
        model = c.find_model(c.upload_model(data_files["ckpt"], arch="cifar_resnet20")["sha256"])
        assert model is not None
        job = c.submit(model["id"], "l1", pruning_ratio=0.2, exports=["onnx"])
        events = list(c.events(job["id"]))
    names = [e for e, _ in events]
    assert names[-1] == "end" and names.count("end") == 1 and "progress" in names
    progress = [d["progress"] for e, d in events if e == "progress"]
    assert progress == sorted(progress) and events[-1][1]["status"] == "succeeded"
