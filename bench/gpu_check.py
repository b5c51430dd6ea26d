"""One command that checks simprune's GPU path and prints one summary line per step (``make gpu-check``).

Steps, each in its own process under a time cap (cut to what is left of ``--budget-s``, 290 s by default, so the
whole check ends within 5 minutes on one GPU); a failing or timed-out step never stops the next one:

- ``A_engine``: ``simprune prune`` on the device (recon + sensitivity + sequential, 50% FLOPs; ``--quick``: l1),
  exports verified;
- ``B_finetune``: ``bench/finetune.py``, dense vs recon (``--quick``: l1), one epoch; on CUDA the fine-tuning
  uses AMP (bf16 autocast where supported);
- ``C_latency``: ``bench/latency.py`` on the device in the deployment modes (fp32 eager, bf16 + torch.compile;
  ``--quick``: fp32 only);
- ``D_service``: ``simprune serve`` with a worker on the device, a sequence of jobs over HTTP (fine-tuning,
  pruning, fine-tuning) with the worker's GPU memory read from the ``workers`` table after each (released
  between jobs), the downloaded ``model.pt2`` run on the device, then SIGTERM: no worker may be left;
- ``E_oom`` (CUDA only): GPU memory capped with ``torch.cuda.set_per_process_memory_fraction`` so that a
  fine-tuning batch does not fit and half of it does: the job retries once with half the batch size and
  succeeds; capped below that, it fails with the clear out-of-memory error.

Runs from a source checkout without installing it (the GPU machine: Python 3.12, torch 2.11, the service's
wheels from ``.gpu/``, see ../shared/gpu/README.md). Data: ``--checkpoint``, ``--train``, ``--eval``
(default: ``.gpu/data`` when present, else ``../shared/data``). ``--device cuda`` without CUDA fails with one
line. Results: ``summary.txt`` and ``gpu_check.json`` in ``--out``.

    python bench/gpu_check.py --out /tmp/gpu_check                    # a GPU machine with the venv
    python bench/gpu_check.py --device cpu --quick --out /tmp/gc      # the CPU rehearsal (run by the tests)

On the offline GPU machine: ``bash ../shared/gpu/make-bundle.sh`` here (it builds ``.gpu/``: wheels, the
ResNet-56 checkpoint, ``train10k.zip``, ``test.zip``), then there, from the checkout's root::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .gpu/whl/*.whl
    PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 timeout 330 python3 bench/gpu_check.py --out "$OUT"
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
BUNDLE = ROOT / ".gpu" / "data"
CLI = "import sys; from simprune.cli import main; sys.argv[0] = 'simprune'; main()"
# (name, cap in seconds at full size, seconds kept for the steps after it)
QUICK_SCALE = 4  # --quick: every cap, reserve and the budget times this (the CPU is slower per unit of work)
STEPS = (("A_engine", 90, 150), ("B_finetune", 90, 100), ("C_latency", 100, 60), ("D_service", 120, 20),
         ("E_oom", 60, 0))


def default_paths() -> dict[str, Path]:
    """The check's data: the ``.gpu/`` bundle when it exists, else the shared data next to the checkout."""
    if (BUNDLE / "resnet56-4bfd9763.th").is_file():
        return {"checkpoint": BUNDLE / "resnet56-4bfd9763.th", "train": BUNDLE / "train10k.zip",
                "eval": BUNDLE / "test.zip"}
    return {"checkpoint": SHARED / "checkpoints" / "resnet56-4bfd9763.th",
            "train": SHARED / "cifar10-jpeg" / "train.zip", "eval": SHARED / "cifar10-jpeg" / "test.zip"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    paths = default_paths()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--quick", action="store_true", help="small work everywhere (the CPU rehearsal)")
    p.add_argument("--arch", default="cifar_resnet56", help="zoo architecture of --checkpoint")
    p.add_argument("--checkpoint", type=Path, default=paths["checkpoint"])
    p.add_argument("--train", type=Path, default=paths["train"], help="training images (zip, folder or .npz)")
    p.add_argument("--eval", type=Path, default=paths["eval"], help="evaluation images")
    p.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "simprune_gpu_check",
                   help="summary.txt, gpu_check.json and log.txt go here")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: OUT/work, removed after)")
    p.add_argument("--budget-s", type=float, default=None, help="whole check (default 290; --quick 4 x 290)")
    p.add_argument("--steps", default="A,B,C,D,E", help="steps to run, e.g. A,D")
    p.add_argument("--step", default=None, help=argparse.SUPPRESS)  # internal: run step D or E in this process
    args = p.parse_args(argv)
    args.budget_s = args.budget_s or (QUICK_SCALE * 290.0 if args.quick else 290.0)
    return args


