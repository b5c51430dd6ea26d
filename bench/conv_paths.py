"""Which convolution kernel PyTorch picks for each model, and the time each kernel takes per forward.

PyTorch sends a float32 CPU convolution to oneDNN (``aten::mkldnn_convolution``) or to its own im2col kernel
(``aten::_slow_conv2d_forward``) by a size heuristic: at batch 1 a 3x3 convolution whose input holds at most
20,480 elements takes the native kernel. Pruning shrinks inputs, so a pruned model can move convolutions that the
dense model ran in oneDNN onto the native kernel. This script times dense and pruned models (zoo architectures,
random weights, l1 to ``--target`` FLOPs reduction, the engine's default rounding) under ``torch.profiler`` and
reports, per model, calls per forward and self time per forward of each convolution kernel. ``--force-onednn``
also profiles every ``nn.Conv2d`` called straight through ``aten::mkldnn_convolution`` (what the heuristic's choice
costs; a diagnostic, not a deployment mode).

    python bench/conv_paths.py --archs resnet50 cifar_resnet56 --batches 1 32 --threads 2 --out conv_paths.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from itertools import product
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from simprune.allocator import keep_freed_memory  # noqa: E402

CONV_OPS = ("aten::mkldnn_convolution", "aten::_slow_conv2d_forward", "aten::slow_conv_dilated2d",
            "aten::_nnpack_spatial_convolution", "aten::_convolution_depthwise2d")


def kernel_times(model: torch.nn.Module, x: torch.Tensor, rounds: int) -> dict[str, Any]:
    """Calls and self milliseconds per forward of each convolution kernel, and the forward's total."""
    with torch.inference_mode():
        for _ in range(5):
            model(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(rounds):
                model(x)
    ops = {e.key: e for e in prof.key_averages()}
    total = sum(e.self_cpu_time_total for e in ops.values()) / rounds / 1e3
    kernels = {k: {"calls": ops[k].count // rounds, "ms": round(ops[k].self_cpu_time_total / rounds / 1e3, 3)}
               for k in CONV_OPS if k in ops}
    return {"forward_ms": round(total, 3), "kernels": kernels}


def _onednn_forward(self: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``nn.Conv2d.forward`` through oneDNN whatever the sizes (zero padding only)."""
    return torch.ops.aten.mkldnn_convolution(x, self.weight, self.bias, self.padding, self.stride, self.dilation,
                                             self.groups)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", nargs="+", default=["resnet50", "cifar_resnet56"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    ap.add_argument("--target", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--force-onednn", action="store_true", help="also profile every Conv2d through oneDNN")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    import simprune
    from simprune.zoo import build_model, get_arch

    rows: list[dict[str, Any]] = []
    lines = ["| arch | batch | model | forward ms (profiled) | oneDNN convs: calls, ms | native convs: calls, ms |",
             "| --- | --- | --- | --- | --- | --- |"]
    for arch in args.archs:
        torch.manual_seed(0)
        dense = build_model(arch).eval()
        size = tuple(get_arch(arch).input_size)
        pruned, _ = simprune.prune(copy.deepcopy(dense), torch.randn(1, *size), "l1",
                                   target_flops_reduction=args.target)
        models = {"dense": dense, "pruned": pruned.eval()}
        for batch in args.batches:
            x = torch.randn(batch, *size)
            for onednn, name in product((False, True) if args.force_onednn else (False,), models):
                original = torch.nn.Conv2d.forward
                if onednn:
                    torch.nn.Conv2d.forward = _onednn_forward  # type: ignore[method-assign]
                try:
                    got = kernel_times(models[name], x, args.rounds)
                finally:
                    torch.nn.Conv2d.forward = original  # type: ignore[method-assign]
                name = f"{name}, all convs oneDNN" if onednn else name
                rows.append({"arch": arch, "batch": batch, "model": name, **got})
                k = got["kernels"]
                one = k.get("aten::mkldnn_convolution", {"calls": 0, "ms": 0.0})
                nat = k.get("aten::_slow_conv2d_forward", {"calls": 0, "ms": 0.0})
                lines.append(f"| {arch} | {batch} | {name} | {got['forward_ms']:.2f} | {one['calls']}, "
                             f"{one['ms']:.2f} | {nat['calls']}, {nat['ms']:.2f} |")
    table = "\n".join(lines)
    print(table)
    print(f"\nthreads={args.threads}, torch {torch.__version__}, target FLOPs reduction {args.target:.0%}")
    if args.out is not None:
        args.out.write_text(json.dumps({"config": vars(args) | {"out": str(args.out), "torch": torch.__version__},
                                        "rows": rows, "markdown": table}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
