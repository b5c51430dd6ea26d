"""Creating models and datasets from uploads, shared by the models/datasets routes and the one-call job submit.

The upload is already a temp file; it is validated by the engine (safe load, architecture fit), then moved
into storage and recorded. Whatever fails, the caller's ``ParsedForm.cleanup()`` removes the temp file, and a
stored file whose database row could not be committed is deleted again.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from app.api.problems import Problem
from app.core.config import Settings
from app.models import Dataset, Model, new_id
from app.services import catalog
from app.services.uploads import ParsedForm, UploadedFile, safe_suffix
from app.storage import Storage
from simprune.errors import InputError

DATASET_SUFFIXES = (".zip", ".npz")


def _int_field(fields: dict[str, str], name: str) -> int | None:
    raw = fields.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise Problem(422, f"'{name}' must be an integer, got {raw!r}", "validation-error") from None
    if value <= 0:
        raise Problem(422, f"'{name}' must be positive", "validation-error")
    return value


def _list_field(fields: dict[str, str], name: str, cast: type) -> list[Any] | None:
    """A list given as JSON (``[3, 32, 32]``) or comma-separated (``3,32,32``)."""
    raw = fields.get(name, "").strip()
    if not raw:
        return None
    try:
        value = json.loads(raw) if raw.startswith("[") else [x for x in raw.split(",") if x.strip()]
        out = [cast(x) for x in value]
    except (ValueError, TypeError):
        raise Problem(422, f"'{name}' must be a list of numbers, got {raw!r}", "validation-error") from None
    if not out:
        raise Problem(422, f"'{name}' must not be empty", "validation-error")
    return out


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
    form: ParsedForm, tenant_id: str, session: Session, settings: Settings, storage: Storage, metrics: Any = None
) -> Model:
    """Validate the uploaded checkpoint (form fields ``file``, ``arch``, optional ``num_classes``, ``mean``,
    ``std``, ``input_size``) and store it as a Model of ``tenant_id``."""
    up = _file(form, "file")
    arch = form.fields.get("arch", "").strip()
    if not arch:
        raise Problem(422, "missing form field 'arch'", "validation-error")
    num_classes = _int_field(form.fields, "num_classes")
    input_size = _list_field(form.fields, "input_size", int)
    mean = _list_field(form.fields, "mean", float)
    std = _list_field(form.fields, "std", float)
    if input_size is not None and (len(input_size) < 2 or min(input_size) <= 0):
        raise Problem(422, "'input_size' must be positive (channels, spatial dims...)", "validation-error")
    for name, vals in (("mean", mean), ("std", std)):
        if vals is not None and input_size is not None and len(vals) != input_size[0]:
            raise Problem(422, f"'{name}' needs one value per input channel", "validation-error")
    if std is not None and any(v <= 0 for v in std):
        raise Problem(422, "'std' values must be positive", "validation-error")
    info = await run_in_threadpool(
        catalog.inspect_checkpoint, up.path, arch, num_classes,
        tuple(input_size) if input_size else None, settings.max_checkpoint_bytes,
    )
    model_id = new_id("mdl")
    key = f"models/{tenant_id}/{model_id}{safe_suffix(up.filename)}"
    row = Model(
        id=model_id, tenant_id=tenant_id, arch=info["arch"], num_classes=info["num_classes"],
        in_channels=info["in_channels"], input_size=info["input_size"], mean=mean, std=std,
        params=info["params"], flops=info["flops"], filename=up.filename, sha256=up.sha256, size=up.size,
        storage_key=key,
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
