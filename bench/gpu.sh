#!/usr/bin/env bash
# The full-size Dia (random weights, DiaConfig() defaults: no download) on one CUDA GPU in bfloat16:
# steps/s and real-time factor at 1, 8 and 32 concurrent requests through synth's decode loop, in one table.
# Within 8 minutes on one H200. Without a GPU it says so and exits cleanly.
# `bench/gpu.sh --compile` adds the same steps compiled (SYNTH_COMPILE: torch.compile with CUDA graphs) to the
# table, to show what compiling gives; compiling and recording the graphs may take it past the 8 minutes.
#
#   bench/gpu.sh                 # PY=path/to/python with a CUDA build of torch, if not .venv's
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "bench/gpu.sh: no CUDA GPU here (torch in $PY sees none): nothing measured"
    exit 0
fi
"$PY" -c 'import torch; print("GPU:", torch.cuda.get_device_name(0), "| torch", torch.__version__)'
exec timeout 480 "$PY" bench/fullsize_bench.py --device cuda --concurrency 1,8,32 --steps 100 "$@"
