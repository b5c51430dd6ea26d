"""Sweep the library architectures: every torchvision classifier and a wide sample of timm CNNs, each built with
random weights, saved as a checkpoint, pruned to 30% FLOPs with ``l1`` through :func:`simprune.run_prune_job`
(verified exports) and classified: ``works``, or the reason it fails.

A model "works" when the job succeeds (every export verified against the in-memory pruned model; the plan
rebuilt through the architecture's name) and the FLOPs reduction is within ``--tolerance`` of the target.
With ``--hw`` a model runs at that size unless it cannot (a ViT's fixed patch grid, inception's minimum size):
then it runs at the input size of the library's own pretrained configuration (the row's ``input``).

Usage::

    python bench/zoo_sweep.py --hw 64 --out sweep.json                 # everything (hours on a small CPU)
    python bench/zoo_sweep.py --only 'torchvision/resnet*' --exports onnx safetensors
    python bench/zoo_sweep.py --hw 64 --out sweep.json --resume --rerun 'timm/dla34'   # only what is missing
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

TIMM_SAMPLE = (
    "resnet10t", "resnet18", "resnet50d", "resnext26ts", "seresnext26d_32x4d", "resnest14d", "res2net50_14w_8s",
    "skresnet18", "efficientnet_b0", "efficientnet_lite0", "tf_efficientnetv2_b0", "mobilenetv2_050",
    "mobilenetv3_small_050", "mobilenetv3_large_100", "mobilenetv4_conv_small", "regnetx_002", "regnety_002",
    "regnetz_005", "ghostnet_050", "ghostnetv2_100", "convnext_atto", "convnextv2_atto", "densenet121", "dla34",
    "dpn68", "hrnet_w18_small", "lcnet_050", "mnasnet_small", "mixnet_s", "rexnet_100", "repvgg_a0",
    "cspresnet50", "cspdarknet53", "darknet17", "vgg11_bn", "inception_v3", "xception41", "tinynet_a",
    "fbnetc_100", "hardcorenas_a", "ese_vovnet19b_dw", "mobileone_s0", "gernet_s", "selecsls42b", "nf_resnet26",
    "fastvit_t8", "efficientvit_b0", "vit_tiny_patch16_224",
)
"""A wide sample of timm families (mostly CNNs; one ViT as a known outsider)."""


def architectures(only: list[str] | None) -> list[str]:
    """torchvision/<every classifier> and timm/<sample>, filtered by the ``only`` glob patterns."""
    import timm
    import torchvision

    names = [f"torchvision/{n}" for n in torchvision.models.list_models(module=torchvision.models)]
    available = set(timm.list_models())
    names += [f"timm/{n}" for n in TIMM_SAMPLE if n in available]
    if only:
        names = [n for n in names if any(fnmatch.fnmatch(n, pat) for pat in only)]
    return names


def input_size_for(model: Any, native: tuple[int, ...], hw: int | None) -> tuple[int, ...]:
    """``(C, hw, hw)`` when the model runs at that size, else the library's native input size."""
    import torch

    if not hw or tuple(native[1:]) == (hw, hw):
        return tuple(native)
    size = (native[0], hw, hw)
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *size))
    except (RuntimeError, ValueError, AssertionError, IndexError):
        return tuple(native)
    return size


def sweep_one(arch: str, hw: int | None, exports: tuple[str, ...], target: float, tolerance: float) -> dict[str, Any]:
    """Prune ``arch`` once; ``{arch, result, seconds, flops_reduction}``."""
    import torch
    from safetensors.torch import save_file

    from simprune.pipeline import PruneJob, run_prune_job
    from simprune.zoo import get_arch

    t0 = time.perf_counter()
    row: dict[str, Any] = {"arch": arch, "result": "works", "flops_reduction": None}
    try:
        info = get_arch(arch)
        torch.manual_seed(0)
        model = info.builder(num_classes=10)
        with torch.no_grad():  # zero-initialised weights (a ViT's head) would make every output 0 and the
            for p in model.parameters():  # export check vacuous
                if p.dim() >= 2 and not p.any():
                    p.normal_(0.0, 0.02)
        size = input_size_for(model, tuple(info.input_size), hw)
        row["input"] = "x".join(map(str, size[1:]))
        with tempfile.TemporaryDirectory() as tmp:
            weights = Path(tmp) / "w.safetensors"
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
            del model
            job = PruneJob.build(arch=arch, weights=weights, method="l1", target_flops_reduction=target,
                                 device="cpu", input_size=size, exports=exports)
            report = run_prune_job(job, Path(tmp) / "out")
        red = float(report["flops_reduction"])
        row["flops_reduction"] = round(red, 4)
        if abs(red - target) > tolerance:
            row["result"] = f"FLOPs reduction {100 * red:.1f}% misses the {100 * target:.0f}% target"
    except Exception as exc:  # noqa: BLE001 - the sweep records every failure and goes on
        if isinstance(exc.__context__, MemoryError):  # a cleanup that failed after the memory ran out
            exc = exc.__context__
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        where = traceback.extract_tb(exc.__traceback__)[-1]
        row["result"] = f"{type(exc).__name__}: {first} ({Path(where.filename).name}:{where.lineno})"
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def sweep_isolated(arch: str, args: argparse.Namespace) -> dict[str, Any]:
    """:func:`sweep_one` in a child process with a wall-clock limit and an address-space cap, so that one
    pathological model (a hang, a memory blow-up) is recorded as such and the sweep goes on."""
    import subprocess
    import sys

    cmd = [sys.executable, __file__, "--one", arch, "--target", str(args.target), "--tolerance", str(args.tolerance),
           "--threads", str(args.threads), "--memory-gb", str(args.memory_gb), "--exports", *args.exports]
    cmd += ["--hw", str(args.hw)] if args.hw else []
    t0 = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"arch": arch, "result": f"did not finish in {args.timeout:g} s", "flops_reduction": None,
                "seconds": round(time.perf_counter() - t0, 1)}
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1][:160]
        why = f"process died (exit {done.returncode}): {tail}"
        if "MemoryError" in tail:
            why = f"exceeds the {args.memory_gb:g} GB address-space cap (MemoryError)"
        elif done.returncode < 0:  # a native allocation refused under the cap ends in SIGSEGV/SIGABRT
            why = (f"process killed by signal {-done.returncode} (most likely the {args.memory_gb:g} GB "
                   "address-space cap)")
        return {"arch": arch, "result": why, "flops_reduction": None, "seconds": round(time.perf_counter() - t0, 1)}
    return json.loads(lines[-1])


