"""Issue 5's fine-tuning benchmark: accuracy after 1 epoch of fine-tuning at a FLOPs target.

Shared ResNet-56 (akamaster checkpoint), ``train.zip`` for training/calibration and ``test.zip`` for evaluation
(JPEG CIFAR-10, see ``../shared/data/SOURCES.md``). Rows, all at the same fine-tuning recipe (``--epochs``,
SGD, cosine with warm-up, distillation from the dense model, standard crop+flip augmentation):

- ``dense``: the unpruned checkpoint fine-tuned the same way (the JPEG images shift the domain, so it gains too:
  this is the row to compare with, not the untouched checkpoint);
- ``l1`` and the similarity method (``--sim``, default ``qsfm``), or any other method named in ``--methods``:
  ``simprune.prune`` to ``--target`` with the default compensation (fold + least squares + BN re-estimation)
  on ``--calib-samples`` images (``--allocation``, ``--sequential`` as in ``bench/accuracy.py``), then
  fine-tuned;
- ``dcff``: trained compact from the checkpoint (uniform ratio over the fusable convs meeting the target;
  temperature from ``--dcff-t-start``).

Bar: the best pruned model within 0.5 points of the fine-tuned dense one. On a CPU use subsets::

    .venv/bin/python bench/finetune.py --train-samples 5000 --eval-samples 2000 --out finetune.json

Data and checkpoint: ``--train``, ``--eval`` and ``--checkpoint`` (default: under ``../shared/data``);
``--arch`` names the checkpoint's zoo architecture. Decoded tensors are cached in ``--cache``, keyed on the
zip's content hash (a changed zip is decoded again). ``--device cuda`` without CUDA fails with one line.
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
from accuracy import file_digest  # bench/accuracy.py: cache keys follow the file's content
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from simprune.checkpoint import load_state_dict
from simprune.data import open_dataset
from simprune.device import select_device
from simprune.errors import InputError
from simprune.finetune import FinetuneConfig, evaluate_top1, finetune
from simprune.flops import count_model
from simprune.methods.dcff import dcff_layer_ratios, dcff_train
from simprune.pruning.phases import prune
from simprune.zoo.cifar_resnet import IMAGENET_MEAN, IMAGENET_STD
from simprune.zoo.registry import build_model

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def tensors(zip_path: Path, limit: int | None, seed: int, cache: Path | None) -> TensorDataset:
    """A class-balanced, seeded subset of an ImageFolder zip, decoded once into normalised tensors."""
    f = cache / f"{zip_path.stem}_{file_digest(zip_path)}_{limit or 'all'}_{seed}.pt" if cache else None
    if f is not None and f.exists():
        d = torch.load(f, weights_only=True)
        return TensorDataset(d["x"], d["y"])
    ds = open_dataset(zip_path, mean=IMAGENET_MEAN, std=IMAGENET_STD, limit=limit, seed=seed)
    loader = DataLoader(ds, batch_size=500, num_workers=0)
    xs, ys = zip(*loader, strict=True)
    x, y = torch.cat(xs), torch.cat(ys)
    if f is not None:
        f.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"x": x, "y": y}, f)
    return TensorDataset(x, y)


def row(name: str, model: nn.Module, dense_counts: dict[str, Any], example: torch.Tensor, acc0: float | None,
        acc1: float, prune_s: float, train_s: float) -> dict[str, Any]:
    c = count_model(model, example)
    return {"method": name, "flops_reduction": round(1 - c["flops"] / dense_counts["flops"], 4),
            "params_reduction": round(1 - c["params"] / dense_counts["params"], 4),
            "top1_before_ft": None if acc0 is None else round(acc0, 2), "top1_after_ft": round(acc1, 2),
            "prune_s": round(prune_s, 1), "finetune_s": round(train_s, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", type=float, default=0.5, help="FLOPs reduction")
    ap.add_argument("--sim", default="qsfm", help="similarity method compared with l1")
    ap.add_argument("--methods", default="dense,l1,sim,dcff", help="rows to run (comma-separated)")
    ap.add_argument("--allocation", default="uniform", choices=("uniform", "global", "sensitivity"),
                    help="allocation of the pruned (non-dcff) rows")
    ap.add_argument("--sequential", action="store_true", help="sequential pruning for the pruned rows")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--train-samples", type=int, default=None, help="class-balanced subset of train.zip")
    ap.add_argument("--eval-samples", type=int, default=None, help="class-balanced subset of test.zip")
    ap.add_argument("--calib-samples", type=int, default=1024)
    ap.add_argument("--dcff-t-start", type=float, default=100.0,
                    help="DCFF initial temperature (the paper's 1 blends filters: too destructive for 1 epoch)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--arch", default="cifar_resnet56", help="zoo architecture of --checkpoint")
    ap.add_argument("--checkpoint", type=Path, default=SHARED / "checkpoints" / "resnet56-4bfd9763.th")
    ap.add_argument("--train", type=Path, default=SHARED / "cifar10-jpeg" / "train.zip",
                    help="training (and calibration) images: ImageFolder zip/dir or .npz")
    ap.add_argument("--eval", type=Path, default=SHARED / "cifar10-jpeg" / "test.zip", help="evaluation images")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--cache", type=Path, default=Path(".cache/bench_finetune"))
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = ap.parse_args()

    missing = [f"{name} {p}" for name, p in (("--checkpoint", args.checkpoint), ("--train", args.train),
                                                 ("--eval", args.eval)) if not p.exists()]
    if missing:
        print(f"finetune.py: not found: {'; '.join(missing)}", file=sys.stderr)
        raise SystemExit(2)
    try:
        dev = select_device(args.device)
    except InputError as exc:
        print(f"finetune.py: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t = time.perf_counter()
    train_ds = open_dataset(args.train, mean=IMAGENET_MEAN, std=IMAGENET_STD, limit=args.train_samples, seed=0,
                            train_augment=True)
    evals = tensors(args.eval, args.eval_samples, 0, args.cache)
    calib = tensors(args.train, args.calib_samples, 1, args.cache)
    print(f"data: train {len(train_ds)}, eval {len(evals)}, calib {len(calib)} ({time.perf_counter() - t:.0f}s)",
          flush=True)

    dense = build_model(args.arch)
    dense.load_state_dict(load_state_dict(args.checkpoint))
    dense.to(dev).eval()
    example = torch.zeros(1, 3, 32, 32, device=dev)
    dense_counts = count_model(dense, example)
    base = 100 * evaluate_top1(dense, evals, device=dev)  # percent in this bench's tables
    config = FinetuneConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, distill=True)
    calib_loader = DataLoader(calib, batch_size=256)
    print(f"checkpoint top-1 {base:.2f}%; recipe {config}", flush=True)

    rows: list[dict[str, Any]] = []
    for key in [m.strip() for m in args.methods.split(",") if m.strip()]:
        name = args.sim if key == "sim" else key
        t0 = time.perf_counter()
        if name == "dense":
            model, acc0, prune_s = copy.deepcopy(dense), base, 0.0
            t1 = time.perf_counter()
            finetune(model, train_ds, config, teacher=dense, device=dev)
        elif name == "dcff":
            _ratio, ratios, _ = dcff_layer_ratios(dense, example, target_flops_reduction=args.target)
            prune_s, acc0 = time.perf_counter() - t0, None
            t1 = time.perf_counter()
            model, _info = dcff_train(dense, train_ds, per_layer_ratios=ratios, config=config, teacher=dense,
                                      device=dev, example_input=example, t_start=args.dcff_t_start)
        else:
            model, _rep = prune(dense, example, name, target_flops_reduction=args.target, calib=calib_loader,
                                device=dev, allocation=args.allocation,
                                compensation_options={"sequential": True} if args.sequential else None)
            prune_s = time.perf_counter() - t0
            acc0 = 100 * evaluate_top1(model, evals, device=dev)  # percent in this bench's tables
            t1 = time.perf_counter()
            finetune(model, train_ds, config, teacher=dense, device=dev)
        train_s = time.perf_counter() - t1
        acc1 = 100 * evaluate_top1(model, evals, device=dev)  # percent in this bench's tables
        rows.append(row(name, model, dense_counts, example, acc0, acc1, prune_s, train_s))
        print(json.dumps(rows[-1]), flush=True)

    dense_row = next((r for r in rows if r["method"] == "dense"), None)
    pruned = [r for r in rows if r["method"] != "dense"]
    print(f"\n{args.arch}, {args.target:.0%} FLOPs target, {args.epochs} epoch(s) fine-tuning on "
          f"{len(train_ds)} train images, top-1 on {len(evals)} test images (checkpoint {base:.2f}%), {dev}")
    print("| method | FLOPs removed | params removed | top-1 before FT | top-1 after FT | prune s | FT s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        before = "-" if r["top1_before_ft"] is None else f"{r['top1_before_ft']:.2f}"
        print(f"| {r['method']} | {r['flops_reduction']:.1%} | {r['params_reduction']:.1%} | {before} | "
              f"{r['top1_after_ft']:.2f} | {r['prune_s']:.1f} | {r['finetune_s']:.1f} |")
    verdict = None
    if dense_row and pruned:
        best = max(pruned, key=lambda r: r["top1_after_ft"])
        gap = dense_row["top1_after_ft"] - best["top1_after_ft"]
        verdict = {"best": best["method"], "gap_points": round(gap, 2), "pass": gap <= 0.5}
        print(f"\nbest pruned: {best['method']} {gap:+.2f} points below dense -> "
              f"{'PASS' if gap <= 0.5 else 'FAIL'} (bar 0.5)")
    if args.out:
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "checkpoint_top1": base,
                                        "device": str(dev), "rows": rows, "verdict": verdict}, indent=2))


if __name__ == "__main__":
    main()
