"""``simprune worker --gpus``, with REAL worker processes in the CPU stand-in mode (``SIMPRUNE_FAKE_GPUS``): one
worker per selected GPU, pinned with CUDA_VISIBLE_DEVICES, named after its GPU and registered as a GPU worker; a
crashed worker is restarted; SIGTERM/SIGINT of the supervisor leaves no worker behind; a fine-tuning job runs on
the GPU worker, a pruning job on either; bad ``--gpus`` values exit 2 with one line."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from procs import Proc, child_pids, env_for, pid_gone, simprune_exe
from service_helpers import LiveServer, make_embedded, new_key
from sqlalchemy import select

from app.core.celery import gpu_queue
from app.core.config import Settings
from app.core.db import session_scope
from app.models import WorkerNode
from app.worker_supervisor import GpuSpecError, parse_gpus
from simprune.client import Client

FAST = {"worker_heartbeat_interval_s": 0.5, "sweep_interval_s": 0}


def _until(what: str, check: Callable[[], Any], timeout: float, log: Callable[[], str]) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if got := check():
            return got
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}\n{log()}")


def _rows(settings: Settings) -> list[WorkerNode]:
    with session_scope(settings.database_url) as s:
        rows = list(s.scalars(select(WorkerNode).order_by(WorkerNode.name)))
        s.expunge_all()
    return rows


def _n_rows(settings: Settings, n: int) -> list[WorkerNode] | None:
    rows = _rows(settings)
    return rows if len(rows) == n else None


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def _execed(pid: int) -> bool:
    """Whether a worker child has started its own program: between fork and exec, /proc shows the supervisor's
    environment, which has no worker settings."""
    try:
        env = _environ(pid)
    except OSError:  # gone already
        return False
    return "SIMPRUNE_WORKER_KIND" in env and "CUDA_VISIBLE_DEVICES" in env


def supervisor(settings: Settings, gpus: str, name: str, fake_gpus: int = 0) -> Proc:
    env = {**env_for(settings), "SIMPRUNE_FAKE_GPUS": str(fake_gpus), "SIMPRUNE_LOG_FORMAT": "text"}
    return Proc([simprune_exe(), "worker", "--gpus", gpus, "--stop-timeout", "15"], env,
                settings.data_dir / f"{name}.log")


@pytest.mark.parametrize("value,msg", [("0,5", "GPU 5 not found; available: 0,1,2"), ("0,0", "named twice"),
                                       ("", "give all, none, or GPU ids"), ("x", "GPU x not found")])
def test_bad_gpus_exit_2_with_one_line(value: str, msg: str, tmp_path: Path) -> None:
    env = {**os.environ, "SIMPRUNE_FAKE_GPUS": "3", "SIMPRUNE_DATA_DIR": str(tmp_path)}
    res = subprocess.run([simprune_exe(), "worker", "--gpus", value], env=env, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 2 and msg in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_parse_gpus() -> None:
    assert parse_gpus("all", ["0", "1"]) == ["0", "1"] and parse_gpus(" 1 ", ["0", "1"]) == ["1"]
    assert parse_gpus("none", []) is None
    with pytest.raises(GpuSpecError, match="no GPU found"):
        parse_gpus("all", [])


def test_workers_are_pinned_restarted_and_stopped(tmp_path: Path) -> None:
    s = make_embedded(tmp_path / "data", **FAST)
    sup = supervisor(s, "0,2", "sup", fake_gpus=3).start()
    assert sup.proc is not None
    try:
        rows = _until("two registered GPU workers", lambda: _n_rows(s, 2), 120, sup.log)
        assert [(r.name.split("@")[0], r.kind, r.gpu) for r in rows] == [("simprune-gpu0", "gpu", "0"),
                                                                      ("simprune-gpu2", "gpu", "2")]
        assert all(r.queues == sorted([gpu_queue(s), s.queue]) for r in rows)
        kids = child_pids(sup.proc.pid)
        assert sorted(_environ(p)["CUDA_VISIBLE_DEVICES"] for p in kids) == ["0", "2"]
        assert {_environ(p)["SIMPRUNE_WORKER_KIND"] for p in kids} == {"gpu"}

        victim = next(p for p in kids if _environ(p)["CUDA_VISIBLE_DEVICES"] == "2")
        os.kill(victim, signal.SIGKILL)  # a crash: the supervisor starts a new worker for GPU 2
        new = _until("a restarted worker",
                     lambda: [p for p in child_pids(sup.proc.pid) if p not in kids and _execed(p)], 60, sup.log)
        assert _environ(new[0])["CUDA_VISIBLE_DEVICES"] == "2"
        _until("the restarted worker registered", lambda: any(r.id.endswith(f":{new[0]}") for r in _rows(s)), 120,
               sup.log)
        assert "simprune-gpu2@%h exited with code -9; restarting" in sup.log()

        workers = child_pids(sup.proc.pid)
        sup.proc.send_signal(signal.SIGTERM)
        assert sup.proc.wait(timeout=40) == 0, sup.log()
        _until("every worker gone", lambda: all(pid_gone(p) for p in workers), 10, sup.log)
        # cleanly stopped workers unregister; the SIGKILLed one's row stays until it ages out
        assert [r.id for r in _rows(s)] == [r.id for r in rows if r.id.endswith(f":{victim}")]
    finally:
        sup.stop()


def test_finetuning_job_runs_on_the_gpu_worker_pruning_on_either(tmp_path: Path,
                                                                 data_files: dict[str, Path]) -> None:
    s = make_embedded(tmp_path / "data", **FAST)
    gpu = supervisor(s, "0", "gpu", fake_gpus=1).start()
    cpu = supervisor(s, "none", "cpu").start()
    assert gpu.proc is not None and cpu.proc is not None
    logs = lambda: gpu.log() + cpu.log()  # noqa: E731
    try:
        rows = _until("a GPU and a CPU worker", lambda: _n_rows(s, 2), 120, logs)
        assert sorted(r.kind for r in rows) == ["cpu", "gpu"]
        cpu_pid = child_pids(cpu.proc.pid)[0]
        assert _environ(cpu_pid)["CUDA_VISIBLE_DEVICES"] == "" and _environ(cpu_pid)["SIMPRUNE_DEVICE"] == "cpu"
        with LiveServer(s) as server, Client(server.url, api_key=new_key(s)) as c:
            model = c.upload_model(data_files["ckpt"], arch="cifar_resnet20")
            data = c.upload_dataset(data_files["npz"])
            ft = c.submit(model["id"], "l1", pruning_ratio=0.3, exports=["safetensors"], train_dataset_id=data["id"],
                          finetune={"epochs": 1, "batch_size": 16, "train_samples": 16, "distill": False})
            prune = c.submit(model["id"], "l1", pruning_ratio=0.3, exports=["safetensors"])
            done = [c.wait(j["id"], poll_interval=0.3, timeout=240, raise_on_failure=False) for j in (ft, prune)]
        assert [d["status"] for d in done] == ["succeeded", "succeeded"], (done, logs())
        assert done[0]["result"]["worker"]["name"].startswith("simprune-gpu0@"), done[0]["result"]["worker"]
        assert done[0]["result"]["device"] == "cpu"  # the stand-in computes on the CPU, and says so
        assert done[1]["result"]["worker"]["name"].split("-")[1][:3] in ("gpu", "cpu")
        # each worker frees memory and counts the job just after reporting its success
        _until("both jobs counted", lambda: sum(r.jobs_done for r in _rows(s)) == 2, 30, logs)
        kids = child_pids(gpu.proc.pid) + child_pids(cpu.proc.pid)
        for sup in (gpu, cpu):
            sup.proc.send_signal(signal.SIGINT)
        assert gpu.proc.wait(timeout=40) == 0 and cpu.proc.wait(timeout=40) == 0, logs()
        assert all(pid_gone(p) for p in kids) and _rows(s) == []
    finally:
        gpu.stop()
        cpu.stop()
