#!/usr/bin/env bash
# Issue 11's GPU acceptance run (and the GPU time of the `best` preset), one shot on a lent GPU machine.
#
#   1. ResNet-50, batch 256: a CUDA profile in bf16 + channels_last measured in the run, pruned with
#      target_speedup 2 (widths + residual blocks), against dense and the FLOPs-targeted default at the same FLOPs,
#      timed in fp32 eager and bf16 + channels_last + torch.compile;
#   2. CIFAR ResNet-56, batch 2048: the same, timed in fp32, bf16-cl and bf16-cl-compile;
#   3. `bench/accuracy.py` on the shared ResNet-56 with the `best` preset (l1, 50%, seed 0) on CUDA: its wall time.
#
# From the checkout root, after `bash ../shared/gpu/make-bundle.sh` (the `.gpu/` bundle travels with the checkout):
#   OUT=/some/dir bash bench/gpu_latency.sh
# CPU rehearsal (small work, no wheels):
#   SKIP_WHEELS=1 PY=.venv/bin/python DEVICE=cpu QUICK=1 OUT=$(mktemp -d) bash bench/gpu_latency.sh
# PART=2: instead of 1 and 2, the FLOPs-targeted default path with and without round_to 8 on both nets (round_r50.json,
# round_r56.json), and step 3 with the four paper methods.
# $OUT receives summary.txt, log.txt, lat_r50.json, lat_r56.json, acc_r56.json. Each step runs under its own
# time cap; the whole script ends within BUDGET seconds (default 540) plus a few.
set -u
DEVICE="${DEVICE:-cuda}"
QUICK="${QUICK:-0}"
BUDGET="${BUDGET:-540}"
WORK="${WORK:-/tmp/simprune_gpu_latency}"
source "$(dirname "${BASH_SOURCE[0]}")/gpu_common.sh"

if [ "$QUICK" = 1 ]; then
  R50=(--archs cifar_resnet20 --batches 16 --profile-batch 16 --modes fp32 --profile-budget-s 40)
  R56=(--archs cifar_resnet56 --batches 16 --profile-batch 16 --modes fp32 --profile-budget-s 60)
  PDT=(--profile-dtype float32); ACC=(--nets resnet20 --eval-samples 500 --calib-samples 256 --preset fast)
else
  R50=(--archs resnet50 --batches 256 --profile-batch 256 --modes fp32 bf16-cl bf16-cl-compile --profile-budget-s 90)
  R56=(--archs cifar_resnet56 --batches 2048 --profile-batch 2048 --modes fp32 bf16-cl bf16-cl-compile
       --profile-budget-s 90)
  PDT=(--profile-dtype bfloat16 --profile-channels-last); ACC=(--nets resnet56 --eval-samples 0 --preset best)
fi
COMMON=(--device "$DEVICE" --target-speedup 2 --profile-repeats 10 --allocation sensitivity --depth
        --calib-images 64 --warmup 3 --repeats 20 --budget-s 8 --threads "${THREADS:-8}" --compiled-variants speedup
        "${PDT[@]}")

if [ "${PART:-1}" = 1 ]; then
step R50 270 240 "$PY" bench/latency.py "${R50[@]}" "${COMMON[@]}" --out "$OUT/lat_r50.json"
step R56 220 40 "$PY" bench/latency.py "${R56[@]}" "${COMMON[@]}" --out "$OUT/lat_r56.json"
else  # PART=2: the FLOPs-targeted default path (l1, uniform, 50% FLOPs) with and without round_to 8
ROUND=(--methods simprune --round-to none 8 --target 0.5 --warmup 3 --repeats 20 --budget-s 8 --threads "${THREADS:-8}"
       --device "$DEVICE")
step ROUND_R50 100 280 "$PY" bench/latency.py "${R50[@]:0:4}" --modes fp32 bf16-cl bf16-cl-compile "${ROUND[@]}" \
  --out "$OUT/round_r50.json"
step ROUND_R56 100 200 "$PY" bench/latency.py "${R56[@]:0:4}" --modes fp32 bf16-cl bf16-cl-compile "${ROUND[@]}" \
  --out "$OUT/round_r56.json"
fi

link_data
ACC_METHODS=l1; [ "${PART:-1}" = 2 ] && ACC_METHODS=qsfm,channel_cluster,passive_sim,nystrom_sim
step ACC 250 0 "$PY" bench/accuracy.py "${ACC[@]}" --targets 0.5 --methods "$ACC_METHODS" --no-tp --seeds 0 \
  --device "$DEVICE" \
  --data "$DATA" --checkpoints "$CK" --cache "$WORK/cache" --out "$OUT/acc_r56.json"
finish
