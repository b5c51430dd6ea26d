"""``plan.json``: what was pruned, replayable on a fresh model (``simprune.load_pruned``). No pickles."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from simprune.errors import InputError
from simprune.pruning.surgery import apply_plan

PLAN_FORMAT = "simprune-plan/1"


def make_plan(
    report: dict[str, Any],
    *,
    arch: str | None,
    input_size: tuple[int, ...],
    num_classes: int | None = None,
    in_channels: int | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> dict[str, Any]:
    """The plan document for a pruning ``report``: kept output-channel indices per pruned layer, in order, and
    ``dropped_blocks`` (residual blocks removed whole, see :mod:`simprune.pruning.blocks`) when there are any."""
    plan = {
        "format": PLAN_FORMAT,
        "arch": arch,
        "options": {"num_classes": num_classes, "in_channels": in_channels},
        "input_size": list(input_size),
        "mean": list(mean) if mean else None,
        "std": list(std) if std else None,
        "method": report.get("method"),
        "method_options": report.get("method_options", {}),
        "layers": report["plan"]["layers"],
    }
    if report["plan"].get("dropped_blocks"):  # residual blocks dropped whole, replayed before the channel cuts
        plan["dropped_blocks"] = list(report["plan"]["dropped_blocks"])
    if arch and arch.startswith("onnx/"):  # the dense model is the original ONNX file, identified by its hash
        from simprune.onnx_import import source_for

        src = source_for(arch)
        if src is not None:
            plan["source"] = {"format": "onnx", "sha256": src.sha256, "file": src.path.name}
    return plan


def load_pruned(
    plan: str | Path | dict[str, Any],
    weights: str | Path | dict[str, torch.Tensor],
    model: nn.Module | None = None,
    onnx: str | Path | None = None,
) -> nn.Module:
    """Rebuild the exact pruned model from ``plan`` and ``weights.safetensors``.

    The architecture comes from the zoo by the plan's ``arch`` name, or pass a freshly built dense ``model``
    (for models outside the zoo), or for a plan made from an ONNX model the original ``onnx`` file (checked
    against the plan's sha256). Weights load strictly.
    """
    if not isinstance(plan, dict):
        plan = json.loads(Path(plan).read_text())
    if plan.get("format") != PLAN_FORMAT:
        raise InputError(f"not a simprune plan (format {plan.get('format')!r}, expected {PLAN_FORMAT!r})")
    if model is None and onnx is not None:
        from simprune.onnx_import import load_onnx

        src = load_onnx(onnx, check_fidelity=False)
        want = (plan.get("source") or {}).get("sha256")
        if want and want != src.sha256:
            raise InputError(f"{Path(onnx).name} is not the ONNX file this plan was made from (sha256 differs)")
        model = src.module
    if model is None:
        if not plan.get("arch"):
            raise InputError("the plan names no zoo architecture; pass the dense model to rebuild from")
        from simprune.zoo import build_model

        opts = plan.get("options") or {}
        model = build_model(plan["arch"], num_classes=opts.get("num_classes"), in_channels=opts.get("in_channels"))
    example = torch.zeros(1, *plan["input_size"])
    apply_plan(model, example, plan["layers"], plan.get("dropped_blocks"))
    state = weights if isinstance(weights, dict) else load_file(str(weights))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise InputError(f"weights do not match the plan: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.eval()
