#!/usr/bin/env bash
# One command for a GPU machine: training, guided sampling and compile times of the paper's
# Kolmogorov UNet and Lorenz-63 MLP, printed as one table and written to JSON
# (benchmarks/gpu.py documents the rows). Budget: under 6 minutes including compilation.
#
#   benchmarks/gpu.sh                      # full sizes, on the first visible GPU
#   benchmarks/gpu.sh --smoke              # tiny sizes: checks that it works (CPU is fine)
#   benchmarks/gpu.sh --json out.json
#
# Environment:
#   PYTHON      interpreter to use (default: .venv/bin/python if present, else python3)
#   WHEELHOUSE  a folder of wheels carried to an offline machine; when set, jax[cuda12] and
#               this package are installed from it first (pip --no-index --find-links)
#   LIMIT_S     hard time limit in seconds (default 350; 3600 with --smoke, meant for loaded CPUs)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if [ -n "${WHEELHOUSE:-}" ]; then
  "$PY" -m pip install --quiet --no-index --find-links "$WHEELHOUSE" "jax[cuda12]" -e .
fi
SMOKE=0
for a in "$@"; do [ "$a" = "--smoke" ] && SMOKE=1; done
if [ "$SMOKE" = 0 ] && ! "$PY" -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')"; then
  echo "gpu.sh: no GPU visible to JAX (backend: $("$PY" -c 'import jax; print(jax.default_backend())'))" \
       "- install jax[cuda12] (WHEELHOUSE=...) or run with --smoke" >&2
  exit 2
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ "$SMOKE" = 1 ]; then export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"; fi
echo "gpu.sh: $(date -u +%FT%TZ) $(uname -n); python: $("$PY" -c 'import sys; print(sys.version.split()[0])')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
if [ "$SMOKE" = 1 ]; then LIMIT_S="${LIMIT_S:-3600}"; fi
exec timeout "${LIMIT_S:-350}" "$PY" benchmarks/gpu.py "$@"
