#!/usr/bin/env bash
# One-shot GPU run of bench/output_recon_sweep.py: label-free output reconstruction variants after `best` without
# the stage (50% FLOPs, seed 0).
#   1. ResNet-20, l1: the whole built-in variant grid (r20.json);
#   2. ResNet-56, l1 / passive_sim / nystrom_sim: the best TOP variants of step 1 (r56.json).
# From the checkout root after `bash ../shared/gpu/make-bundle.sh`:  OUT=/some/dir bash bench/gpu_output_recon.sh
# CPU rehearsal:  SKIP_WHEELS=1 PY=.venv/bin/python DEVICE=cpu QUICK=1 OUT=$(mktemp -d) bash bench/gpu_output_recon.sh
set -u
export PYTHONUNBUFFERED=1
: "${OUT:?set OUT to the output folder}"
PY="${PY:-python3}"; DEVICE="${DEVICE:-cuda}"; QUICK="${QUICK:-0}"; BUDGET="${BUDGET:-450}"; TOP="${TOP:-2}"
mkdir -p "$OUT"; OUT="$(cd "$OUT" && pwd)"
SUMMARY="$OUT/summary.txt"; LOG="$OUT/log.txt"; : >"$SUMMARY"; : >"$LOG"
T0=$(date +%s); DEADLINE=$(( T0 + BUDGET ))
WORK="${WORK:-/tmp/simprune_gpu_output_recon}"; rm -rf "$WORK"; mkdir -p "$WORK"
export MPLBACKEND=Agg MPLCONFIGDIR="$WORK/mpl"
if [ "${SKIP_WHEELS:-0}" != 1 ]; then
  SITE=/tmp/site; rm -rf "$SITE"; mkdir -p "$SITE"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    .gpu/whl/*.whl >>"$LOG" 2>&1 || echo "pip install failed" >>"$SUMMARY"
  export PYTHONPATH="$SITE:$PWD"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
{ echo "install s=$(( $(date +%s) - T0 ))"; "$PY" -c 'import torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")' 2>&1 | tail -1; } >>"$SUMMARY"
step() {
  local name=$1 cap=$2 reserve=$3; shift 3
  local left=$(( DEADLINE - $(date +%s) - reserve )); local lim=$(( left < cap ? left : cap )); (( lim < 10 )) && lim=10
  echo "===== $name (limit ${lim}s) =====" >>"$LOG"; local s; s=$(date +%s)
  timeout -k 5 "$lim" "$@" >>"$LOG" 2>&1
  echo "$name rc=$? s=$(( $(date +%s) - s )) limit=$lim" >>"$SUMMARY"
}
DATA="$WORK/data"; mkdir -p "$DATA"
if [ -f .gpu/data/test.zip ]; then
  ln -s "$PWD/.gpu/data/train10k.zip" "$DATA/train.zip"; ln -s "$PWD/.gpu/data/test.zip" "$DATA/test.zip"; CK=.gpu/data
else
  ln -s "$PWD/../shared/data/cifar10-jpeg/train.zip" "$DATA/train.zip"
  ln -s "$PWD/../shared/data/cifar10-jpeg/test.zip" "$DATA/test.zip"; CK=../shared/data/checkpoints
fi
EXTRA=(); [ "$QUICK" = 1 ] && EXTRA=(--quick --eval-samples 500 --calib-samples 256 --preset fast)
COMMON=(--device "$DEVICE" --data "$DATA" --checkpoints "$CK" --cache "$WORK/cache" --seeds 0 "${EXTRA[@]}"
        --compensation '{"output_recon": false}')
step R20 170 250 "$PY" bench/output_recon_sweep.py --nets resnet20 --methods l1 "${COMMON[@]}" --out "$OUT/r20.json"
step R56 400 0 "$PY" bench/output_recon_sweep.py --nets resnet56 --methods l1,passive_sim,nystrom_sim "${COMMON[@]}" \
  --rank-from "$OUT/r20.json" --top "$TOP" --budget-s $(( DEADLINE - $(date +%s) - 60 )) --out "$OUT/r56.json"
echo "total s=$(( $(date +%s) - T0 ))" >>"$SUMMARY"
tail -c 20000 "$LOG" >"$LOG.tmp" && mv "$LOG.tmp" "$LOG"
cat "$SUMMARY"
