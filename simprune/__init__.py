"""simprune: structured (filter) pruning for CNNs, as a library, a CLI and a service.

>>> import torch, simprune
>>> model = simprune.build_model("cifar_resnet20")
>>> pruned, report = simprune.prune(model, torch.randn(1, 3, 32, 32), method="l1",
...                                 target_flops_reduction=0.3)
>>> round(report["flops_reduction"], 2)  # doctest: +SKIP
0.3
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["__version__", "build_model", "list_archs", "load_pruned", "load_state_dict", "prune"]

if TYPE_CHECKING:  # pragma: no cover
    from simprune.checkpoint import load_state_dict
    from simprune.plan import load_pruned
    from simprune.pruning.phases import prune
    from simprune.zoo import build_model, list_archs

_LAZY = {
    "prune": "simprune.pruning.phases",
    "load_pruned": "simprune.plan",
    "build_model": "simprune.zoo",
    "list_archs": "simprune.zoo",
    "load_state_dict": "simprune.checkpoint",
}


def __getattr__(name: str) -> Any:
    """Import heavy submodules (torch) only when used, so ``import simprune`` stays light."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'simprune' has no attribute {name!r}")
