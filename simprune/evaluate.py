"""Top-1 evaluation (a fraction in [0, 1]); the device picker lives in :mod:`simprune.device`."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from simprune.device import select_device
from simprune.errors import InputError, JobCancelled

BatchProgress = Callable[[int, int | None], None]
"""``progress(done_batches, total_batches)``; ``total_batches`` is None when the loader has no length."""


def _logits(out: Any) -> torch.Tensor:
    if isinstance(out, (tuple, list)) and out:
        out = out[0]
    if isinstance(out, dict) and "logits" in out:
        out = out["logits"]
    if not isinstance(out, torch.Tensor):
        raise InputError(f"the model returned a {type(out).__name__}; expected a tensor of class scores")
    return out


def _check_labels(max_label: int, num_classes: int) -> None:
    if max_label >= num_classes:
        raise InputError(f"the dataset has label {max_label} but the model predicts {num_classes} classes")


def evaluate(
    model: nn.Module,
    loader: Iterable[Any],
    device: torch.device | str,
    progress: BatchProgress | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Top-1 accuracy over ``(inputs, labels)`` batches: ``{'top1': float in [0, 1], 'samples': int}``.

    The model is moved to ``device`` and put in eval mode (its training flag is restored afterwards); runs
    under ``torch.inference_mode()``. ``should_cancel()`` is checked before every batch and raises
    :class:`JobCancelled`. Raises :class:`InputError` for an empty loader, outputs that are not
    ``(batch, classes)`` scores, or labels the model cannot predict.
    """
    dev = select_device(device)
    try:
        total: int | None = len(loader)  # type: ignore[arg-type]
    except TypeError:
        total = None
    was_training = model.training
    model.to(dev)
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=dev)
    max_label = torch.zeros((), dtype=torch.int64, device=dev)
    num_classes = 0
    samples = 0
    try:
        with torch.inference_mode():
            for i, (inputs, labels) in enumerate(loader):
                if should_cancel is not None and should_cancel():
                    raise JobCancelled("evaluation cancelled")
                inputs = inputs.to(dev, non_blocking=True)
                labels = torch.as_tensor(labels).to(dev, non_blocking=True)
                logits = _logits(model(inputs))
                if logits.ndim != 2 or logits.shape[0] != labels.shape[0]:
                    raise InputError(
                        f"model output has shape {tuple(logits.shape)} for a batch of {labels.shape[0]}; "
                        "expected (batch, classes)"
                    )
                num_classes = int(logits.shape[1])
                if labels.numel():
                    max_label = torch.maximum(max_label, labels.max().to(torch.int64))
                    if i == 0:  # fail early on the first batch; later batches are checked at the end
                        _check_labels(int(max_label), num_classes)
                correct += (logits.argmax(dim=1) == labels).sum()
                samples += int(labels.shape[0])
                if progress is not None:
                    progress(i + 1, total)
        if should_cancel is not None and should_cancel():
            raise JobCancelled("evaluation cancelled")
    finally:
        model.train(was_training)
    if samples == 0:
        raise InputError("the evaluation dataset is empty")
    _check_labels(int(max_label), num_classes)
    return {"top1": float(correct.item()) / samples, "samples": samples}
