"""Fixtures shared by the engine tests."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from simprune.allocator import keep_freed_memory

# Jobs in tests do not time dense vs pruned unless they ask (measure_latency=True): the latency tests do, and
# the rest would spend seconds each on it. Set before any worker process starts, so they inherit it.
os.environ.setdefault("SIMPRUNE_MEASURE_LATENCY", "0")
# Likewise jobs that name no preset run the fast pipeline here (the operator setting), not the slower best one;
# tests/test_presets.py runs every preset explicitly and checks the real default with the setting removed.
os.environ.setdefault("SIMPRUNE_DEFAULT_PRESET", "fast")
# Freed tensor memory kept in the process, as the CLI, the worker and the benchmarks do (simprune.allocator).
keep_freed_memory()


@pytest.fixture(scope="session")
def onnx_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The ONNX networks of ``tests/onnx_nets.py``, exported once per session (engine and service tests)."""
    from onnx_nets import export_all

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return export_all(tmp_path_factory.mktemp("onnx"))
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def one_thread_module() -> Iterator[None]:
    """Small forwards on a shared 2-core CPU: intra-op threads only add synchronisation stalls."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


PrunedPair = tuple[torch.nn.Module, torch.nn.Module, torch.Tensor]


@pytest.fixture
def pruned_resnet20() -> Callable[[int], PrunedPair]:
    """Builds (dense, pruned, calibration images): a random cifar_resnet20 with non-trivial BatchNorm statistics,
    its l1 half-width prune without compensation (what the reconstruction stages start from), and ``n``
    random 16x16 images."""

    def make(n: int) -> PrunedPair:
        import copy

        from simprune.pruning.phases import prune
        from simprune.zoo import build_model

        torch.manual_seed(0)
        dense = build_model("cifar_resnet20").eval()
        for m in dense.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 1.5)
                m.weight.data.uniform_(0.5, 1.5)
        calib = torch.randn(n, 3, 16, 16)
        pruned, _ = prune(copy.deepcopy(dense), calib[:1], "l1", pruning_ratio=0.5,
                          compensation={"fold": False, "lstsq": False, "bn": False})
        return dense, pruned, calib

    return make


PLUGIN_MODULE = '''
"""A third-party method, as a plugin package would ship it: keeps the channels with the lowest index."""
from dataclasses import dataclass

import torch

from simprune.methods import Criterion, option


@dataclass
class KeepFirst(Criterion):
    name = "keep_first"
    summary = "Keeps the first channels of each group (a test plugin)."
    offset: int = option(0, "channels skipped before the kept ones", ge=0)

    def scores(self, group):
        return -torch.arange(group.n_channels, dtype=torch.float32)
'''


@pytest.fixture
def method_plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A distribution on ``sys.path`` declaring the method ``keep_first`` in the ``simprune.methods``
    entry-point group (as ``pip install`` would lay it out); yields its directory (for a child's PYTHONPATH)."""
    import sys

    from simprune.methods import load_methods, registry

    root = tmp_path_factory.mktemp("plugin")
    (root / "simprune_keep_first.py").write_text(PLUGIN_MODULE)
    dist = root / "simprune_keep_first-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: simprune-keep-first\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[simprune.methods]\nkeep_first = simprune_keep_first:KeepFirst\n")
    sys.path.insert(0, str(root))
    load_methods(reload_plugins=True)
    try:
        yield str(root)
    finally:
        sys.path.remove(str(root))
        registry._REGISTRY.pop("keep_first", None)
        sys.modules.pop("simprune_keep_first", None)
