"""Time of one reconstruction step on this machine: the dense model's forward (the teacher) and the pruned model's
forward and forward + backward, batch 64, contiguous vs channels-last, fp32 vs bf16 autocast, and channels-last
with each BatchNorm computed inside its convolution (``simprune.folded_norms``, as both reconstructions run now).

    .venv/bin/python bench/recon_step_time.py --net resnet56 --threads 2

The pruned model is the shared checkpoint pruned to 50% FLOPs with the `fast` preset (its widths, not `best`'s).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import SHARED, load_net  # noqa: E402

from simprune.compute import autocast  # noqa: E402
from simprune.folded_norms import folded_batchnorm  # noqa: E402
from simprune.presets import resolve_preset  # noqa: E402
from simprune.pruning.phases import prune  # noqa: E402


def _ms(f: Callable[[], object], n: int) -> float:
    f()
    t = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - t) / n * 1000


def _times(dense: torch.nn.Module, pruned: torch.nn.Module, x: torch.Tensor, bf16: bool, n: int) -> list[float]:
    """ms of the dense forward, the pruned forward and the pruned forward + backward."""
    cpu = torch.device("cpu")

    def teacher() -> None:
        with torch.no_grad(), autocast(cpu, bf16):
            dense(x)

    def forward() -> None:
        with torch.no_grad(), autocast(cpu, bf16):
            pruned(x)

    def step() -> None:
        with autocast(cpu, bf16):
            out = pruned(x)
        out.float().sum().backward()

    return [_ms(f, n) for f in (teacher, forward, step)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--net", default="resnet56")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--checkpoints", type=Path, default=SHARED / "checkpoints")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    dense = load_net(args.net, cpu, args.checkpoints).eval()
    r = resolve_preset("fast", has_calibration=True)
    calib = torch.randn(128, 3, 32, 32)
    pruned, _ = prune(copy.deepcopy(dense), calib[:1], "l1", target_flops_reduction=0.5, calib=calib,
                      allocation=r["allocation"], compensation=r["compensation"])
    x = torch.randn(64, 3, 32, 32)
    print("| format, precision | dense forward | pruned forward | pruned forward + backward |")
    print("| --- | --- | --- | --- |")
    for cl, fold in ((False, False), (True, False), (True, True)):
        for bf in (False, True):
            d, p, xx = copy.deepcopy(dense), copy.deepcopy(pruned).eval(), x
            if cl:
                d, p = d.to(memory_format=torch.channels_last), p.to(memory_format=torch.channels_last)
                xx = x.contiguous(memory_format=torch.channels_last)
            with folded_batchnorm(d, xx[:2], fold) as n_dense, folded_batchnorm(p, xx[:2], fold) as n_pruned:
                times = _times(d, p, xx, bf, args.repeats)
            name = f"{'channels-last' if cl else 'contiguous'}, {'bf16 autocast' if bf else 'fp32'}"
            name += f", BatchNorm folded ({n_dense} / {n_pruned} pairs)" if fold else ""
            print(f"| {name} | " + " | ".join(f"{t:.0f} ms" for t in times) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
