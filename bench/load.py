"""Load benchmark: N jobs (default 200) submitted in one burst to a real API process with two real worker
processes on PostgreSQL + Redis. Checks none is lost (all reach a final state, all succeed) and none runs
twice (every job has attempts == 1 and exactly one set of artifacts), and measures API latency (p50/p99 of
POST /v1/jobs during the burst and of GET /v1/jobs/{id} while the workers drain the queue). Prints a
markdown table.

    .venv/bin/python bench/load.py [--jobs 200] [--workers 2] [--clients 20]
        [--pg postgresql://postgres@127.0.0.1:5432/postgres] [--redis redis://127.0.0.1:6379/14]

Each job is tiny (random-init cifar_resnet20, L1 pruning 30%, safetensors export only), so the run takes a
few minutes on a CPU box; a fresh database is created and dropped, and the benchmark uses its own queue.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "service"))
sys.path.insert(0, str(REPO / "tests" / "reliability"))


def pct(values: list[float], q: float) -> float:
    vals = sorted(values)
    return vals[min(len(vals) - 1, int(round(q / 100 * (len(vals) - 1))))] * 1000 if vals else float("nan")


async def burst(url: str, key: str, model_id: str, n: int, clients: int) -> tuple[list[str], list[float]]:
    """Submit ``n`` jobs with ``clients`` concurrent connections; returns job ids and request latencies."""
    sem = asyncio.Semaphore(clients)
    lat: list[float] = []
    body = {"model_id": model_id, "method": "l1", "pruning_ratio": 0.3, "exports": ["safetensors"]}
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as c:

        async def one(i: int) -> str:
            async with sem:
                t = time.perf_counter()
                r = await c.post("/v1/jobs", json=body, headers={"Idempotency-Key": f"load-{i}"})
                lat.append(time.perf_counter() - t)
                r.raise_for_status()
                return str(r.json()["id"])

        ids = await asyncio.gather(*(one(i) for i in range(n)))
    return list(ids), lat


TRANSPORT_ERRORS: list[str] = []
"""GETs that failed at the transport level and were retried (reported in the summary)."""


async def poll_all(url: str, key: str, ids: list[str], timeout: float) -> tuple[dict[str, Any], list[float]]:
    """Poll every job until all are final; returns the final jobs and GET latencies."""
    lat: list[float] = []
    final: dict[str, Any] = {}
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
        while len(final) < len(ids) and time.monotonic() < deadline:
            pending = [i for i in ids if i not in final][:20]

            async def get(job_id: str) -> None:
                for attempt in range(3):  # a keep-alive connection the server just closed: retry once or twice
                    t = time.perf_counter()
                    try:
                        r = await c.get(f"/v1/jobs/{job_id}")
                        break
                    except httpx.TransportError:
                        TRANSPORT_ERRORS.append(job_id)
                        if attempt == 2:
                            raise
                        await asyncio.sleep(0.2)
                lat.append(time.perf_counter() - t)
                j = r.json()
                if j["status"] in ("succeeded", "failed", "cancelled"):
                    final[job_id] = j

            await asyncio.gather(*(get(i) for i in pending))
            await asyncio.sleep(0.5)
    return final, lat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--pg", default=os.environ.get("SIMPRUNE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres"))
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/14")
    ap.add_argument("--timeout", type=float, default=1800)
    args = ap.parse_args()

    import psycopg
    import torch
    from procs import api_proc, wait_http, worker_proc
    from service_helpers import free_port, new_key
    from sqlalchemy import func, select

    from app.core.config import Settings
    from app.core.db import dispose_engine, session_scope, upgrade_database
    from app.models import Artifact
    from simprune.checkpoint import save_state_dict
    from simprune.zoo import build_model

    name = f"simprune_load_{secrets.token_hex(4)}"
    admin = psycopg.connect(args.pg, autocommit=True)
    admin.execute(f'CREATE DATABASE "{name}"')
    db_url = args.pg.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    tmp = Path(tempfile.mkdtemp(prefix="simprune-load-"))
    procs = []
    try:
        s = Settings(data_dir=tmp / "data", database_url=db_url, broker_url=args.redis, queue=f"load_{name}",
                     device="cpu", job_burst=args.jobs * 2, job_rate_per_min=60_000.0)
        s.ensure_dirs()
        upgrade_database(db_url)
        key = new_key(s)
        torch.manual_seed(0)
        ckpt = save_state_dict(build_model("cifar_resnet20", num_classes=10).state_dict(), tmp / "r20.safetensors")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        procs.append(api_proc(s, port).start())
        wait_http(f"{url}/healthz")
        for i in range(args.workers):
            procs.append(worker_proc(s, f"worker{i}").start())
        with open(ckpt, "rb") as fh:
            model = httpx.post(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=120,
                               data={"arch": "cifar_resnet20"}, files={"file": ("r20.safetensors", fh)}).json()
        t0 = time.perf_counter()
        ids, post_lat = asyncio.run(burst(url, key, model["id"], args.jobs, args.clients))
        t_submit = time.perf_counter() - t0
        final, get_lat = asyncio.run(poll_all(url, key, ids, args.timeout))
        t_total = time.perf_counter() - t0
        statuses = [final[i]["status"] for i in ids if i in final]
        with session_scope(db_url) as db:
            per_job = dict(db.execute(select(Artifact.job_id, func.count()).group_by(Artifact.job_id)).all())
        lost = len(ids) - len(final)
        twice = sum(1 for j in final.values() if j["attempts"] != 1)
        sets = {len(j["artifacts"]) for j in final.values()}
        rows = [
            ("jobs submitted (burst)", f"{len(ids)} in {t_submit:.1f} s"),
            ("workers", str(args.workers)),
            ("succeeded / failed / cancelled",
             f"{statuses.count('succeeded')} / {statuses.count('failed')} / {statuses.count('cancelled')}"),
            ("lost (never finished)", str(lost)),
            ("run twice (attempts != 1)", str(twice)),
            ("artifact rows per job (DB)", ", ".join(map(str, sorted(set(per_job.values())))) or "-"),
            ("artifacts per job (API)", ", ".join(map(str, sorted(sets)))),
            ("drain time (all final)", f"{t_total:.1f} s ({len(final) / t_total:.2f} jobs/s)"),
            ("POST /v1/jobs p50 / p99 (burst)", f"{pct(post_lat, 50):.1f} / {pct(post_lat, 99):.1f} ms"),
            ("GET /v1/jobs/{id} p50 / p99 (under load)", f"{pct(get_lat, 50):.1f} / {pct(get_lat, 99):.1f} ms"),
            ("GET requests measured", str(len(get_lat))),
            ("GETs retried after a transport error", str(len(TRANSPORT_ERRORS))),
        ]
        print(f"\n### Load: {args.jobs} jobs, {args.workers} workers, {args.clients} concurrent clients "
              f"(PostgreSQL + Redis, cifar_resnet20 L1 30%, {os.cpu_count()} CPU cores)\n")
        print("| metric | value |\n|---|---|")
        for k, v in rows:
            print(f"| {k} | {v} |")
        if lost or twice or statuses.count("succeeded") != len(ids):
            print(f"\nFAILED: lost={lost} twice={twice} mean={statistics.mean(post_lat):.3f}", file=sys.stderr)
            sys.exit(1)
    finally:
        for p in procs:
            p.stop()
        dispose_engine(db_url)
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
        import redis

        r = redis.Redis.from_url(args.redis)
        for k in r.scan_iter(f"load_{name}*"):
            r.delete(k)
        subprocess.run(["rm", "-rf", str(tmp)], check=False)


if __name__ == "__main__":
    main()
