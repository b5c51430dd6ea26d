# Shared set-up of the one-shot GPU scripts (bench/gpu_latency.sh, bench/gpu_output_recon.sh); sourced, not run.
# Expects OUT, WORK and BUDGET set; PY (default python3) and SKIP_WHEELS=1 (a CPU rehearsal with the venv's packages).
# Gives SUMMARY, LOG, T0, DEADLINE, PYTHONPATH (the bundle's wheels installed to /tmp/site), and the functions
# step, link_data and finish.
: "${OUT:?set OUT to the output folder}"
PY="${PY:-python3}"
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
SUMMARY="$OUT/summary.txt"; LOG="$OUT/log.txt"
: >"$SUMMARY"; : >"$LOG"
T0=$(date +%s); DEADLINE=$(( T0 + BUDGET ))
rm -rf "$WORK"; mkdir -p "$WORK"
export MPLBACKEND=Agg MPLCONFIGDIR="$WORK/mpl"

if [ "${SKIP_WHEELS:-0}" != 1 ]; then  # the GPU machine is offline: the wheels come in the .gpu/ bundle
  SITE=/tmp/site; rm -rf "$SITE"; mkdir -p "$SITE"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    .gpu/whl/*.whl >>"$LOG" 2>&1 || echo "pip install failed" >>"$SUMMARY"
  export PYTHONPATH="$SITE:$PWD"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
{ echo "install s=$(( $(date +%s) - T0 ))"; "$PY" -c 'import torch, torch_pruning as tp
print("torch", torch.__version__, "tp", tp.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")' 2>&1 | tail -1; } >>"$SUMMARY"

# step NAME CAP RESERVE CMD...: CMD under timeout min(CAP, time left - RESERVE); a failure never stops the next
step() {
  local name=$1 cap=$2 reserve=$3; shift 3
  local left=$(( DEADLINE - $(date +%s) - reserve ))
  local lim=$(( left < cap ? left : cap )); (( lim < 10 )) && lim=10
  echo "===== $name (limit ${lim}s) =====" >>"$LOG"
  local s; s=$(date +%s)
  timeout -k 5 "$lim" "$@" >>"$LOG" 2>&1
  echo "$name rc=$? s=$(( $(date +%s) - s )) limit=$lim" >>"$SUMMARY"
}

# link_data: DATA (a folder with train.zip and test.zip) and CK (the checkpoints) from the bundle (10,000 training
# images) or from ../shared
link_data() {
  DATA="$WORK/data"; mkdir -p "$DATA"
  if [ -f .gpu/data/test.zip ]; then
    ln -s "$PWD/.gpu/data/train10k.zip" "$DATA/train.zip"; ln -s "$PWD/.gpu/data/test.zip" "$DATA/test.zip"
    CK=.gpu/data
  else
    ln -s "$PWD/../shared/data/cifar10-jpeg/train.zip" "$DATA/train.zip"
    ln -s "$PWD/../shared/data/cifar10-jpeg/test.zip" "$DATA/test.zip"; CK=../shared/data/checkpoints
  fi
}

# finish: the total time in the summary, the log cut to its last 20 kB (results come back size-limited)
finish() {
  echo "total s=$(( $(date +%s) - T0 ))" >>"$SUMMARY"
  tail -c 20000 "$LOG" >"$LOG.tmp" && mv "$LOG.tmp" "$LOG"
  cat "$SUMMARY"
}
