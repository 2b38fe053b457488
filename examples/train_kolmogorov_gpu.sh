#!/usr/bin/env bash
# Kolmogorov priors on one GPU in one command (issue 11): the data, the shipped "medium" network
# (kolmogorov_medium.npz) and the paper network (bf16), each fitted to a time budget; stage
# "bench" runs benchmarks/gpu.sh between the two, and the paper run is planned from its measured
# bf16 training rate.
#
#   bash examples/train_kolmogorov_gpu.sh OUTDIR [DEADLINE_S]
#
# OUTDIR receives kolmogorov_medium.npz (the shipped prior), train.log (every stage's output),
# gpu.json (stage bench) and paper.json (the paper network's header; its 92 MB of weights stay in
# $WORK). DEADLINE_S (default 540) bounds the whole script. Environment: PYTHON (default
# python3), WORK (data, checkpoints and the paper weights, default /tmp/kolmogorov), STAGES
# (default "data medium bench paper"), MEDIUM_BUDGET (s, default 150), BENCH_LIMIT_S (200),
# BENCH_ARGS (e.g. --smoke), TRAJECTORIES (256), LENGTH (64), MEDIUM_CONFIG (medium),
# PAPER_CONFIG (paper; smaller ones for a CPU smoke run).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: train_kolmogorov_gpu.sh OUTDIR [DEADLINE_S]}
DEADLINE=${2:-540}
PY=${PYTHON:-python3}
WORK=${WORK:-/tmp/kolmogorov}
STAGES=" ${STAGES:-data medium bench paper} "
N=${TRAJECTORIES:-256}
LENGTH=${LENGTH:-64}
LOG="$OUT/train.log"
mkdir -p "$OUT" "$WORK"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
stage() { echo "== $1 ($(date -u +%T), ${SECONDS}s)" | tee -a "$LOG"; }
"$PY" -c "import jax, flax, numpyro; print('jax', jax.__version__, 'flax', flax.__version__,
'numpyro', numpyro.__version__, jax.devices())" 2>&1 | tee -a "$LOG"
common=(--precision bf16 --trajectories "$N" --length "$LENGTH" --sim-chunk "$N"
        --data "$WORK/kolmogorov.h5" --no-progress)

if [[ $STAGES == *" data "* ]]; then
  stage data
  "$PY" examples/train_kolmogorov.py --data-only "${common[@]}" 2>&1 | tee -a "$LOG"
fi
if [[ $STAGES == *" medium "* ]]; then
  stage "medium network"
  "$PY" examples/train_kolmogorov.py --config "${MEDIUM_CONFIG:-medium}" \
      --budget "${MEDIUM_BUDGET:-150}" "${common[@]}" --checkpoint "$WORK/medium.ckpt.npz" \
      --output "$OUT/kolmogorov_medium.npz" 2>&1 | tee -a "$LOG"
fi
if [[ $STAGES == *" bench "* ]]; then
  stage "benchmarks/gpu.sh"
  LIMIT_S=${BENCH_LIMIT_S:-200} PYTHON="$PY" bash benchmarks/gpu.sh --json "$OUT/gpu.json" \
      ${BENCH_ARGS:-} 2>&1 | tee -a "$LOG"
  cp "$OUT/gpu.json" "$WORK/gpu.json" 2>/dev/null
fi
if [[ $STAGES == *" paper "* ]]; then
  rate=()
  r=$("$PY" -c "import json, sys; rows = json.load(open(sys.argv[1]))['rows']
print(next(r['steps_per_s'] for r in rows if 'training' in r['name'] and 'bf16' in r['name']
      and 'steps_per_s' in r))" "$WORK/gpu.json" 2>/dev/null) && rate=(--rate "$r")
  budget=$((DEADLINE - SECONDS - 10))
  stage "paper network: budget ${budget}s, ${rate[*]:-throughput probe}"
  if [ "$budget" -gt 60 ]; then
    "$PY" examples/train_kolmogorov.py --config "${PAPER_CONFIG:-paper}" --budget "$budget" \
        "${rate[@]}" "${common[@]}" --checkpoint "$WORK/paper.ckpt.npz" \
        --output "$WORK/kolmogorov_paper.npz" 2>&1 | tee -a "$LOG"
    "$PY" -c "import json, sys; from numpyro_sda.checkpoint import load_checkpoint
json.dump(load_checkpoint(sys.argv[1]).header, open(sys.argv[2], 'w'), indent=1)" \
        "$WORK/kolmogorov_paper.npz" "$OUT/paper.json"
  else
    echo "no time left for the paper network" | tee -a "$LOG"
  fi
fi
stage done