def _limit_memory(max_bytes: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (max_bytes, resource.RLIM_INFINITY))


def table(rows: list[dict[str, Any]]) -> str:
    """The results as a markdown table."""
    lines = ["| architecture | input | result | FLOPs -% | seconds |", "|---|---|---|---|---|"]
    for r in rows:
        red = "" if r["flops_reduction"] is None else f"{100 * r['flops_reduction']:.1f}"
        lines.append(f"| {r['arch']} | {r.get('input', '')} | {r['result'].replace('|', '/')} | {red} | "
                     f"{r['seconds']} |")
    def count(prefix: str) -> str:
        mine = [r for r in rows if r["arch"].startswith(prefix)]
        return f"{sum(r['result'] == 'works' for r in mine)} of {len(mine)}"

    works = sum(r["result"] == "works" for r in rows)
    lines.append(f"\n**{works} of {len(rows)} work**: {count('torchvision/')} torchvision classification builders, "
                 f"{count('timm/')} sampled timm models.")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="*", help="glob patterns over the names (torchvision/*, timm/res*)")
    p.add_argument("--hw", type=int, default=None, help="input height/width (default: the architecture's)")
    p.add_argument("--exports", nargs="+", default=["pt2", "onnx", "safetensors"])
    p.add_argument("--target", type=float, default=0.3)
    p.add_argument("--tolerance", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    p.add_argument("--timeout", type=float, default=600, help="seconds per architecture (each runs in a child)")
    p.add_argument("--memory-gb", type=float, default=10, help="address-space cap of each child")
    p.add_argument("--resume", action="store_true", help="keep the rows already in --out; run only the others")
    p.add_argument("--rerun", nargs="*", default=[], help="with --resume: glob patterns of rows to run again")
    p.add_argument("--order", nargs="*", default=[], help="glob patterns run first (the rest in catalogue order)")
    p.add_argument("--table-only", action="store_true", help="print the table of the rows in --out; run nothing")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.one:  # the child: one architecture, one JSON line
        import torch

        _limit_memory(int(args.memory_gb * (1 << 30)))
        torch.set_num_threads(args.threads)
        print(json.dumps(sweep_one(args.one, args.hw, tuple(args.exports), args.target, args.tolerance)))
        return
    names = architectures(args.only)
    done: dict[str, dict[str, Any]] = {}
    if args.table_only:
        rows = {r["arch"]: r for r in json.loads(args.out.read_text())} if args.out and args.out.is_file() else {}
        print(table([rows[n] for n in names if n in rows]))
        return
    if args.resume and args.out and args.out.is_file():
        done = {r["arch"]: r for r in json.loads(args.out.read_text())
                if not any(fnmatch.fnmatch(r["arch"], pat) for pat in args.rerun)}
    first = [n for pat in args.order for n in names if fnmatch.fnmatch(n, pat)]
    first = list(dict.fromkeys(first))  # in the order of the patterns
    for arch in first + [n for n in names if n not in first]:
        if arch in done:
            continue
        row = sweep_isolated(arch, args)
        print(json.dumps(row), flush=True)
        done[arch] = row
        if args.out:  # every row kept, also those outside --only
            args.out.write_text(json.dumps([done[n] for n in names if n in done]
                                           + [r for n, r in done.items() if n not in names], indent=1))
    print(table([done[n] for n in names if n in done]))


if __name__ == "__main__":
    main()