def child_env() -> dict[str, str]:
    """The environment of every step: the checkout importable, unbuffered output, no display."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", MPLBACKEND="Agg")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def run_capped(argv: list[str], limit: float, log: Path) -> tuple[int, float]:
    """Run ``argv`` in its own process group for at most ``limit`` seconds (then SIGTERM, SIGKILL 5 s later);
    output appended to ``log``. Returns (exit code, or 124 on timeout; seconds)."""
    t0 = time.monotonic()
    with open(log, "ab") as fh:
        proc = subprocess.Popen(argv, cwd=ROOT, env=child_env(), stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            rc = 124
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return rc, time.monotonic() - t0


def _load(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


# --- the steps: each returns (argv to run capped, function turning its output into the summary fields) --------


def step_a(args: argparse.Namespace, work: Path) -> tuple[list[str], Callable[[], dict[str, Any]]]:
    out = work / "a"
    extra = (["--method", "l1", "--calib-samples", "64", "--eval-samples", "200", "--export", "safetensors"]
             if args.quick else ["--method", "recon", "--allocation", "sensitivity", "--sequential"])
    argv = [sys.executable, "-c", CLI, "prune", "--arch", args.arch, "--weights", str(args.checkpoint),
            "--target-flops-reduction", "0.5", "--calib", str(args.train), "--eval", str(args.eval),
            "--device", args.device, "--out", str(out), *extra]

    def summary() -> dict[str, Any]:
        r = _load(out / "report.json")
        return {"device": r.get("device"), "top1": [r.get("accuracy_before"), r.get("accuracy_after")],
                "flops_reduction": r.get("flops_reduction"), "total_s": r.get("timings", {}).get("total_s"),
                "exports_ok": [e.get("file") for e in r.get("exports", []) if e.get("ok", True)]} if r else {}

    return argv, summary


def step_b(args: argparse.Namespace, work: Path) -> tuple[list[str], Callable[[], dict[str, Any]]]:
    out = work / "ft.json"
    extra = (["--methods", "dense,l1", "--train-samples", "128", "--eval-samples", "128", "--calib-samples", "64",
              "--batch-size", "32"] if args.quick else ["--methods", "dense,recon", "--train-samples", "10000"])
    argv = [sys.executable, str(ROOT / "bench" / "finetune.py"), "--epochs", "1", "--device", args.device,
            "--arch", args.arch, "--checkpoint", str(args.checkpoint), "--train", str(args.train), "--eval",
            str(args.eval), "--cache", str(work / "ft-cache"), "--out", str(out), *extra]

    def summary() -> dict[str, Any]:
        r = _load(out)
        rows = {x["method"]: {"top1": [x["top1_before_ft"], x["top1_after_ft"]], "ft_s": x["finetune_s"]}
                for x in r.get("rows", [])}
        amp = "bf16/fp16 autocast (auto)" if r.get("device", "").startswith("cuda") else "off (CPU)"
        return {"device": r.get("device"), "amp": amp, "rows": rows} if r else {}

    return argv, summary


def step_c(args: argparse.Namespace, work: Path) -> tuple[list[str], Callable[[], dict[str, Any]]]:
    out = work / "lat.json"
    extra = (["--archs", args.arch, "--batches", "1", "--modes", "fp32", "--threads", "1"] if args.quick else
             ["--archs", "cifar_resnet56", "resnet50", "--batches", "1", "256", "--modes", "fp32", "bf16-compile",
              "--threads", "8", "--budget-s", "2"])
    argv = [sys.executable, str(ROOT / "bench" / "latency.py"), "--device", args.device, "--quick",
            "--methods", "simprune", "--round-to", "none", "--silent", "--out", str(out), *extra]

    def summary() -> dict[str, Any]:
        rows = _load(out).get("rows", [])
        return {"ms_speedup": {f"{r['arch']}/b{r['batch']}/{r.get('mode', 'fp32')}": [r["latency_ms"], r["speedup"]]
                               for r in rows if r["variant"] != "dense"}}

    return argv, summary


def step_internal(name: str, args: argparse.Namespace, work: Path) -> tuple[list[str], Callable[[], dict[str, Any]]]:
    out = work / f"{name}.json"
    argv = [sys.executable, str(Path(__file__).resolve()), "--step", name, "--device", args.device, "--arch",
            args.arch, "--checkpoint", str(args.checkpoint), "--train", str(args.train), "--eval", str(args.eval),
            "--work", str(work), "--out", str(out), *(["--quick"] if args.quick else [])]
    return argv, lambda: _load(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.step is not None:  # steps D and E run in a child process of the check
        return service_step(args) if args.step == "D" else oom_step(args)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("gpu_check: --device cuda: CUDA is not available on this machine (use --device cpu --quick for "
                  "the CPU rehearsal)", file=sys.stderr)
            return 2
    missing = [f"--{k} {getattr(args, k)}" for k in ("checkpoint", "train", "eval") if not getattr(args, k).exists()]
    if missing:
        print(f"gpu_check: not found: {'; '.join(missing)}", file=sys.stderr)
        return 2
    return run_all(args)


def run_all(args: argparse.Namespace) -> int:
    """Run the selected steps under their caps; one summary line each; 0 when all that ran passed."""
    args.out.mkdir(parents=True, exist_ok=True)
    work = (args.work or args.out / "work").resolve()
    work.mkdir(parents=True, exist_ok=True)
    log, deadline = args.out / "log.txt", time.monotonic() + args.budget_s
    wanted = {s.strip().upper() for s in args.steps.split(",")}
    builders = {"A": step_a, "B": step_b, "C": step_c, "D": lambda a, w: step_internal("D", a, w),
                "E": lambda a, w: step_internal("E", a, w)}
    scale = QUICK_SCALE if args.quick else 1  # the CPU rehearsal is slower per unit of work
    doc: dict[str, Any] = {"device": args.device, "quick": args.quick, "steps": {}}
    lines = []
    for name, cap, reserve in STEPS:
        key = name[0]
        if key not in wanted:
            continue
        if key == "E" and args.device != "cuda":
            res: dict[str, Any] = {"status": "skip", "why": "needs CUDA (tests/test_gpu_safety.py simulates it)"}
        else:
            limit = max(15.0, min(cap * scale, deadline - time.monotonic() - reserve * scale))
            cmd, summarise = builders[key](args, work)
            with open(log, "a") as fh:
                fh.write(f"===== {name} (limit {limit:.0f} s): {' '.join(cmd)}\n")
            rc, secs = run_capped(cmd, limit, log)
            res = {"status": "ok" if rc == 0 else ("timeout" if rc == 124 else "FAIL"), "rc": rc,
                   "s": round(secs, 1), "limit_s": round(limit), **summarise()}
        doc["steps"][name] = res
        lines.append(f"{name} {json.dumps(res, separators=(',', ':'), default=str)}")
        print(lines[-1], flush=True)
    (args.out / "summary.txt").write_text("\n".join(lines) + "\n")
    (args.out / "gpu_check.json").write_text(json.dumps(doc, indent=2, default=str))
    if args.work is None:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(s["status"] in ("ok", "skip") for s in doc["steps"].values()) else 1


# --- step D: the service with a worker on the device ----------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _workers(db: Path) -> list[dict[str, Any]]:
    """The service's worker registry (SQLite under the data dir): name, kind, jobs done, GPU memory."""
    import sqlite3

    con = sqlite3.connect(db, timeout=10)
    try:
        rows = con.execute("SELECT name, kind, gpu, jobs_done, gpu_memory FROM workers").fetchall()
    finally:
        con.close()
    return [{"name": n, "kind": k, "gpu": g, "jobs_done": j, "gpu_memory": json.loads(m) if m else None}
            for n, k, g, j, m in rows]


