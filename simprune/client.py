"""Python client for the simprune REST service (httpx).

Example::

    from simprune.client import Client

    with Client("http://localhost:8000", api_key="sp_...") as c:
        model = c.upload_model("resnet56.safetensors", arch="cifar_resnet56")
        job = c.submit(model["id"], method="l1", target_flops_reduction=0.5)
        job = c.wait(job["id"], progress=lambda j: print(j["stage"], j["progress"]))
        c.download(job["id"], "model.pt2", "out/model.pt2")
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from simprune.errors import SimpruneError

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


class ApiError(SimpruneError):
    """The server answered with an error; ``status`` and the problem+json ``problem`` body are attached."""

    def __init__(self, status: int, problem: dict[str, Any], response: httpx.Response | None = None) -> None:
        self.status = status
        self.problem = problem
        self.response = response
        title = problem.get("title") or "error"
        detail = problem.get("detail") or ""
        super().__init__(f"HTTP {status} {title}: {detail}".rstrip(": "))


class JobFailed(ApiError):
    """:meth:`Client.wait` saw the job end as failed or cancelled (``problem`` holds the job)."""


class Client:
    """A small client: uploads, jobs, progress and artifacts. Use as a context manager or call :meth:`close`."""

    def __init__(self, server: str | None = None, api_key: str | None = None, timeout: float = 60.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        server = server or os.environ.get("SIMPRUNE_SERVER") or "http://127.0.0.1:8000"
        api_key = api_key if api_key is not None else os.environ.get("SIMPRUNE_API_KEY")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=server.rstrip("/"), headers=headers,
                                  timeout=httpx.Timeout(timeout, connect=10.0), transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            resp = self._http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiError(0, {"title": "connection error", "detail": f"{type(exc).__name__}: {exc}"}) from exc
        if resp.status_code >= 400:
            try:
                body = resp.json()
                if not isinstance(body, dict):
                    body = {"detail": body}
            except ValueError:
                body = {"detail": resp.text[:500]}
            body.setdefault("status", resp.status_code)
            raise ApiError(resp.status_code, body, resp)
        return resp

    def _json(self, method: str, url: str, **kwargs: Any) -> Any:
        return self._request(method, url, **kwargs).json()

    # catalogue ---------------------------------------------------------------------------------------------
    def list_methods(self) -> list[dict[str, Any]]:
        """The pruning methods the server offers."""
        return self._json("GET", "/v1/methods")["items"]

    def list_architectures(self) -> list[dict[str, Any]]:
        """The architectures the server supports."""
        return self._json("GET", "/v1/architectures")["items"]

    # uploads -----------------------------------------------------------------------------------------------
    def upload_model(self, path: str | Path, arch: str, num_classes: int | None = None,
                     input_size: tuple[int, ...] | None = None, mean: tuple[float, ...] | None = None,
                     std: tuple[float, ...] | None = None) -> dict[str, Any]:
        """Upload a checkpoint for ``arch``; returns the model (id, params, flops, sha256, ...)."""
        data: dict[str, str] = {"arch": arch}
        for key, val in (("input_size", input_size), ("mean", mean), ("std", std)):
            if val is not None:
                data[key] = ",".join(str(v) for v in val)
        if num_classes is not None:
            data["num_classes"] = str(num_classes)
        p = Path(path)
        with open(p, "rb") as fh:
            return self._json("POST", "/v1/models", data=data, files={"file": (p.name, fh)})

    def upload_dataset(self, path: str | Path) -> dict[str, Any]:
        """Upload an ImageFolder ``.zip`` or a ``.npz``; returns the dataset (id, samples, classes, ...)."""
        p = Path(path)
        with open(p, "rb") as fh:
            return self._json("POST", "/v1/datasets", files={"file": (p.name, fh)})

    # jobs --------------------------------------------------------------------------------------------------
    def submit(self, model_id: str, method: str, target_flops_reduction: float | None = None,
               pruning_ratio: float | str | None = None, idempotency_key: str | None = None,
               **fields: Any) -> dict[str, Any]:
        """Queue a job on an uploaded model; extra ``fields`` as in ``POST /v1/jobs`` (options, datasets...)."""
        body: dict[str, Any] = {"model_id": model_id, "method": method, **fields}
        if target_flops_reduction is not None:
            body["target_flops_reduction"] = target_flops_reduction
        if pruning_ratio is not None:
            body["pruning_ratio"] = pruning_ratio
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._json("POST", "/v1/jobs", json=body, headers=headers)

    def get_job(self, job_id: str) -> dict[str, Any]:
        """The job's current state."""
        return self._json("GET", f"/v1/jobs/{job_id}")

    def list_jobs(self, status: str | None = None, cursor: str | None = None, limit: int = 50) -> dict[str, Any]:
        """One page of jobs: ``{"items": [...], "next_cursor": ...}``."""
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        if cursor:
            params["cursor"] = cursor
        return self._json("GET", "/v1/jobs", params=params)

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Ask the server to cancel the job."""
        return self._json("POST", f"/v1/jobs/{job_id}/cancel")

    def wait(self, job_id: str, progress: Callable[[dict[str, Any]], None] | None = None,
             poll_interval: float = 1.0, timeout: float | None = None, raise_on_failure: bool = True
             ) -> dict[str, Any]:
        """Poll until the job ends; ``progress(job)`` after every poll. Raises :class:`JobFailed` if it did not
        succeed (unless ``raise_on_failure=False``) and ``TimeoutError`` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get_job(job_id)
            if progress is not None:
                progress(job)
            if job["status"] in TERMINAL:
                if raise_on_failure and job["status"] != "succeeded":
                    raise JobFailed(200, {"title": f"job {job['status']}", "detail": job.get("error") or "",
                                          "job": job})
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout} s")
            time.sleep(poll_interval)

    def download(self, job_id: str, name: str, dest: str | Path) -> Path:
        """Stream artifact ``name`` of the job to ``dest`` (a file path, or a directory to put it in)."""
        dest = Path(dest)
        if dest.is_dir():
            dest = dest / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.part")
        try:
            with self._http.stream("GET", f"/v1/jobs/{job_id}/artifacts/{name}") as resp:
                if resp.status_code >= 400:
                    resp.read()
                    try:
                        body = resp.json()
                    except ValueError:
                        body = {"detail": resp.text[:500]}
                    raise ApiError(resp.status_code, body, resp)
                with open(tmp, "wb") as out:
                    for chunk in resp.iter_bytes(1024 * 1024):
                        out.write(chunk)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        return dest
