"""Python client for the simprune REST service (httpx).

Example::

    from simprune.client import Client

    with Client("http://localhost:8000", api_key="sp_...") as c:
        model = c.upload_model("resnet56.safetensors", arch="cifar_resnet56")
        job = c.submit(model["id"], method="l1", target_flops_reduction=0.5)
        job = c.wait(job["id"], progress=lambda j: print(j["stage"], j["progress"]))
        c.download(job["id"], "model.pt2", "out/model.pt2")

Every verb of the REST API has a method: ``list_models``/``list_datasets``/``list_jobs`` (one page) and
``iter_*`` (every page), ``get_*``, ``delete_*``, ``find_model``/``find_dataset``/``find_device_profile`` (by
content hash, so an upload can be reused), ``upload_device_profile`` (a ``simprune profile`` file, for
``submit(..., target_speedup=2.0, device_profile_id=...)``), ``cancel``, ``events`` (the job's server-sent
events as an iterator), ``wait`` and ``download``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from simprune.errors import SimpruneError

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
KEY_HINT = ("the API key goes in --api-key or the SIMPRUNE_API_KEY environment variable (Client(api_key=...)); "
            "create one with `simprune keys create NAME` on the server")
RETRIES_429 = 3
"""How often a request without a body is retried after a 429 (waiting the Retry-After seconds, at most 30)."""


class ApiError(SimpruneError):
    """The server answered with an error; ``status`` and the problem+json ``problem`` body are attached."""

    def __init__(self, status: int, problem: dict[str, Any], response: httpx.Response | None = None) -> None:
        self.status = status
        self.problem = problem
        self.response = response
        title = problem.get("title") or "error"
        detail = problem.get("detail") or ""
        if status == 401:
            detail = f"{detail} ({KEY_HINT})" if detail else KEY_HINT
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
        for attempt in range(RETRIES_429 + 1):
            try:
                resp = self._http.request(method, url, **kwargs)
            except httpx.HTTPError as exc:
                raise ApiError(0, {"title": "connection error", "detail": f"{type(exc).__name__}: {exc}"}) from exc
            if resp.status_code != 429 or attempt == RETRIES_429 or "files" in kwargs:
                break
            time.sleep(_retry_after(resp))
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

    def list_architectures(self, search: str | None = None) -> list[dict[str, Any]]:
        """The architectures the server supports (every page), optionally only those matching ``search``."""
        items: list[dict[str, Any]] = []
        offset: int | None = 0
        while offset is not None:
            params: dict[str, Any] = {"offset": offset, "limit": 500}
            if search:
                params["search"] = search
            page = self._json("GET", "/v1/architectures", params=params)
            items.extend(page["items"])
            offset = page.get("next_offset")
        return items

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

    def upload_device_profile(self, path: str | Path, name: str | None = None) -> dict[str, Any]:
        """Upload a device latency profile (``simprune profile`` output); returns its metadata (id, arch,
        input_size, device...). ``name`` labels it (default: the file name without its extension)."""
        p = Path(path)
        with open(p, "rb") as fh:
            return self._json("POST", "/v1/device-profiles", data={"name": name} if name else {},
                              files={"file": (p.name, fh, "application/json")})

    def list_models(self, cursor: str | None = None, limit: int = 50) -> dict[str, Any]:
        """One page of models: ``{"items": [...], "next_cursor": ...}``."""
        return self._json("GET", "/v1/models", params=_page_params(cursor, limit))

    def list_datasets(self, cursor: str | None = None, limit: int = 50) -> dict[str, Any]:
        """One page of datasets: ``{"items": [...], "next_cursor": ...}``."""
        return self._json("GET", "/v1/datasets", params=_page_params(cursor, limit))

    def list_device_profiles(self, cursor: str | None = None, limit: int = 50) -> dict[str, Any]:
        """One page of device profiles: ``{"items": [...], "next_cursor": ...}``."""
        return self._json("GET", "/v1/device-profiles", params=_page_params(cursor, limit))

    def iter_models(self) -> Iterator[dict[str, Any]]:
        """Every model of the tenant, newest first (pages through the list)."""
        return self._iter_pages(self.list_models)

    def iter_datasets(self) -> Iterator[dict[str, Any]]:
        """Every dataset of the tenant, newest first."""
        return self._iter_pages(self.list_datasets)

    def iter_device_profiles(self) -> Iterator[dict[str, Any]]:
        """Every device profile of the tenant, newest first."""
        return self._iter_pages(self.list_device_profiles)

    def iter_jobs(self, status: str | None = None) -> Iterator[dict[str, Any]]:
        """Every job of the tenant (optionally only those with ``status``), newest first."""
        return self._iter_pages(lambda cursor, limit: self.list_jobs(status=status, cursor=cursor, limit=limit))

    @staticmethod
    def _iter_pages(fetch: Callable[[str | None, int], dict[str, Any]]) -> Iterator[dict[str, Any]]:
        cursor: str | None = None
        while True:
            page = fetch(cursor, 100)
            yield from page["items"]
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def get_model(self, model_id: str) -> dict[str, Any]:
        """One model."""
        return self._json("GET", f"/v1/models/{model_id}")

    def get_dataset(self, dataset_id: str) -> dict[str, Any]:
        """One dataset."""
        return self._json("GET", f"/v1/datasets/{dataset_id}")

    def get_device_profile(self, profile_id: str) -> dict[str, Any]:
        """One device profile: its metadata and, under ``profile``, the profile itself."""
        return self._json("GET", f"/v1/device-profiles/{profile_id}")

    def delete_model(self, model_id: str) -> None:
        """Delete a model and its file (409 while an active job uses it)."""
        self._request("DELETE", f"/v1/models/{model_id}")

    def delete_dataset(self, dataset_id: str) -> None:
        """Delete a dataset and its file (409 while an active job uses it)."""
        self._request("DELETE", f"/v1/datasets/{dataset_id}")

    def delete_device_profile(self, profile_id: str) -> None:
        """Delete a device profile (409 while an active job uses it)."""
        self._request("DELETE", f"/v1/device-profiles/{profile_id}")

    def find_model(self, sha256: str, arch: str | None = None) -> dict[str, Any] | None:
        """An uploaded model with this content hash (and architecture), or None."""
        return next((m for m in self.iter_models() if m["sha256"] == sha256 and arch in (None, m["arch"])), None)

    def find_dataset(self, sha256: str) -> dict[str, Any] | None:
        """An uploaded dataset with this content hash, or None."""
        return next((d for d in self.iter_datasets() if d["sha256"] == sha256), None)

    def find_device_profile(self, sha256: str) -> dict[str, Any] | None:
        """An uploaded device profile with this content hash, or None."""
        return next((p for p in self.iter_device_profiles() if p["sha256"] == sha256), None)

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

    def delete_job(self, job_id: str) -> None:
        """Delete a job and its artifacts (a queued or running job is cancelled); later requests answer 410."""
        self._request("DELETE", f"/v1/jobs/{job_id}")

    def events(self, job_id: str, reconnect: bool = True) -> Iterator[tuple[str, dict[str, Any]]]:
        """The job's server-sent events as ``(event, data)``: ``progress`` on every change, then one ``end``.
        A dropped stream is reopened (unless ``reconnect=False``) until the ``end`` event."""
        while True:
            try:
                with self._http.stream("GET", f"/v1/jobs/{job_id}/events", timeout=httpx.Timeout(
                        10.0, read=60.0)) as resp:
                    if resp.status_code >= 400:
                        resp.read()
                        raise ApiError(resp.status_code, _problem_body(resp), resp)
                    for event, data in parse_sse(resp.iter_lines()):
                        yield event, data
                        if event == "end":
                            return
            except httpx.HTTPError as exc:
                if not reconnect:
                    raise ApiError(0, {"title": "connection error", "detail": str(exc)}) from exc
            if not reconnect:
                return
            time.sleep(1.0)

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
                    raise ApiError(resp.status_code, _problem_body(resp), resp)
                with open(tmp, "wb") as out:
                    for chunk in resp.iter_bytes(1024 * 1024):
                        out.write(chunk)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        return dest

    def download_all(self, job_id: str, dest: str | Path) -> list[Path]:
        """Every artifact of the job into directory ``dest``."""
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        return [self.download(job_id, a["name"], dest / a["name"]) for a in self.get_job(job_id)["artifacts"]]


def _page_params(cursor: str | None, limit: int) -> dict[str, Any]:
    return {"limit": limit, **({"cursor": cursor} if cursor else {})}


def _retry_after(resp: httpx.Response) -> float:
    try:
        return min(max(float(resp.headers.get("Retry-After", "1")), 0.1), 30.0)
    except ValueError:
        return 1.0


def _problem_body(resp: httpx.Response) -> dict[str, Any]:
    try:
        body = resp.json()
    except ValueError:
        return {"detail": resp.text[:500]}
    return body if isinstance(body, dict) else {"detail": body}


def parse_sse(lines: Iterator[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(event, data)`` for each server-sent event in ``lines`` whose data is JSON (comments are skipped)."""
    event, data = "message", ""
    for line in lines:
        if not line:
            if data:
                yield event, json.loads(data)
            event, data = "message", ""
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data += line[5:].strip()


def sha256_file(path: str | Path) -> str:
    """The hex SHA-256 of a file (what the server reports as a model's or dataset's ``sha256``)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1024 * 1024):
            h.update(chunk)
    return h.hexdigest()
