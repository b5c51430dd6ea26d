#!/usr/bin/env bash
# One-shot GPU run of bench/output_recon_sweep.py: label-free output reconstruction variants after `best` without
# the stage (50% FLOPs, seed 0).
#   1. ResNet-20, l1: the whole built-in variant grid (r20.json);
#   2. ResNet-56, l1 / passive_sim / nystrom_sim: the best TOP variants of step 1 (r56.json).
# From the checkout root after `bash ../shared/gpu/make-bundle.sh`:  OUT=/some/dir bash bench/gpu_output_recon.sh
# CPU rehearsal:  SKIP_WHEELS=1 PY=.venv/bin/python DEVICE=cpu QUICK=1 OUT=$(mktemp -d) bash bench/gpu_output_recon.sh
set -u
DEVICE="${DEVICE:-cuda}"; QUICK="${QUICK:-0}"; BUDGET="${BUDGET:-450}"; TOP="${TOP:-2}"
WORK="${WORK:-/tmp/simprune_gpu_output_recon}"
source "$(dirname "${BASH_SOURCE[0]}")/gpu_common.sh"
link_data
EXTRA=(); [ "$QUICK" = 1 ] && EXTRA=(--quick --eval-samples 500 --calib-samples 256 --preset fast)
COMMON=(--device "$DEVICE" --data "$DATA" --checkpoints "$CK" --cache "$WORK/cache" --seeds 0 "${EXTRA[@]}"
        --compensation '{"output_recon": false}')
step R20 170 250 "$PY" bench/output_recon_sweep.py --nets resnet20 --methods l1 "${COMMON[@]}" --out "$OUT/r20.json"
step R56 400 0 "$PY" bench/output_recon_sweep.py --nets resnet56 --methods l1,passive_sim,nystrom_sim "${COMMON[@]}" \
  --rank-from "$OUT/r20.json" --top "$TOP" --budget-s $(( DEADLINE - $(date +%s) - 60 )) --out "$OUT/r56.json"
finish