def _wait(what: str, check: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if got := check():
                return got
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{what} within {timeout:g} s")


def _job_specs(args: argparse.Namespace, train_id: str, eval_id: str) -> list[dict[str, Any]]:
    """The job sequence: fine-tuning, pruning only, fine-tuning (quick: the first two), on the device."""
    n_train, n_eval, bs = (32, 64, 16) if args.quick else (2000, 2000, 128)
    common = {"method": "l1", "target_flops_reduction": 0.5, "eval_dataset_id": eval_id, "eval_samples": n_eval,
              "exports": ["pt2"] if args.quick else ["pt2", "onnx", "safetensors"],
              "device": "cuda" if args.device == "cuda" else "auto"}
    ft = {**common, "train_dataset_id": train_id,
          "finetune": {"epochs": 1, "train_samples": n_train, "batch_size": bs}}
    return [ft, common] if args.quick else [ft, common, ft]


def _run_jobs(args: argparse.Namespace, url: str, db: Path, doc: dict[str, Any]) -> None:
    import torch

    from simprune.client import Client

    with Client(url, timeout=300) as c:
        model = c.upload_model(args.checkpoint, arch=args.arch)
        train, evals = c.upload_dataset(args.train), c.upload_dataset(args.eval)
        ids = []
        for spec in _job_specs(args, train["id"], evals["id"]):
            job = c.submit(model["id"], **spec)
            job = c.wait(job["id"], poll_interval=0.5, timeout=240, raise_on_failure=False)
            ids.append(job["id"])
            # the worker frees memory and counts the job just after it reports success
            _wait("the worker's bookkeeping", lambda n=len(ids): sum(w["jobs_done"] for w in _workers(db)) >= n, 20)
            res = job.get("result") or {}
            doc["jobs"].append({"status": job["status"], "error": job.get("error"), "device": res.get("device"),
                                "worker": (res.get("worker") or {}).get("name"),
                                "finetune": bool(spec.get("finetune")), "total_s": res.get("timings", {}).get(
                                    "total_s"), "workers_after": _workers(db)})
        first = doc["jobs"][0]
        if first["status"] == "succeeded":
            path = c.download(ids[0], "model.pt2", args.work / "model.pt2")
            module = torch.export.load(str(path)).module().to(args.device)
            out = module(torch.randn(2, 3, 32, 32, device=args.device))
            doc["pt2"] = {"ran_on": str(out.device), "shape": list(out.shape)}


def _tail(path: Path, n: int) -> str:
    """The last ``n`` characters of a text file ('' when it cannot be read)."""
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def service_step(args: argparse.Namespace) -> int:
    """``simprune serve`` with a worker on the device, the job sequence, then SIGTERM: no worker left."""
    data, port = args.work / "svc", _free_port()
    url, db = f"http://127.0.0.1:{port}", data / "simprune.db"
    doc: dict[str, Any] = {"ok": False, "jobs": []}
    env = {**child_env(), "SIMPRUNE_DEVICE": args.device, "SIMPRUNE_WORKER_HEARTBEAT_INTERVAL_S": "1",
           "SIMPRUNE_LOG_FORMAT": "text"}
    log = open(args.work / "service.log", "ab")  # noqa: SIM115 - closed below
    serve = subprocess.Popen([sys.executable, "-c", CLI, "serve", "--data-dir", str(data), "--no-auth", "--host",
                              "127.0.0.1", "--port", str(port), "--log-level", "warning"], cwd=ROOT, env=env,
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        import httpx

        _wait("the API", lambda: httpx.get(f"{url}/readyz", timeout=2).status_code == 200, 90)
        doc["registered"] = _wait("a registered worker", lambda: _workers(db), 90)
        _run_jobs(args, url, db, doc)
    except Exception as exc:  # noqa: BLE001 - the step reports what went wrong
        doc["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        kids = [int(c) for f in Path(f"/proc/{serve.pid}/task").glob("*/children") for c in f.read_text().split()]
        serve.send_signal(signal.SIGTERM)
        try:
            doc["serve_rc"] = serve.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)
            doc["serve_rc"] = "killed"
        time.sleep(1)
        doc["workers_left"] = [k for k in kids if Path(f"/proc/{k}").exists()]
        log.close()
        if "error" in doc:  # why the service did not come up or failed: its own last words
            doc["service_log_tail"] = _tail(args.work / "service.log", 1500)
    jobs_ok = bool(doc["jobs"]) and all(j["status"] == "succeeded" for j in doc["jobs"])
    doc["ok"] = jobs_ok and "pt2" in doc and not doc["workers_left"] and "error" not in doc
    args.out.write_text(json.dumps(doc, default=str))
    return 0 if doc["ok"] else 1


# --- step E: out of GPU memory, for real ---------------------------------------------------------------------


def _oom_job(args: argparse.Namespace, batch: int, out: Path) -> dict[str, Any]:
    """Run a fine-tuning job with ``batch``; the report's retries and peak memory, or its error."""
    import torch

    from simprune.errors import InputError
    from simprune.pipeline import PruneJob, run_prune_job

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    finetune = {"epochs": 1, "batch_size": batch, "train_samples": 4 * batch, "max_steps_per_epoch": 2,
                "distill": False} if batch else None
    job = PruneJob.build(arch=args.arch, weights=args.checkpoint, train=args.train if batch else None,
                         method="l1", pruning_ratio=0.3, exports=["safetensors"], device="cuda", finetune=finetune)
    try:
        report = run_prune_job(job, out)
        got: dict[str, Any] = {"ok": True, "oom_retries": report["oom_retries"]}
    except InputError as exc:
        got = {"ok": False, "error": str(exc)}
    got["peak_reserved_mib"] = round(torch.cuda.max_memory_reserved() / 2**20)
    return got


def oom_step(args: argparse.Namespace) -> int:
    """Calibrate peaks without a cap, then cap the memory so that batch B does not fit but B/2 does (retry
    succeeds), and below B/2 (clear failure)."""
    import torch

    big = 1024
    doc: dict[str, Any] = {"card": torch.cuda.get_device_name(0), "batch": big}
    total = torch.cuda.get_device_properties(0).total_memory
    base = _oom_job(args, 0, args.work / "e0")["peak_reserved_mib"]
    half = _oom_job(args, big // 2, args.work / "e1")["peak_reserved_mib"]
    doc["calibration_mib"] = {"no_finetune": base, f"batch_{big // 2}": half}
    for name, cap in (("retry_succeeds", half + 0.5 * (half - base)), ("fails_clearly", base + 0.3 * (half - base))):
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap * 2**20 / total))
        doc[name] = {"cap_mib": round(cap), **_oom_job(args, big, args.work / f"e_{name}")}
    torch.cuda.set_per_process_memory_fraction(1.0)
    ok = (doc["retry_succeeds"]["ok"] and doc["retry_succeeds"]["oom_retries"]
          and not doc["fails_clearly"]["ok"] and "out of GPU memory" in doc["fails_clearly"]["error"])
    doc["ok"] = bool(ok)
    args.out.write_text(json.dumps(doc, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
