"""Output reconstruction (label-free distillation) after pruning: accuracy with and without it, and its variants.

For each net, method and calibration seed, the shared checkpoint is pruned once with the `best` preset (50% FLOPs
by default, no fine-tuning; `best` runs the output reconstruction itself, with its defaults: the first row of
each model; ``--compensation '{"output_recon": false}'`` for the model before it); then each variant (steps,
learning rate, batch, temperature, augmentation:
:func:`simprune.compensation.output_recon.reconstruct_outputs`) runs on its own copy of the pruned model and the
copy is evaluated on the test set. Variants after the first (net, method) can be limited to the best
``--top`` of the first. Rows are written to ``--out`` as they come.

    .venv/bin/python bench/output_recon_sweep.py --nets resnet20 --methods l1 --seeds 0 --variants '[]' \
        --out output_recon.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import SHARED, accuracy, cached_tensors, load_net  # noqa: E402

from simprune.compensation.output_recon import reconstruct_outputs  # noqa: E402
from simprune.device import select_device  # noqa: E402
from simprune.latency import LatencyConfig, measure_latency  # noqa: E402
from simprune.plan import load_pruned, make_plan  # noqa: E402
from simprune.presets import resolve_preset  # noqa: E402
from simprune.pruning.groups import ChannelMultiple  # noqa: E402
from simprune.pruning.phases import prune  # noqa: E402

VARIANTS: list[dict[str, Any]] = [
    {"steps": 500, "lr": 1e-4}, {"steps": 500, "lr": 3e-4}, {"steps": 500, "lr": 1e-3},
    {"steps": 2000, "lr": 1e-4}, {"steps": 2000, "lr": 3e-4}, {"steps": 2000, "lr": 1e-3},
    {"steps": 2000, "lr": 3e-4, "temperature": 4.0}, {"steps": 2000, "lr": 3e-4, "augment": False},
    {"steps": 1000, "lr": 3e-4, "batch_size": 128}, {"steps": 4000, "lr": 3e-4},
]


def _save(folder: Path, tag: str, model: torch.nn.Module, rep: dict[str, Any]) -> None:
    """The pruned model as the service exports it: a simprune plan and its safetensors weights."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()},
              str(folder / f"{tag}.safetensors"))
    plan = make_plan(rep, arch=None, input_size=(3, 32, 32)) | {"flops_reduction": rep["flops_reduction"]}
    (folder / f"{tag}.json").write_text(json.dumps(plan))


def _latency(dense: torch.nn.Module, pruned: torch.nn.Module, device: torch.device,
             rep: dict[str, Any]) -> dict[str, Any]:
    """Dense vs pruned timed interleaved on ``device`` at batch 1 and 32 (eager; what a job's report measures)."""
    ratio = 1.0 / max(1.0 - float(rep["flops_reduction"]), 1e-9)
    cfg = LatencyConfig(batch_sizes=(1, 32), warmup=3, repeats=40, budget_s=60.0, onnxruntime=False)
    out = measure_latency(copy.deepcopy(dense), copy.deepcopy(pruned), (3, 32, 32), device, flops_ratio=ratio,
                          config=cfg)
    return {"flops_ratio": out["flops_ratio"], "environment": out["environment"],
            "rows": [{k: r.get(k) for k in ("batch", "dense_ms", "pruned_ms", "dense_min_ms", "pruned_min_ms",
                                             "speedup", "speedup_min", "efficiency", "rounds")} for r in out["rows"]]}


