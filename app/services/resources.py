"""Creating models and datasets from uploads, shared by the models/datasets routes and the one-call job submit.

The upload is already a temp file; it is validated by the engine (safe load, architecture fit), then moved
into storage and recorded. Whatever fails, the caller's ``ParsedForm.cleanup()`` removes the temp file, and a
stored file whose database row could not be committed is deleted again.

A checkpoint is inspected (loaded, built, run once to count FLOPs) by :class:`Inspector`: a separate,
long-lived process with a memory limit, given ``inspect_timeout_s`` per checkpoint and restarted when it
exceeds it, so a costly or hostile upload never runs in the API process. The input size the client names is
checked against the architecture's first (each side at most ``max_input_scale`` times the architecture's).
Uploads count against the tenant's storage quota (``tenant_quota_bytes``).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from select import select as wait_readable
from typing import Any

from fastapi.concurrency import run_in_threadpool
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.api.limits import JsonLimits, finite_float, loads_limited
from app.api.problems import Problem
from app.core.config import Settings
from app.models import Artifact, Dataset, DeviceProfile, Job, Model, new_id
from app.services import catalog
from app.services.uploads import ParsedForm, UploadedFile, safe_suffix
from app.storage import Storage
from simprune.errors import InputError, UnsafeInputError
from simprune.profiles import parse_profile

DATASET_SUFFIXES = (".zip", ".npz")


MAX_LIST_VALUES = 16
"""mean/std/input_size: at most this many values (channels, or the input's dimensions)."""
MAX_INPUT_DIM = 1 << 16


def _int_field(fields: dict[str, str], name: str) -> int | None:
    raw = fields.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise Problem(422, f"'{name}' must be an integer, got {raw[:40]!r}", "validation-error") from None
    if value <= 0 or value > 1_000_000:
        raise Problem(422, f"'{name}' must be in [1, 1000000]", "validation-error")
    return value


def _list_field(fields: dict[str, str], name: str, cast: type, settings: Settings) -> list[Any] | None:
    """A list given as JSON (``[3, 32, 32]``) or comma-separated (``3,32,32``); numbers must be finite."""
    raw = fields.get(name, "").strip()
    if not raw:
        return None
    if raw.startswith("["):
        value = loads_limited(raw, JsonLimits.from_settings(settings), name)
        if not isinstance(value, list):
            raise Problem(422, f"'{name}' must be a list of numbers", "validation-error")
    else:
        value = [x.strip() for x in raw.split(",") if x.strip()]
    if not value:
        raise Problem(422, f"'{name}' must not be empty", "validation-error")
    if len(value) > MAX_LIST_VALUES:
        raise Problem(422, f"'{name}' has {len(value)} values; at most {MAX_LIST_VALUES}", "validation-error")
    out: list[Any] = []
    for x in value:
        if isinstance(x, bool) or not isinstance(x, int | float | str):
            raise Problem(422, f"'{name}' must be a list of numbers", "validation-error")
        number = finite_float(str(x), name)
        if cast is int:
            if number != int(number) or not 0 < number <= MAX_INPUT_DIM:
                raise Problem(422, f"'{name}' must hold positive integers up to {MAX_INPUT_DIM}, got {str(x)[:20]}",
                              "validation-error")
            number = int(number)
        out.append(number)
    return out


def check_input_size(arch: str, input_size: tuple[int, ...] | None, max_scale: float) -> None:
    """422-worthy :class:`InputError` unless ``input_size`` has the architecture's number of dimensions and
    each spatial side is at most ``max_scale`` times the architecture's (the cost of inspecting a model grows
    with the input's area)."""
    if input_size is None:
        return
    native = [int(x) for x in catalog.arch_info(arch)["input_size"]]
    if len(input_size) != len(native):
        raise InputError(f"input_size {list(input_size)} must have {len(native)} values (channels and "
                         f"{len(native) - 1} spatial sides) for {arch}, like {native}")
    if input_size[0] > 64:
        raise InputError(f"input_size {list(input_size)}: at most 64 input channels")
    for side, base in zip(input_size[1:], native[1:], strict=True):
        if side > max_scale * base:
            raise InputError(f"input_size {list(input_size)} is too large for {arch}: each side may be at most "
                             f"{max_scale:g} x the architecture's {native[1:]}")


def inspect_bounded(path: Path, arch: str, num_classes: int | None, input_size: tuple[int, ...] | None,
                    max_bytes: int, max_scale: float) -> dict[str, Any]:
    """Check the input size against ``arch``, then :func:`catalog.inspect_checkpoint` (the inspector's work);
    an ``.onnx`` upload (``arch`` "onnx") is the architecture itself: :func:`catalog.inspect_onnx`."""
    if arch == "onnx":
        return catalog.inspect_onnx(path, max_bytes)
    check_input_size(arch, input_size, max_scale)
    return catalog.inspect_checkpoint(path, arch, num_classes, input_size, max_bytes)


# --- the inspection process -----------------------------------------------------------------------------------

_STARTUP_TIMEOUT_S = 180.0


class InspectionLimit(InputError):
    """The inspection ran out of time or memory."""


class Inspector:
    """A child process running :func:`inspect_bounded` on request (JSON lines over its stdin/stdout), one
    checkpoint at a time, under an address-space limit (``inspect_memory_bytes`` beyond what the child uses
    after its imports) and ``inspect_timeout_s`` per checkpoint; a child that overruns or dies is killed and
    the next request starts a new one. Requests wait their turn on an asyncio lock, not in the thread pool."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._proc: subprocess.Popen[bytes] | None = None
        self._buf = b""
        self._lock = threading.Lock()
        self._alock: asyncio.Lock | None = None

    def _start(self) -> subprocess.Popen[bytes]:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "SIMPRUNE_INSPECT_MEMORY_BYTES": str(self.settings.inspect_memory_bytes)}
        proc = subprocess.Popen(
            [sys.executable, "-c", "from app.services.resources import inspector_main; inspector_main()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, start_new_session=True,
            cwd=str(Path(__file__).resolve().parents[2]))
        self._proc, self._buf = proc, b""
        ready = self._read_line(_STARTUP_TIMEOUT_S)
        if ready != {"ready": True}:
            self._kill()
            raise RuntimeError(f"the inspection process did not start: {ready}")
        return proc

    def _read_line(self, timeout: float) -> dict[str, Any] | None:
        """The child's next JSON line; None when it exited; TimeoutError after ``timeout`` seconds."""
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            if wait_readable([fd], [], [], left)[0]:
                chunk = os.read(fd, 65536)
                if not chunk:
                    return None
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return json.loads(line)

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        """Stop the child (it also exits on its own when the API process goes away: its stdin closes)."""
        with self._lock:
            self._kill()

    def inspect(self, path: Path, arch: str, num_classes: int | None, input_size: tuple[int, ...] | None,
                max_bytes: int) -> dict[str, Any]:
        """The checkpoint's description, or InputError/UnsafeInputError (InspectionLimit when it overran)."""
        request = {"path": str(path), "arch": arch, "num_classes": num_classes,
                   "input_size": list(input_size) if input_size else None, "max_bytes": max_bytes,
                   "max_scale": self.settings.max_input_scale}
        timeout = self.settings.inspect_timeout_s
        with self._lock:
            proc = self._proc if self._proc is not None and self._proc.poll() is None else self._start()
            assert proc.stdin is not None
            try:
                proc.stdin.write(json.dumps(request).encode() + b"\n")
                proc.stdin.flush()
                reply = self._read_line(timeout)
            except TimeoutError:
                self._kill()
                raise InspectionLimit(f"inspecting the checkpoint took longer than {timeout:g} s; the model is "
                                      "too costly for its input size") from None
            except (BrokenPipeError, ValueError):
                reply = None
            if reply is None:
                code = proc.poll()
                self._kill()
                raise InspectionLimit(f"the checkpoint could not be inspected: the inspection process stopped "
                                      f"(exit code {code}), e.g. out of memory") from None
        if "ok" in reply:
            return reply["ok"]
        error = {"unsafe": UnsafeInputError, "limit": InspectionLimit}.get(reply.get("error", ""), InputError)
        raise error(str(reply.get("message", "the checkpoint could not be inspected")))

    async def run(self, *args: Any) -> dict[str, Any]:
        """:meth:`inspect` from async code: waits its turn without holding a thread."""
        if self._alock is None:
            self._alock = asyncio.Lock()
        async with self._alock:
            return await run_in_threadpool(self.inspect, *args)


def _answer(request: dict[str, Any]) -> dict[str, Any]:
    size = tuple(request["input_size"]) if request.get("input_size") else None
    try:
        return {"ok": inspect_bounded(Path(request["path"]), request["arch"], request.get("num_classes"), size,
                                      int(request["max_bytes"]), float(request["max_scale"]))}
    except UnsafeInputError as exc:
        return {"error": "unsafe", "message": str(exc)}
    except InputError as exc:
        return {"error": "input", "message": str(exc)}
    except MemoryError:
        return {"error": "limit", "message": "inspecting the checkpoint needs more memory than allowed"}
    except RuntimeError as exc:
        if "alloc" in str(exc).lower():
            return {"error": "limit", "message": "inspecting the checkpoint needs more memory than allowed"}
        return {"error": "input", "message": f"the model could not be run: {str(exc).splitlines()[0][:300]}"}
    except Exception as exc:  # noqa: BLE001 - answer, never die: the API maps this to 422
        return {"error": "input", "message": f"the checkpoint could not be inspected ({type(exc).__name__})"}


def inspector_main() -> None:
    """The inspection process: import the engine, cap the address space, answer one JSON line per request."""
    import gc
    import resource

    import torch

    torch.set_num_threads(1)
    catalog.list_architectures()
    out = os.dup(1)
    os.dup2(2, 1)  # anything the engine prints goes to stderr, never into the replies
    vm = next((int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize")), 0)
    budget = int(os.environ.get("SIMPRUNE_INSPECT_MEMORY_BYTES", str(4 << 30)))
    if vm:
        resource.setrlimit(resource.RLIMIT_AS, (vm + budget, resource.RLIM_INFINITY))
    os.write(out, b'{"ready": true}\n')
    for line in sys.stdin.buffer:
        try:
            reply = _answer(json.loads(line))
        except (ValueError, KeyError, TypeError) as exc:
            reply = {"error": "input", "message": f"bad inspection request: {exc}"}
        os.write(out, json.dumps(reply).encode() + b"\n")
        gc.collect()


def get_inspector(settings: Settings, state: Any) -> Inspector | None:
    """The app's inspector (created on first use), or None when inspections run in the API's thread pool."""
    if not settings.inspect_in_subprocess:
        return None
    inspector = getattr(state, "inspector", None)
    if inspector is None:
        inspector = state.inspector = Inspector(settings)
    return inspector


# --- storage quota --------------------------------------------------------------------------------------------


def tenant_usage(session: Session, tenant_id: str) -> int:
    """Bytes the tenant stores: models, datasets, device profiles and the artifacts of its jobs."""
    total = 0
    for table in (Model, Dataset, DeviceProfile):
        total += int(session.scalar(select(func.coalesce(func.sum(table.size), 0))
                                    .where(table.tenant_id == tenant_id)) or 0)
    artifacts = session.scalar(select(func.coalesce(func.sum(Artifact.size), 0))
                               .join(Job, Job.id == Artifact.job_id).where(Job.tenant_id == tenant_id))
    return total + int(artifacts or 0)


def check_quota(session: Session, settings: Settings, tenant_id: str, incoming: int = 0,
                status: int = 413) -> None:
    """Raise a ``status`` problem (413 for an upload, 409 for a job that would add artifacts) when the tenant's
    storage plus ``incoming`` bytes exceeds ``tenant_quota_bytes`` (0: no quota)."""
    quota = settings.tenant_quota_bytes
    if not quota:
        return
    used = tenant_usage(session, tenant_id)
    if used + incoming > quota or (status == 409 and used >= quota):
        what = f"storing {incoming} more bytes would exceed" if incoming else "it has reached"
        raise Problem(status, f"storage quota exceeded: this tenant stores {used} bytes and {what} its quota of "
                              f"{quota} bytes; delete jobs, models or datasets first", "quota-exceeded",
                      "Storage quota exceeded", quota=quota, used=used)


def _file(form: ParsedForm, name: str) -> UploadedFile:
    up = form.files.get(name)
    if up is None:
        raise Problem(422, f"missing file field '{name}'", "validation-error")
    if up.size == 0:
        raise Problem(422, f"file '{name}' is empty", "invalid-input")
    return up


async def _store_and_commit(session: Session, storage: Storage, key: str, up: UploadedFile, row: Any,
                            kind: str, metrics: Any = None) -> None:
    def store() -> None:
        storage.put_file(key, up.path)
        try:
            session.add(row)
            session.commit()
        except BaseException:
            session.rollback()
            storage.delete(key)
            raise
        if metrics is not None:
            metrics.upload_bytes.labels(kind).inc(up.size)

    await run_in_threadpool(store)


async def create_model(
    form: ParsedForm, tenant_id: str, session: Session, settings: Settings, storage: Storage, metrics: Any = None,
    inspector: Inspector | None = None,
) -> Model:
    """Validate the uploaded checkpoint (form fields ``file``, ``arch``, optional ``num_classes``, ``mean``,
    ``std``, ``input_size``) and store it as a Model of ``tenant_id``."""
    up = _file(form, "file")
    arch = form.fields.get("arch", "").strip()
    if up.filename.lower().endswith(".onnx") and arch in ("", "onnx"):  # an ONNX model needs no architecture
        arch = "onnx"
    if not arch:
        raise Problem(422, "missing form field 'arch'", "validation-error")
    if len(arch) > 100:
        raise Problem(422, "'arch' must be at most 100 characters (see GET /v1/architectures)", "validation-error")
    num_classes = _int_field(form.fields, "num_classes")
    input_size = _list_field(form.fields, "input_size", int, settings)
    mean = _list_field(form.fields, "mean", float, settings)
    std = _list_field(form.fields, "std", float, settings)
    if input_size is not None and len(input_size) < 2:
        raise Problem(422, "'input_size' must be positive (channels, spatial dims...)", "validation-error")
    for name, vals in (("mean", mean), ("std", std)):
        if vals is not None and input_size is not None and len(vals) != input_size[0]:
            raise Problem(422, f"'{name}' needs one value per input channel", "validation-error")
    if std is not None and any(v <= 0 for v in std):
        raise Problem(422, "'std' values must be positive", "validation-error")
    await run_in_threadpool(check_quota, session, settings, tenant_id, up.size)
    size = tuple(input_size) if input_size else None
    try:
        if inspector is not None:
            info = await inspector.run(up.path, arch, num_classes, size, settings.max_checkpoint_bytes)
        else:
            info = await run_in_threadpool(inspect_bounded, up.path, arch, num_classes, size,
                                           settings.max_checkpoint_bytes, settings.max_input_scale)
    except InputError as exc:  # name the client's file, never the server's temp file
        cls = UnsafeInputError if isinstance(exc, UnsafeInputError) else InputError
        raise cls(str(exc).replace(str(up.path), up.filename).replace(up.path.name, up.filename)) from None
    model_id = new_id("mdl")
    key = f"models/{tenant_id}/{model_id}{safe_suffix(up.filename)}"
    row = Model(
        id=model_id, tenant_id=tenant_id, arch=info["arch"], num_classes=info["num_classes"],
        in_channels=info["in_channels"], input_size=info["input_size"], mean=mean, std=std,
        params=info["params"], flops=info["flops"], filename=up.filename, sha256=up.sha256, size=up.size,
        storage_key=key, dry_run=info.get("dry_run"),
    )
    await _store_and_commit(session, storage, key, up, row, "model", metrics)
    return row


async def create_dataset(
    form: ParsedForm, tenant_id: str, session: Session, settings: Settings, storage: Storage, field: str = "file",
    metrics: Any = None,
) -> Dataset:
    """Validate the uploaded dataset (ImageFolder ``.zip`` or ``.npz`` in form field ``field``) and store it."""
    up = _file(form, field)
    suffix = safe_suffix(up.filename)
    if suffix not in DATASET_SUFFIXES:
        raise InputError(f"dataset '{up.filename}' must be an ImageFolder .zip or a .npz file")
    await run_in_threadpool(check_quota, session, settings, tenant_id, up.size)
    info = await run_in_threadpool(
        catalog.inspect_dataset, up.path, settings.max_dataset_entries, settings.max_dataset_uncompressed_bytes
    )
    dataset_id = new_id("dst")
    key = f"datasets/{tenant_id}/{dataset_id}{suffix}"
    names = info.get("class_names")
    row = Dataset(
        id=dataset_id, tenant_id=tenant_id, format=str(info.get("format") or suffix.lstrip(".")),
        samples=int(info["samples"]), classes=int(info["classes"]),
        class_names=[str(n) for n in names] if names else None, filename=up.filename, sha256=up.sha256,
        size=up.size, storage_key=key,
    )
    await _store_and_commit(session, storage, key, up, row, "dataset", metrics)
    return row


MAX_PROFILE_NAME = 200


async def create_device_profile(
    form: ParsedForm, tenant_id: str, session: Session, settings: Settings, storage: Storage, metrics: Any = None,
) -> DeviceProfile:
    """Validate the uploaded device profile (form field ``file``, JSON in the ``simprune-device-profile/1``
    format; optional ``name``) with :func:`simprune.profiles.parse_profile` and store it for ``tenant_id``.
    A malformed profile raises :class:`InputError` naming the first problem (422); nothing is stored."""
    up = _file(form, "file")
    name = form.fields.get("name", "").strip()
    if len(name) > MAX_PROFILE_NAME or not name.isprintable():
        raise Problem(422, f"'name' must be at most {MAX_PROFILE_NAME} printable characters", "validation-error")
    await run_in_threadpool(check_quota, session, settings, tenant_id, up.size)
    profile = await run_in_threadpool(lambda: parse_profile(up.path.read_bytes()))
    env = profile.environment
    profile_id = new_id("prf")
    key = f"device-profiles/{tenant_id}/{profile_id}.json"
    row = DeviceProfile(
        id=profile_id, tenant_id=tenant_id, name=name or Path(up.filename).stem or profile_id,
        arch=profile.arch, input_size=list(profile.input_size), batch_size=profile.batch_size,
        device_type=env.device_type, device_name=env.device_name, filename=up.filename, sha256=up.sha256,
        size=up.size, storage_key=key,
    )
    await _store_and_commit(session, storage, key, up, row, "device_profile", metrics)
    return row
