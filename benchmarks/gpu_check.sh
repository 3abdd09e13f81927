#!/usr/bin/env bash
# One-command GPU check (DESIGN §6.4) for a machine with an NVIDIA GPU and no network.
# Tiered stages, each under a deadline; after every stage the summary is rewritten to
# $OUT/gpu_check.json and $OUT/gpu_check.md, so a run that is cut off still reports.
#   stage build   : build fastconv._C for the visible card only (9.0a on an H100), unless a prebuilt
#                   one loads with its CUDA backend (benchmarks/build_for_gpu_machine.sh)
#   stage tests   : the GPU tests (pytest -m gpu): Triton and CUDA against cuDNN, every dtype
#   stage overhead: host cost per conv call of each path (benchmarks/host_overhead.py)
#   stage ops     : per-op timings at the five networks' shapes (benchmarks/gpu_ops.py)
#   stage models  : converted models vs eager cuDNN (benchmarks/gpu_models.py), when present
#   stage graphs  : CUDA-graph capture of converted models at batch 1 and 32 (benchmarks/gpu_graphs.py)
# Packages missing on the machine (nvidia-cutlass, pytest-xdist, ...) are installed from
# wheels in ./wheels or $WHEELS beside the checkout when they are there.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/out}"
mkdir -p "$OUT"
WHEELS="${WHEELS:-$PWD/wheels}"
export PYTHONUNBUFFERED=1
python benchmarks/gpu_check.py --out "$OUT" --wheels "$WHEELS" "$@"