def _load(folder: Path, tag: str, dense: torch.nn.Module,
          device: torch.device) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A model saved by :func:`_save`, rebuilt from a copy of ``dense`` by :func:`simprune.plan.load_pruned`."""
    plan = json.loads((folder / f"{tag}.json").read_text())
    model = load_pruned(plan, folder / f"{tag}.safetensors", model=copy.deepcopy(dense).cpu())
    return model.to(device).eval(), {"flops_reduction": plan["flops_reduction"], "plan": plan}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", default="resnet20,resnet56")
    ap.add_argument("--methods", default="l1")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--target", type=float, default=0.5)
    ap.add_argument("--variants", default="",
                    help="JSON list of reconstruct_outputs options (default: a built-in grid; [] for none)")
    ap.add_argument("--top", type=int, default=0, help="after the first (net, method, seed): only the best N variants")
    ap.add_argument("--rank-from", type=Path, default=None,
                    help="an earlier --out: its best --top variants (by accuracy gain) are the ones run")
    ap.add_argument("--preset", default="best", choices=("fast", "balanced", "best"))
    ap.add_argument("--compensation", default="{}",
                    help="JSON switches over the preset's, e.g. '{\"block_recon\": false}'")
    ap.add_argument("--allocation-options", default="{}",
                    help="JSON allocation options over the preset's, e.g. '{\"n_images\": 128}'")
    ap.add_argument("--compensation-options", default="{}",
                    help="JSON compensation options over the preset's, e.g. '{\"block_recon_steps\": 200}'")
    ap.add_argument("--quick", action="store_true", help="5-step variants (rehearsal)")
    ap.add_argument("--eval-samples", type=int, default=0)
    ap.add_argument("--calib-samples", type=int, default=1024)
    ap.add_argument("--budget-s", type=float, default=0, help="stop starting work after this many seconds (0: none)")
    ap.add_argument("--cache", default="/tmp/simprune_bench_cache")
    ap.add_argument("--data", default=str(SHARED / "cifar10-jpeg"))
    ap.add_argument("--checkpoints", type=Path, default=SHARED / "checkpoints")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--save-pruned", type=Path, default=None, help="folder: keep each pruned model (plan + weights)")
    ap.add_argument("--load-pruned", type=Path, default=None,
                    help="folder of an earlier --save-pruned: skip pruning, start from the saved models")
    ap.add_argument("--round-to", type=int, default=None,
                    help="channel multiple of the pruning (default: the engine's per-device default; 1: none)")
    ap.add_argument("--round-to-min-channels", type=int, default=0,
                    help="with --round-to: round only groups of at least this many channels (as the CPU default)")
    ap.add_argument("--latency", action="store_true",
                    help="also time dense vs pruned on the device (batch 1 and 32, interleaved, simprune.latency)")
    ap.add_argument("--out", default="distill_sweep.json")
    args = ap.parse_args(argv)
    if args.round_to and args.round_to_min_channels:
        args.round_to = ChannelMultiple(args.round_to, args.round_to_min_channels)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    device = select_device(args.device)
    data = Path(args.data)
    tx, ty = cached_tensors(data / "test.zip", None, Path(args.cache))
    if args.eval_samples and args.eval_samples < len(tx):
        idx = torch.randperm(len(tx), generator=torch.Generator().manual_seed(1))[: args.eval_samples]
        tx, ty = tx[idx], ty[idx]
    variants = json.loads(args.variants) if args.variants else VARIANTS
    if args.rank_from is not None:
        earlier = [r for r in json.loads(args.rank_from.read_text())["rows"] if r["variant"] is not None]
        earlier.sort(key=lambda r: r["base_pruned"] - r["accuracy"])
        variants = [r["variant"] for r in earlier[: args.top or len(earlier)]]
    if args.quick:
        variants = [dict(v, steps=5) for v in variants]
    r = resolve_preset(args.preset, has_calibration=True)
    comp = r["compensation"] | json.loads(args.compensation)
    aopts = r["allocation_options"] | json.loads(args.allocation_options)
    copts = r["compensation_options"] | json.loads(args.compensation_options)
    rows: list[dict[str, Any]] = []
    out = Path(args.out)

    def record(row: dict[str, Any]) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)
        out.write_text(json.dumps({"device": str(device), "eval_samples": len(tx), "preset": args.preset,
                                   "compensation": comp, "allocation_options": aopts,
                                   "compensation_options": copts, "rows": rows}, indent=1))

    def over_budget() -> bool:
        return bool(args.budget_s) and time.perf_counter() - t_start > args.budget_s

    first: list[dict[str, Any]] | None = None
    for net in args.nets.split(","):
        base = load_net(net, device, args.checkpoints)
        dense_acc = accuracy(base, tx, ty, device)
        for seed in [int(s) for s in args.seeds.split(",")]:
            calib, _ = cached_tensors(data / "train.zip", args.calib_samples, Path(args.cache), seed)
            for method in args.methods.split(","):
                if over_budget():
                    print("budget spent", flush=True)
                    return 0
                t0 = time.perf_counter()
                tag = f"{net}_{method}_s{seed}_t{args.target}"
                if args.load_pruned is not None:
                    pm, rep = _load(args.load_pruned, tag, base, device)
                else:
                    pm, rep = prune(base, calib[:1].to(device), method, target_flops_reduction=args.target,
                                    calib=calib, device=device, allocation=r["allocation"], compensation=comp,
                                    allocation_options=aopts or None, round_to=args.round_to,
                                    compensation_options=copts or None)
                if args.save_pruned is not None:
                    _save(args.save_pruned, tag, pm, rep)
                prune_s = time.perf_counter() - t0
                pruned_acc = accuracy(pm, tx, ty, device)
                key = {"net": net, "method": method, "seed": seed, "dense": dense_acc}
                record(key | {"variant": None, "accuracy": pruned_acc, "prune_s": round(prune_s, 1),
                              "flops_reduction": rep["flops_reduction"], "timings": rep.get("timings"),
                              "output_recon": rep.get("output_recon"), "round_to": rep.get("round_to"),
                              "round_to_min_channels": rep.get("round_to_min_channels"),
                              "latency": _latency(base, pm, device, rep) if args.latency else None})
                todo = variants
                if first is not None and args.top:
                    ranked = sorted(first, key=lambda row: -row["accuracy"])
                    todo = [row["variant"] for row in ranked[: args.top]]
                mine = []
                for v in todo:
                    if over_budget():
                        break
                    m = copy.deepcopy(pm)
                    info = reconstruct_outputs(base, m, calib, device, **({"seed": seed} | v))
                    row = key | {"variant": v, "accuracy": accuracy(m, tx, ty, device), "base_pruned": pruned_acc,
                                 "distill": info}
                    record(row)
                    mine.append(row)
                if first is None:
                    first = mine
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
