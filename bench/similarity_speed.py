"""Issue 3: time of passive_sim's full similarity path vs nystrom_sim's, with the kept-set overlap.

For every layer (the shared ResNet-56's prunable convs, and synthetic layers of 256, 512, 1024 and 2048
filters with 3x3 and 1x1 kernels) it times, best of ``--repeats``:

* ``proto_s``: the SVD filter prototypes (shared by both paths);
* ``full_sim_s`` / ``nys_sim_s``: prototypes + similarity matrix + rounded distance (O(d^2) vs O(d*m));
* ``full_auto_s`` / ``nys_auto_s``: the whole "auto" selection (distance + the paper's greedy);
* ``jaccard``: overlap |K_full & K_nys| / |K_full | K_nys| of the automatically kept sets.

    .venv/bin/python bench/similarity_speed.py --out similarity_speed.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from simprune.methods._similarity import filter_prototypes, passive_greedy
from simprune.methods.base import ChannelGroup
from simprune.methods.nystrom_sim import NystromSim
from simprune.methods.passive_sim import PassiveSim

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def best_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def measure(name: str, weight: torch.Tensor, repeats: int, m: int) -> dict[str, Any]:
    conv = nn.Conv2d(weight.shape[1], weight.shape[0], tuple(weight.shape[2:]), bias=False)
    conv.weight.data = weight
    g = ChannelGroup(name=name, conv=conv, bn=None, n_channels=weight.shape[0])
    full, nys = PassiveSim(), NystromSim(m=m)
    proto_s, _ = best_time(lambda: filter_prototypes(g.weight), repeats)
    full_sim_s, dfull = best_time(lambda: full.distance(g), repeats)
    nys_sim_s, dnys = best_time(lambda: nys.distance(g), repeats)
    full_auto_s, kf = best_time(lambda: passive_greedy(full.distance(g))[0], repeats)
    nys_auto_s, kn = best_time(lambda: passive_greedy(nys.distance(g))[0], repeats)
    a, b = set(kf), set(kn)
    return {
        "layer": name, "filters": weight.shape[0], "in_channels": weight.shape[1],
        "kernel": f"{weight.shape[2]}x{weight.shape[3]}", "m": m,
        "proto_s": proto_s, "full_sim_s": full_sim_s, "nys_sim_s": nys_sim_s,
        "full_auto_s": full_auto_s, "nys_auto_s": nys_auto_s,
        "speedup_sim": full_sim_s / max(nys_sim_s, 1e-12), "speedup_auto": full_auto_s / max(nys_auto_s, 1e-12),
        "kept_full": len(a), "kept_nys": len(b), "jaccard": len(a & b) / max(1, len(a | b)),
        "max_abs_dist_diff": float(abs(dfull - dnys).max()),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="256,512,1024,2048")
    ap.add_argument("--in-channels", type=int, default=256, help="C_in of the synthetic layers")
    ap.add_argument("--m", type=int, default=9, help="Nystrom landmarks (the paper's m)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier timings)")
    ap.add_argument("--out", default="similarity_speed.json")
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows: list[dict[str, Any]] = []
    ck = SHARED / "checkpoints" / "resnet56-4bfd9763.th"
    if ck.exists():
        from simprune.checkpoint import load_state_dict

        sd = load_state_dict(ck)
        for k in sorted(sd):
            if k.endswith("conv1.weight") and k.startswith("layer") and k.split(".")[1] in ("0", "4", "8"):
                rows.append(measure("resnet56." + k[: -len(".weight")], sd[k].float(), args.repeats, args.m))
    else:
        print(f"shared checkpoint {ck} not found: real layers skipped")
    for d in [int(s) for s in args.sizes.split(",")]:
        for k in (3, 1):
            w = torch.randn(d, args.in_channels, k, k)
            rows.append(measure(f"synthetic_{d}_{k}x{k}", w, args.repeats, args.m))
    Path(args.out).write_text(json.dumps(rows, indent=1))
    print("| layer | filters | kernel | prototypes s | full sim s | Nystrom sim s | speed-up | full auto s "
          "| Nystrom auto s | speed-up | kept full/Nys | Jaccard |")
    print("| --- " * 12 + "|")
    for r in rows:
        print(f"| {r['layer']} | {r['filters']} | {r['kernel']} | {r['proto_s']:.4f} | {r['full_sim_s']:.4f} "
              f"| {r['nys_sim_s']:.4f} | {r['speedup_sim']:.2f}x | {r['full_auto_s']:.4f} | {r['nys_auto_s']:.4f} "
              f"| {r['speedup_auto']:.2f}x | {r['kept_full']}/{r['kept_nys']} | {r['jaccard']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
