"""Service benchmark: the same ResNet-56 job through the REST API vs the CLI, and API latency under load.

Runs standalone (starts its own ``simprune serve`` processes in a temp directory, embedded SQLite backend
unless SIMPRUNE_DATABASE_URL / SIMPRUNE_BROKER_URL are set) and prints a markdown table::

    .venv/bin/python bench/service.py [--checkpoint PATH] [--clients 50] [--requests 20] [--skip-job]

1. Overhead: wall time of ``simprune prune`` (a fresh process, as a user runs it) vs upload + submit + wait +
   download of model.pt2 over REST with a running worker (first job on a fresh worker and a second one).
2. Latency: ``--clients`` concurrent clients, each sending ``--requests`` GET /v1/jobs/{id} and then as many
   POST /v1/jobs (JSON on an uploaded model; the server runs without a worker so nothing is pruned).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CKPT = REPO.parent / "shared" / "data" / "checkpoints" / "resnet56-4bfd9763.th"
ARCH, METHOD, TARGET = "cifar_resnet56", "l1", 0.5


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``simprune serve --no-auth`` in a subprocess (optionally without its worker)."""

    def __init__(self, data_dir: Path, worker: bool) -> None:
        self.port = _port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-c", "from simprune.cli import main; main()", "serve", "--port", str(self.port),
               "--data-dir", str(data_dir), "--no-auth", "--log-level", "warning"]
        if not worker:
            cmd.append("--no-worker")
        self.log = open(data_dir.parent / f"serve-{self.port}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def __enter__(self) -> Server:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.3)
        raise RuntimeError(f"server did not start; see {self.log.name}")

    def __exit__(self, *exc: object) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()


def run_cli(ckpt: Path, out: Path) -> float:
    """Wall seconds of one ``simprune prune`` process."""
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "from simprune.cli import main; main()", "prune", "--arch", ARCH,
                    "--weights", str(ckpt), "--out", str(out), "--method", METHOD,
                    "--target-flops-reduction", str(TARGET), "--device", "cpu"],
                   cwd=REPO, check=True, capture_output=True)
    return time.perf_counter() - t


def run_rest(url: str, ckpt: Path, out: Path) -> tuple[float, dict[str, Any]]:
    """Wall seconds of upload + submit + wait + download model.pt2 through the client."""
    from simprune.client import Client

    t = time.perf_counter()
    with Client(url, timeout=300) as c:
        model = c.upload_model(ckpt, arch=ARCH)
        job = c.submit(model["id"], METHOD, target_flops_reduction=TARGET)
        job = c.wait(job["id"], poll_interval=0.1, timeout=1800)
        c.download(job["id"], "model.pt2", out)
    return time.perf_counter() - t, job


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * len(xs)) - 1))]


async def load(url: str, model_id: str, job_id: str, clients: int, requests: int) -> dict[str, list[float]]:
    """Latencies (ms) of GET /v1/jobs/{id} and POST /v1/jobs with ``clients`` concurrent clients."""
    lat: dict[str, list[float]] = {"GET /v1/jobs/{id}": [], "POST /v1/jobs": []}
    errors = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        async def one(kind: str) -> None:
            nonlocal errors
            for _ in range(requests):
                t = time.perf_counter()
                if kind.startswith("GET"):
                    r = await http.get(f"/v1/jobs/{job_id}")
                else:
                    r = await http.post("/v1/jobs", json={"model_id": model_id, "method": METHOD,
                                                          "target_flops_reduction": TARGET})
                lat[kind].append((time.perf_counter() - t) * 1000)
                errors += r.status_code >= 400

        for kind in lat:
            await asyncio.gather(*(one(kind) for _ in range(clients)))
    if errors:
        print(f"warning: {errors} requests failed", file=sys.stderr)
    return lat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=DEFAULT_CKPT)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--requests", type=int, default=20, help="requests per client and endpoint")
    ap.add_argument("--skip-job", action="store_true", help="only measure API latency")
    args = ap.parse_args()
    if not args.checkpoint.is_file():
        sys.exit(f"checkpoint not found: {args.checkpoint} (see ../shared/data/SOURCES.md)")
    backend = "PostgreSQL + Redis" if os.environ.get("SIMPRUNE_DATABASE_URL", "").startswith("postgres") \
        else "SQLite + SQLite broker (embedded)"
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="simprune-bench-") as tmp:
        root = Path(tmp)
        if not args.skip_job:
            cli_s = run_cli(args.checkpoint, root / "cli-out")
            with Server(root / "job-data", worker=True) as srv:
                cold_s, job = run_rest(srv.url, args.checkpoint, root / "rest1.pt2")
                warm_s, job2 = run_rest(srv.url, args.checkpoint, root / "rest2.pt2")
            engine_s = job2["result"].get("timings", {}).get("total_s")
            rows += [
                ("ResNet-56, l1, -50% FLOPs: CLI `simprune prune` (fresh process)", f"{cli_s:.1f} s"),
                ("same job over REST, first job on a fresh worker", f"{cold_s:.1f} s"),
                ("same job over REST, warm worker", f"{warm_s:.1f} s"),
                ("engine time inside the worker (report timings.total_s)",
                 f"{engine_s:.1f} s" if engine_s is not None else "n/a"),
                ("overhead ratio REST(warm) / CLI", f"{warm_s / cli_s:.2f}"),
                ("overhead ratio REST(first) / CLI", f"{cold_s / cli_s:.2f}"),
            ]
        with Server(root / "lat-data", worker=False) as srv:
            from simprune.client import Client

            with Client(srv.url) as c:
                model = c.upload_model(args.checkpoint, arch=ARCH)
                job = c.submit(model["id"], METHOD, target_flops_reduction=TARGET)
            lat = asyncio.run(load(srv.url, model["id"], job["id"], args.clients, args.requests))
        for kind, xs in lat.items():
            rows.append((f"{kind} latency, {args.clients} concurrent clients, {len(xs)} requests",
                         f"p50 {statistics.median(xs):.1f} ms, p99 {pct(xs, 99):.1f} ms"))
    print(f"\n### simprune service benchmark ({backend}, {os.cpu_count()} CPUs)\n")
    print("| measurement | result |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")


if __name__ == "__main__":
    main()
