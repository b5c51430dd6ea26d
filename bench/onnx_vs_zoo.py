"""Pruning a model from its ONNX export equals pruning the zoo model (issue 14).

The shared CIFAR ResNet-56 (akamaster checkpoint, zoo architecture ``cifar_resnet56``) is exported to ONNX, and
pruned twice with the same method and target: once as the zoo model, once from the ONNX file (checked, converted
with onnx2torch and verified against onnxruntime by :func:`simprune.onnx_import.load_onnx`, which is what the
``onnx`` architecture of a job runs). Both use the default compensation on the same 1,024 class-balanced
calibration images from ``train.zip`` and seed 0; both are evaluated on the full ``test.zip`` (10,000 images).
The accuracies must agree within ``--tolerance`` points (exit status 1 otherwise).

By default the export keeps the BatchNorm layers; ``--bn fold`` uses ``torch.onnx.export``'s default, which folds
them into the convolutions: a different parametrisation of the same function, so an L1 criterion ranks other
channels and the two prunings legitimately differ (recorded in ``onnx_vs_zoo_folded_bn.json``).

    .venv/bin/python bench/onnx_vs_zoo.py --skip-dense --out bench/results/onnx_vs_zoo.json
    .venv/bin/python bench/onnx_vs_zoo.py --bn fold --out bench/results/onnx_vs_zoo_folded_bn.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import SHARED, accuracy, cached_tensors, load_net  # noqa: E402  (the shared benchmark helpers)


def export_onnx(model: torch.nn.Module, path: Path, bn: str = "keep") -> Path:
    """The dense model as a standard ONNX file (opset 17, dynamic batch). ``bn="keep"`` keeps BatchNormalization
    nodes (``TrainingMode.PRESERVE`` on the eval-mode model), ``"fold"`` is the exporter's default, which folds each
    BatchNorm into the convolution before it: the file then holds BN-scaled weights, so a weight-magnitude
    criterion ranks other channels and there is no BatchNorm to re-estimate."""
    mode = torch.onnx.TrainingMode.PRESERVE if bn == "keep" else torch.onnx.TrainingMode.EVAL
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.randn(1, 3, 32, 32),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "batch"}},
                          training=mode)
    return path


def prune_and_eval(model: torch.nn.Module, args: argparse.Namespace, calib: torch.Tensor, test: tuple[Any, Any],
                   device: torch.device) -> dict[str, Any]:
    """Dense accuracy, then prune (seed, method, target, default compensation) and the pruned accuracy."""
    from simprune.pruning.phases import prune

    t0 = time.perf_counter()
    dense = None if args.skip_dense else round(accuracy(model, *test, device), 2)
    torch.manual_seed(args.seed)
    pruned, report = prune(model, torch.randn(1, 3, 32, 32), args.method, target_flops_reduction=args.target,
                           calib=calib, device=device)
    acc = accuracy(pruned, *test, device)
    return {"dense_accuracy": dense, "pruned_accuracy": round(acc, 2),
            "flops_reduction": round(float(report["flops_reduction"]), 4),
            "params_reduction": round(float(report["params_reduction"]), 4),
            "keep": [layer["keep"] for layer in report["plan"]["layers"]],
            "seconds": round(time.perf_counter() - t0, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=SHARED / "cifar10-jpeg")
    ap.add_argument("--checkpoints", type=Path, default=SHARED / "checkpoints")
    ap.add_argument("--method", default="l1")
    ap.add_argument("--target", type=float, default=0.5)
    ap.add_argument("--calib-samples", type=int, default=1024)
    ap.add_argument("--eval-samples", type=int, default=None, help="default: all 10,000 test images")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tolerance", type=float, default=0.1, help="largest accepted accuracy gap, in points")
    ap.add_argument("--bn", choices=["keep", "fold"], default="keep", help="BatchNorm in the ONNX export (see "
                    "export_onnx); 'fold' is torch.onnx.export's default")
    ap.add_argument("--skip-dense", action="store_true", help="do not evaluate the dense models")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "simprune_bench_cache")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    from simprune.onnx_import import load_onnx

    calib, _ = cached_tensors(args.data / "train.zip", args.calib_samples, args.cache)
    test = cached_tensors(args.data / "test.zip", args.eval_samples, args.cache)
    zoo = load_net("resnet56", device, args.checkpoints)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_model = load_onnx(export_onnx(zoo, Path(tmp) / "resnet56.onnx", args.bn))
        bn_layers = sum(isinstance(m, torch.nn.BatchNorm2d) for m in onnx_model.module.modules())
        rows = {"zoo": prune_and_eval(zoo, args, calib, test, device),
                "onnx": prune_and_eval(onnx_model.module, args, calib, test, device)}
    gap = abs(rows["zoo"]["pruned_accuracy"] - rows["onnx"]["pruned_accuracy"])
    same_plan = rows["zoo"].pop("keep") == rows["onnx"].pop("keep")
    result = {"net": "cifar_resnet56", "checkpoint": "resnet56-4bfd9763.th", "method": args.method,
              "target_flops_reduction": args.target, "calib_samples": args.calib_samples,
              "eval_samples": len(test[1]), "seed": args.seed, "onnx_bn": args.bn, "onnx_batchnorm_layers": bn_layers,
              "onnx_arch": onnx_model.arch,
              "conversion_max_rel_diff": onnx_model.fidelity_max_abs_diff, "same_channels_kept": same_plan,
              **rows, "accuracy_gap_points": round(gap, 3), "within_tolerance": gap <= args.tolerance,
              "torch": torch.__version__}
    print(json.dumps(result, indent=1))
    print("\n| source | dense top-1 | pruned top-1 | FLOPs -% |\n|---|---|---|---|\n" + "\n".join(
        f"| {k} | {r['dense_accuracy']} | {r['pruned_accuracy']:.2f} | {100 * r['flops_reduction']:.1f} |"
        for k, r in rows.items()) + f"\n\ngap {gap:.2f} points (tolerance {args.tolerance}), same channels kept: "
        f"{same_plan}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return 0 if result["within_tolerance"] else 1


if __name__ == "__main__":
    sys.exit(main())
