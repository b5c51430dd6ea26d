"""Service benchmark: the same ResNet-56 job through the REST API vs the CLI, and API latency under load.

Runs standalone (starts its own ``simprune serve`` processes in a temp directory, embedded SQLite backend
unless SIMPRUNE_DATABASE_URL / SIMPRUNE_BROKER_URL are set) and prints a markdown table::

    .venv/bin/python bench/service.py [--checkpoint PATH] [--clients 50] [--requests 20] [--skip-job]
    .venv/bin/python bench/service.py --matrix [--clients 50] [--requests 40]

1. Overhead: wall time of ``simprune prune`` (a fresh process, as a user runs it) vs upload + submit + wait +
   download of model.pt2 over REST with a running worker (first job on a fresh worker and a second one).
2. Latency: ``--clients`` concurrent clients, each sending ``--requests`` GET /v1/jobs/{id} and then as many
   POST /v1/jobs (JSON on an uploaded model; the server runs without a worker so nothing is pruned).
3. ``--matrix``: GET /v1/jobs/{id} with ``--clients`` concurrent clients on the embedded default and on
   PostgreSQL + Redis (a fresh database, ``--pg``/``--redis``), each with its worker idle and with a job running
   (ResNet-56, l1, -50% FLOPs, then fine-tuning on 1,024 random images for up to 100 epochs: it runs through
   the measurement, on the same two cores, and is cancelled after it; a row says so if it ended early):
   p50/p99 and requests/s. The read rate limit stays on (its cost is measured) with a rate high enough not to
   refuse the benchmark.
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
    """``simprune serve --no-auth`` in a subprocess (optionally without its worker; with ``key``, a new API key
    made with ``simprune keys create``, authentication stays on)."""

    def __init__(self, data_dir: Path, worker: bool, env: dict[str, str] | None = None, auth: bool = False) -> None:
        self.port = _port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.key: str | None = None
        simprune = [sys.executable, "-c", "from simprune.cli import main; main()"]
        env = {**os.environ, **(env or {})}
        if auth:
            out = subprocess.run([*simprune, "keys", "create", "bench", "--data-dir", str(data_dir)], cwd=REPO,
                                 env=env, check=True, capture_output=True, text=True).stdout
            self.key = out.strip().splitlines()[-1]
        cmd = [*simprune, "serve", "--port", str(self.port), "--data-dir", str(data_dir), "--log-level", "warning"]
        if not auth:
            cmd.append("--no-auth")
        if not worker:
            cmd.append("--no-worker")
        self.log = open(data_dir.parent / f"serve-{self.port}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True, env=env)

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


class RawConnection:
    """One keep-alive HTTP/1.1 connection speaking just enough HTTP for GET: a load generator far lighter than
    httpx, whose connection pool costs several ms of CPU per request at 50 connections on this machine (the
    generator, not the server, was the bottleneck)."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        host_port = url.split("://", 1)[1]
        self.host, port = host_port.split(":")
        self.port = int(port)
        self.extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str) -> int:
        """Send GET ``path``; returns the status once the whole body was read."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n{self.extra}\r\n".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        length = next(int(v) for k, _, v in (h.partition(":") for h in lines[1:]) if k.lower() == "content-length")
        await self.reader.readexactly(length)
        return int(lines[0].split()[1])

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def get_load(url: str, job_id: str, clients: int, requests: int, interval: float = 0.0,
                   headers: dict[str, str] | None = None) -> tuple[list[float], float, int]:
    """GET /v1/jobs/{id} from ``clients`` concurrent connections, ``requests`` each, back to back (``interval``
    0: a closed loop, latency is then concurrency / throughput) or one every ``interval`` seconds per client
    (paced, like pollers): latencies (ms), requests per second over the run, and failed requests."""
    lat: list[float] = []
    errors = 0
    conns = [RawConnection(url, headers or {}) for _ in range(clients)]
    path = f"/v1/jobs/{job_id}"
    await asyncio.gather(*(c.get(path) for c in conns))  # open the connections

    async def one(conn: RawConnection, offset: float) -> None:
        nonlocal errors
        await asyncio.sleep(offset)
        next_at = time.perf_counter()
        for _ in range(requests):
            t = time.perf_counter()
            status = await conn.get(path)
            lat.append((time.perf_counter() - t) * 1000)
            errors += status != 200
            if interval:
                next_at += interval
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))

    start = time.perf_counter()
    await asyncio.gather(*(one(c, interval * i / clients) for i, c in enumerate(conns)))
    elapsed = time.perf_counter() - start
    await asyncio.gather(*(c.close() for c in conns))
    return lat, len(lat) / elapsed, errors


def _backends(pg: str, redis_url: str) -> list[tuple[str, dict[str, str], Any]]:
    """(label, environment, cleanup) for the embedded default and a fresh PostgreSQL database + Redis."""
    import secrets

    import psycopg

    name = f"simprune_bench_{secrets.token_hex(4)}"
    admin = psycopg.connect(pg, autocommit=True)
    admin.execute(f'CREATE DATABASE "{name}"')
    db_url = pg.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"

    def drop() -> None:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()

    fast_reads = {"SIMPRUNE_READ_RATE_PER_MIN": "1e9", "SIMPRUNE_READ_BURST": "1000000"}
    return [("embedded (SQLite + SQLite broker)", fast_reads, None),
            ("PostgreSQL + Redis", {**fast_reads, "SIMPRUNE_DATABASE_URL": db_url, "SIMPRUNE_BROKER_URL": redis_url,
                                    "SIMPRUNE_QUEUE": f"bench_{secrets.token_hex(3)}"}, drop)]


def _train_npz(root: Path) -> Path:
    """A small random CIFAR-shaped training set: fine-tuning on it keeps the worker busy for minutes."""
    import numpy as np

    path = root / "train.npz"
    if not path.exists():
        rng = np.random.default_rng(0)
        np.savez(path, x=rng.integers(0, 255, size=(1024, 32, 32, 3), dtype=np.uint8),
                 y=np.arange(1024, dtype=np.int64) % 10)
    return path


def latency_matrix(args: argparse.Namespace, root: Path) -> list[tuple[str, str]]:
    """GET /v1/jobs/{id} latency per backend, worker idle and busy (see the module docstring)."""
    from simprune.client import Client

    rows: list[tuple[str, str]] = []
    for label, env, cleanup in _backends(args.pg, args.redis):
        try:
            with Server(root / f"m-{len(rows)}", worker=True, env=env, auth=True) as srv, \
                    Client(srv.url, api_key=srv.key, timeout=600) as c:
                key = srv.key
                model = c.upload_model(args.checkpoint, arch=ARCH)
                first = c.submit(model["id"], METHOD, target_flops_reduction=0.3, exports=["safetensors"])
                first = c.wait(first["id"], poll_interval=0.5, timeout=1800)  # the worker is warm, then idle
                for state in ("worker idle", "job running"):
                    if state == "job running":
                        busy = c.submit(model["id"], METHOD, target_flops_reduction=TARGET, exports=["safetensors"],
                                        train_dataset_id=c.upload_dataset(_train_npz(root))["id"],
                                        finetune={"epochs": 100, "batch_size": 64})
                        while c.get_job(busy["id"])["status"] != "running":
                            time.sleep(0.2)
                        time.sleep(3)  # past the job's start-up
                    for mode, interval in (("closed loop", 0.0), (f"paced, 1 per {args.interval:g} s each",
                                                                  args.interval)):
                        lat, rps, errors = asyncio.run(get_load(srv.url, first["id"], args.clients, args.requests,
                                                                interval, {"Authorization": f"Bearer {key}"}))
                        running = state == "worker idle" or c.get_job(busy["id"])["status"] == "running"
                        rows.append((f"{label}, {state}, {mode}" + ("" if running else " (job ended during the run)"),
                                     f"p50 {statistics.median(lat):.1f} ms, p99 {pct(lat, 99):.1f} ms, {rps:.0f} "
                                     f"req/s ({len(lat)} requests{f', {errors} failed' if errors else ''})"))
                        print(rows[-1], file=sys.stderr)
                c.delete_job(busy["id"])  # cancels it if it still runs
        finally:
            if cleanup is not None:
                cleanup()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=DEFAULT_CKPT)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--requests", type=int, default=20, help="requests per client and endpoint")
    ap.add_argument("--skip-job", action="store_true", help="only measure API latency")
    ap.add_argument("--matrix", action="store_true", help="only the GET latency matrix (backends x worker state)")
    ap.add_argument("--pg", default=os.environ.get("SIMPRUNE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres"))
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/13")
    ap.add_argument("--interval", type=float, default=1.0,
                    help="seconds between a paced client's GETs (the client library polls once a second)")
    args = ap.parse_args()
    if not args.checkpoint.is_file():
        sys.exit(f"checkpoint not found: {args.checkpoint} (see ../shared/data/SOURCES.md)")
    backend = "PostgreSQL + Redis" if os.environ.get("SIMPRUNE_DATABASE_URL", "").startswith("postgres") \
        else "SQLite + SQLite broker (embedded)"
    rows: list[tuple[str, str]] = []
    if args.matrix:
        with tempfile.TemporaryDirectory(prefix="simprune-bench-") as tmp:
            rows = latency_matrix(args, Path(tmp))
        print(f"\n### GET /v1/jobs/{{id}}, {args.clients} concurrent clients x {args.requests} requests, with an API "
              f"key ({os.cpu_count()} CPUs, load average after {os.getloadavg()[0]:.2f})\n")
        print("| measurement | result |\n|---|---|")
        for k, v in rows:
            print(f"| {k} | {v} |")
        return
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
