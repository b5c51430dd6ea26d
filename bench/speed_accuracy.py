"""Accuracy at the same measured speed: the latency-targeted model against FLOPs-targeted ones (issue 11).

On this machine (CPU with ``--threads``, batch ``--batch``), the shared CIFAR ResNet-56 is pruned with the
`best` preset's settings (a job's default with calibration data) twice over:

* to ``--target-speedup`` with a device profile measured here in the same run (or ``--profile FILE``);
* to each FLOPs reduction in ``--flops-targets`` (the default FLOPs-targeted path).

Every model is evaluated on the test set (all 10,000 images by default) and timed against the dense model, all
of them interleaved in the same rounds (the fastest round of each: background load only adds time). The
FLOPs-targeted accuracy at the latency-targeted model's measured speedup is interpolated linearly between the two
FLOPs-targeted models that bracket that speed (``null`` when none does: then compare the rows directly).

    .venv/bin/python bench/speed_accuracy.py --threads 2 --batch 1 --out r56_speed_accuracy.json
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import NETS, SHARED, _settings, accuracy, cached_tensors, load_net  # noqa: E402

from simprune.latency import time_interleaved  # noqa: E402
from simprune.profiles import load_profile, save_profile  # noqa: E402
from simprune.profiling import ProfileSettings, measure_profile  # noqa: E402
from simprune.pruning.phases import prune  # noqa: E402


def interpolate(points: list[tuple[float, float]], at: float) -> float | None:
    """Linear interpolation of ``(speedup, accuracy)`` points at speedup ``at`` (None outside their range)."""
    pts = sorted(points)
    for (s0, a0), (s1, a1) in zip(pts, pts[1:], strict=False):
        if s0 <= at <= s1:
            return a0 if s1 == s0 else a0 + (a1 - a0) * (at - s0) / (s1 - s0)
    return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--net", default="resnet56", choices=sorted(NETS))
    p.add_argument("--target-speedup", type=float, default=2.0)
    p.add_argument("--flops-targets", default="0.5,0.6,0.7")
    p.add_argument("--method", default="l1")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=1, help="batch size of the profile and of the timing")
    p.add_argument("--profile", type=Path, default=None, help="a profile measured here before (else measured now)")
    p.add_argument("--profile-budget-s", type=float, default=150.0)
    p.add_argument("--timing-budget-s", type=float, default=90.0)
    p.add_argument("--seed", type=int, default=0, help="calibration sampling seed")
    p.add_argument("--calib-samples", type=int, default=1024)
    p.add_argument("--eval-samples", type=int, default=0, help="seeded test subset (0 = all 10,000)")
    p.add_argument("--data", default=str(SHARED / "cifar10-jpeg"))
    p.add_argument("--checkpoints", type=Path, default=SHARED / "checkpoints")
    p.add_argument("--cache", default="/tmp/simprune_bench_cache")
    p.add_argument("--out", type=Path, default=Path("speed_accuracy.json"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    dev = torch.device("cpu")
    data, cache = Path(args.data), Path(args.cache)
    cx, _ = cached_tensors(data / "train.zip", args.calib_samples, cache, seed=args.seed)
    tx, ty = cached_tensors(data / "test.zip", args.eval_samples or None, cache)
    dense = load_net(args.net, dev, args.checkpoints)
    arch = NETS[args.net][0]
    example = cx[:1]
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    if args.profile is not None:
        profile = load_profile(args.profile)
    else:
        t = time.perf_counter()
        profile = measure_profile(dense, arch, tuple(example.shape[1:]), dev, ProfileSettings(
            batch_size=args.batch, budget_s=args.profile_budget_s, threads=args.threads)).profile
        save_profile(profile, args.out.with_suffix(".profile.json"))
        log(f"profile: {len(profile.groups)} groups, {len(profile.blocks)} blocks, {time.perf_counter() - t:.0f}s")
    settings = _settings(argparse.Namespace(preset="best"), True)
    rows: list[dict[str, Any]] = [{"variant": "dense", "accuracy": round(accuracy(dense, tx, ty, dev), 2)}]
    models = [dense]
    jobs: list[tuple[str, dict[str, Any]]] = [(f"speedup {args.target_speedup:g}x", {
        "target_speedup": args.target_speedup, "latency_profile": profile})]
    jobs += [(f"flops {float(t):.0%}", {"target_flops_reduction": float(t)}) for t in args.flops_targets.split(",")]
    for name, target in jobs:
        t = time.perf_counter()
        pruned, report = prune(copy.deepcopy(dense), example, args.method, calib=cx, device=dev, **settings, **target)
        row = {"variant": name, "accuracy": round(accuracy(pruned, tx, ty, dev), 2),
               "flops_reduction": round(report["flops_reduction"], 4), "prune_s": round(time.perf_counter() - t, 1),
               "dropped_blocks": [d["name"] for d in report.get("dropped_blocks") or []],
               "predicted_speedup": report.get("predicted_speedup"),
               "measured_rounds": (report.get("latency_target") or {}).get("measured_rounds")}
        log(json.dumps(row))
        rows.append(row)
        models.append(pruned.eval())
    x = torch.randn(args.batch, *example.shape[1:])
    with torch.inference_mode():
        times, why = time_interleaved([lambda m=m: m(x) for m in models], dev, 3, 200, args.timing_budget_s)
    if why:
        raise SystemExit(f"speed_accuracy.py: timing did not fit: {why}")
    for row, ts in zip(rows, times, strict=True):
        row["min_ms"] = round(min(ts) * 1e3, 3)
        row["speedup"] = round(min(times[0]) / min(ts), 3)
    fast = rows[1]
    flops_pts = [(r["speedup"], r["accuracy"]) for r in rows[2:]]
    doc = {"config": {k: str(v) for k, v in vars(args).items()}, "torch": torch.__version__,
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": rows,
           "flops_accuracy_at_same_speed": interpolate(flops_pts, fast["speedup"])}
    args.out.write_text(json.dumps(doc, indent=1))
    print(f"| variant | FLOPs removed | measured speedup (batch {args.batch}) | top-1 |\n| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['variant']} | {r.get('flops_reduction', 0):.1%} | {r['speedup']:.2f}x | {r['accuracy']:.2f} |")
    print(f"FLOPs-targeted accuracy interpolated at {fast['speedup']:.2f}x: {doc['flops_accuracy_at_same_speed']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
