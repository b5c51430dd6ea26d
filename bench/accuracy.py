"""Issue 3's accuracy benchmark: every method with and without compensation, no fine-tuning.

Shared CIFAR ResNets (akamaster checkpoints), calibration: 1,024 class-balanced images from ``train.zip``,
evaluation: ``test.zip`` (all 10,000 images by default, or a seeded subset with ``--eval-samples``). For each
net, FLOPs-reduction target and method, the model is pruned with uniform allocation and evaluated
without compensation and with the default compensation (fold + least squares + BN re-estimation). Torch-
Pruning's own L1 pruner (``tp.pruner.MetaPruner`` + ``MagnitudeImportance(p=1)``, the blocks' inner
channels only, same FLOPs target, no compensation) runs in the same script as the yardstick.

Decoded images are cached as tensors (``--cache``), keyed on the zip's content hash (a changed zip is decoded
again), so only the first run pays for JPEG decoding. Data and checkpoints come from ``--data`` and
``--checkpoints`` (default: ``../shared/data``).

    .venv/bin/python bench/accuracy.py --nets resnet56 --targets 0.5 --eval-samples 2000 --out results.json
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from simprune.allocator import keep_freed_memory
from simprune.checkpoint import load_state_dict
from simprune.data import open_dataset
from simprune.pruning.phases import prune
from simprune.zoo.cifar_resnet import IMAGENET_MEAN, IMAGENET_STD
from simprune.zoo.registry import build_model

keep_freed_memory()  # every benchmark script imports this module: same allocator settings as the CLI and worker

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
NETS = {"resnet56": ("cifar_resnet56", "resnet56-4bfd9763.th"), "resnet20": ("cifar_resnet20", "resnet20-12fca82f.th")}
METHODS = ["l1", "l2", "fpgm", "bn_scale", "random", "passive_sim", "nystrom_sim", "qsfm", "channel_cluster", "recon"]


def file_digest(path: Path) -> str:
    """The first 16 hex digits of the SHA-256 of a file (or a folder's files): cache keys follow the content,
    not the name."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]:
        h.update(f.relative_to(path).as_posix().encode() if f != path else b"")
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()[:16]


def cached_tensors(zip_path: Path, limit: int | None, cache: Path, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode (once) a class-balanced, seeded subset of an ImageFolder zip into normalised tensors."""
    tag = f"_s{seed}" if seed else ""
    # "_mix": the subset in class-interleaved order (simprune.data since 2026-11-27; older caches were sorted by class)
    f = cache / f"{zip_path.stem}_{file_digest(zip_path)}_{limit or 'all'}{tag}_mix.pt"
    if f.exists():
        d = torch.load(f, weights_only=True)
        return d["x"], d["y"]
    ds = open_dataset(zip_path, mean=IMAGENET_MEAN, std=IMAGENET_STD, limit=limit, seed=seed)
    xs, ys = zip(*[ds[i] for i in range(len(ds))], strict=True)
    x, y = torch.stack(xs), torch.tensor(ys)
    cache.mkdir(parents=True, exist_ok=True)
    torch.save({"x": x, "y": y}, f)
    return x, y


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device, bs: int = 500) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), bs):
        correct += int((model(x[i:i + bs].to(device)).argmax(1).cpu() == y[i:i + bs]).sum())
    return 100.0 * correct / len(x)


def load_net(key: str, device: torch.device, checkpoints: Path = SHARED / "checkpoints") -> nn.Module:
    arch, ck = NETS[key]
    m = build_model(arch)
    m.load_state_dict(load_state_dict(checkpoints / ck))
    return m.to(device).eval()


def tp_l1(model: nn.Module, example: torch.Tensor, target: float) -> tuple[nn.Module, float]:
    """Torch-Pruning's MetaPruner + L1 magnitude on the blocks' inner channels, ratio bisected to ``target``."""
    import torch_pruning as tp

    base_macs, _ = tp.utils.count_ops_and_params(model, example)
    inner = [f"{s}.{i}.conv1" for s in ("layer1", "layer2", "layer3") for i in range(len(getattr(model, s)))]
    keep_names = set(inner)

    def run(ratio: float) -> tuple[nn.Module, float]:
        m = copy.deepcopy(model)
        ignored = [mod for n, mod in m.named_modules()
                   if isinstance(mod, nn.Conv2d | nn.Linear) and n not in keep_names]
        pruner = tp.pruner.MetaPruner(m, example, importance=tp.importance.MagnitudeImportance(p=1),
                                      pruning_ratio=ratio, ignored_layers=ignored)
        pruner.step()
        macs, _ = tp.utils.count_ops_and_params(m, example)
        return m, 1.0 - macs / base_macs

    lo, hi = 0.0, 0.95
    best: tuple[nn.Module, float] | None = None
    for _ in range(12):
        mid = (lo + hi) / 2
        m, red = run(mid)
        if best is None or abs(red - target) < abs(best[1] - target):
            best = (m, red)
        if abs(red - target) < 0.003:
            break
        lo, hi = (mid, hi) if red < target else (lo, mid)
    assert best is not None
    return best


def _label(method: str, args: argparse.Namespace) -> str:
    """Row label: the method, then the preset or the non-default switches."""
    if args.preset:
        return f"{method}@{args.preset}"
    label = method if args.allocation == "uniform" else f"{method}+{args.allocation}"
    return label + ("+seq" if args.sequential else "")


def _settings(args: argparse.Namespace, on: bool) -> dict[str, Any]:
    """prune() keyword arguments for a row: a preset's settings, or the command line's switches."""
    if args.preset:
        from simprune.presets import resolve_preset

        r = resolve_preset(args.preset, has_calibration=True)
        return {"allocation": r["allocation"], "compensation": r["compensation"],
                "allocation_options": r["allocation_options"] or None,
                "compensation_options": r["compensation_options"] or None}
    return {"compensation": None if on else {"fold": False, "lstsq": False, "bn": False},
            "compensation_options": {"sequential": True} if on and args.sequential else None,
            "allocation": args.allocation, "allocation_options": json.loads(args.allocation_options) or None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", default="resnet56,resnet20")
    ap.add_argument("--targets", default="0.3,0.5,0.7")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--compensation", default="off,on", help="off, on, or both (off,on)")
    ap.add_argument("--no-tp", action="store_true", help="skip Torch-Pruning's L1 pruner")
    ap.add_argument("--allocation", default="uniform", choices=("uniform", "global", "sensitivity"),
                    help="per-layer allocation (rows are labelled method+allocation unless uniform)")
    ap.add_argument("--allocation-options", default="{}", help="JSON, e.g. '{\"n_images\": 512}'")
    ap.add_argument("--sequential", action="store_true",
                    help="sequential pruning (select and re-fit group by group) when compensation is on")
    ap.add_argument("--preset", default="", choices=("", "fast", "balanced", "best"),
                    help="run a named preset (simprune.presets) instead of the switches above; rows are labelled "
                         "method@preset")
    ap.add_argument("--seeds", default="0", help="calibration sampling seeds (rows per seed; the table shows the "
                                                 "mean and the spread)")
    ap.add_argument("--eval-samples", type=int, default=0, help="seeded test subset (0 = all 10,000)")
    ap.add_argument("--calib-samples", type=int, default=1024)
    ap.add_argument("--cache", default="/tmp/simprune_bench_cache")
    ap.add_argument("--data", default=str(SHARED / "cifar10-jpeg"), help="folder with train.zip and test.zip")
    ap.add_argument("--checkpoints", type=Path, default=SHARED / "checkpoints",
                    help="folder with the akamaster checkpoints (" + ", ".join(ck for _, ck in NETS.values()) + ")")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--resume", action="store_true", help="keep the rows already in --out, skip them")
    ap.add_argument("--out", default="results.json")
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    data = Path(args.data)
    if not (data / "test.zip").exists():
        print(f"shared data not found at {data}; nothing to do", file=sys.stderr)
        return 2
    from simprune.device import select_device
    from simprune.errors import InputError

    try:
        device = select_device(args.device)
    except InputError as exc:
        print(f"accuracy.py: {exc}", file=sys.stderr)
        return 2
    missing = [n for n in args.nets.split(",") if not (args.checkpoints / NETS[n][1]).is_file()]
    if missing:
        print(f"accuracy.py: checkpoint of {', '.join(missing)} not found in {args.checkpoints}", file=sys.stderr)
        return 2
    cache = Path(args.cache)
    tx, ty = cached_tensors(data / "test.zip", None, cache)
    if args.eval_samples and args.eval_samples < len(tx):
        idx = torch.randperm(len(tx), generator=torch.Generator().manual_seed(1))[: args.eval_samples]
        tx, ty = tx[idx], ty[idx]
    rows: list[dict[str, Any]] = []
    out = Path(args.out)
    if args.resume and out.exists():
        rows = json.loads(out.read_text())["rows"]
    done = {(r["net"], r["method"], r["compensation"], r["target"], r.get("seed", 0)) for r in rows}

    def record(row: dict[str, Any]) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)
        out.write_text(json.dumps({"eval_samples": len(tx), "calib_samples": args.calib_samples, "rows": rows},
                                  indent=1))

    for net in args.nets.split(","):
        base = load_net(net, device, args.checkpoints)
        prev = [r for r in rows if (r["net"], r["method"]) == (net, "dense")]
        base_acc = prev[0]["accuracy"] if prev else accuracy(base, tx, ty, device)
        if not prev:
            record({"net": net, "method": "dense", "compensation": None, "target": 0.0, "flops_reduction": 0.0,
                    "accuracy": base_acc})
        for seed in [int(v) for v in args.seeds.split(",")]:
            calib, _ = cached_tensors(data / "train.zip", args.calib_samples, cache, seed)
            for target in [float(t) for t in args.targets.split(",")]:
                if not args.no_tp and (net, "torch_pruning_l1", "off", target, seed) not in done and seed == 0:
                    t0 = time.perf_counter()
                    m, red = tp_l1(base, calib[:1].to(device), target)
                    record({"net": net, "method": "torch_pruning_l1", "compensation": "off", "target": target,
                            "flops_reduction": red, "accuracy": accuracy(m, tx, ty, device),
                            "prune_s": time.perf_counter() - t0})
                for method in args.methods.split(","):
                    for comp in (["on"] if args.preset else args.compensation.split(",")):
                        row = {"net": net, "method": _label(method, args), "compensation": comp, "target": target,
                               "seed": seed}
                        if (net, row["method"], comp, target, seed) in done:
                            continue
                        t0 = time.perf_counter()
                        pm, rep = prune(base, calib[:1].to(device), method, target_flops_reduction=target,
                                        calib=calib, device=device, **_settings(args, comp == "on"))
                        row.update({"flops_reduction": rep["flops_reduction"],
                                    "params_reduction": rep["params_reduction"],
                                    "accuracy": accuracy(pm, tx, ty, device), "base_accuracy": base_acc,
                                    "prune_s": time.perf_counter() - t0, "timings": rep["timings"],
                                    "dropped_blocks": rep.get("dropped_blocks")})
                        record(row)
    print_table(rows)
    return 0


def print_table(rows: list[dict[str, Any]]) -> None:
    """Markdown: one row per (net, method), one column per (target, compensation); over several calibration
    seeds a cell is the mean and the spread (max - min)."""
    cols = sorted({(r["target"], r["compensation"] or "") for r in rows if r["method"] != "dense"})
    print("\n| net | method | " + " | ".join(f"{t:.0%} {c}".strip() for t, c in cols) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in cols) + " |")
    keys = []
    for r in rows:
        if (r["net"], r["method"]) not in keys:
            keys.append((r["net"], r["method"]))
    for net, method in keys:
        cells = []
        for t, c in cols:
            accs = [r["accuracy"] for r in rows if r["net"] == net and r["method"] == method
                    and ((r["target"], r["compensation"] or "") == (t, c) or method == "dense")]
            if not accs or (method == "dense" and cells):
                cells.append("")
            elif len(accs) == 1:
                cells.append(f"{accs[0]:.2f}")
            else:
                cells.append(f"{sum(accs) / len(accs):.2f} ({max(accs) - min(accs):.2f}, n={len(accs)})")
        print(f"| {net} | {method} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    raise SystemExit(main())
