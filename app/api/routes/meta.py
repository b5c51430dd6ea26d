"""/v1/methods and /v1/architectures: what the engine offers (rendered from its registries)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.concurrency import run_in_threadpool

from app.api.deps import TenantDep
from app.api.ratelimit import rate_limit_reads
from app.services import catalog

router = APIRouter(prefix="/v1", tags=["catalogue"], dependencies=[Depends(rate_limit_reads)])


@router.get("/methods", summary="Pruning methods",
            responses={200: {"content": {"application/json": {"example": {"items": [
                {"name": "l1", "summary": "L1 norm of each filter", "needs_data": False, "options": []}]}}}}})
async def list_methods(_tenant: TenantDep) -> dict[str, Any]:
    """Every method a job can name (the registry): options with types, defaults, bounds and help, whether it
    needs calibration data and whether it trains the network; and the presets a job can name (``preset``),
    with the switches each sets (``default``: what a job that names none runs, with and without data)."""
    from simprune.presets import presets_catalogue

    return {"items": list(await run_in_threadpool(catalog.list_methods)), "presets": presets_catalogue()}


@router.get("/architectures", summary="Supported architectures",
            responses={200: {"content": {"application/json": {"example": {"items": [
                {"name": "cifar_resnet56", "input_size": [3, 32, 32], "num_classes": 10, "in_channels": 3,
                 "mean": [0.4914, 0.4822, 0.4465], "std": [0.247, 0.2435, 0.2616], "family": "resnet",
                 "description": "ResNet-56 for CIFAR", "tags": ["cifar"]}]}}}}})
async def list_architectures(
    _tenant: TenantDep,
    search: Annotated[str | None, Query(max_length=100, description="names containing this text")] = None,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> dict[str, Any]:
    """The architectures a checkpoint can name (the zoo first, then every ``torchvision/<name>`` and
    ``timm/<name>``), a page at a time: input size, normalisation, class count, family and ``verified`` (the
    family is covered by simprune's tests). An ``.onnx`` upload needs none. ``next_offset`` is null on the last
    page."""
    return await run_in_threadpool(catalog.search_architectures, search, offset, limit)
