"""/v1/methods and /v1/architectures: what the engine offers (rendered from its registries)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
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
    needs calibration data and whether it trains the network."""
    return {"items": list(await run_in_threadpool(catalog.list_methods))}


@router.get("/architectures", summary="Supported architectures",
            responses={200: {"content": {"application/json": {"example": {"items": [
                {"name": "cifar_resnet56", "input_size": [3, 32, 32], "num_classes": 10, "in_channels": 3,
                 "mean": [0.4914, 0.4822, 0.4465], "std": [0.247, 0.2435, 0.2616], "family": "resnet",
                 "description": "ResNet-56 for CIFAR", "tags": ["cifar"]}]}}}}})
async def list_architectures(_tenant: TenantDep) -> dict[str, Any]:
    """Every registered architecture with its input size, normalisation and class count."""
    return {"items": list(await run_in_threadpool(catalog.list_architectures))}
