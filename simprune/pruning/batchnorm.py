"""BatchNorm re-estimation: recompute running statistics of a pruned model on calibration data."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from simprune.errors import JobCancelled


@torch.no_grad()
def reestimate_bn(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    device: torch.device | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> int:
    """Reset every BatchNorm's running mean/var and re-estimate them as exact averages over ``batches``.

    Only BN statistics change (dropout and other train-mode layers stay in eval mode). Returns the number
    of samples seen.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    was_training = model.training
    model.eval()
    saved = {}
    for bn in bns:
        saved[bn] = bn.momentum
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average = exact mean over batches
        bn.train()
    seen = 0
    try:
        for x in batches:
            if should_cancel and should_cancel():
                raise JobCancelled("cancelled during BatchNorm re-estimation")
            x = x.to(device) if device is not None else x
            model(x)
            seen += x.shape[0]
    finally:
        for bn in bns:
            bn.momentum = saved[bn]
            bn.eval()
        model.train(was_training)
    return seen
