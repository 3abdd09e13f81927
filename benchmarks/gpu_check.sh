#!/usr/bin/env bash
# One-command GPU check (DESIGN §6.4) for a machine with an NVIDIA GPU and no network.
# Stages, each under a deadline and in a process group of its own (killed whole at the deadline);
# after every stage the summary is rewritten to $OUT/gpu_check.json and $OUT/gpu_check.md and the
# stages' own logs, JSON and markdown are packed into $OUT/raw.tar.gz (a lease returns <= 8 files),
# so a run that is cut off still reports. Default stages (benchmarks/gpu_check.py lists them all):
#   build            : fastconv._C for the visible card only, unless a prebuilt one loads with its
#                      CUDA backend (benchmarks/build_for_gpu_machine.sh; carry .gpu_carry and
#                      `cp .gpu_carry/so/* fastconv/` first)
#   cuda_tests       : the CUDA backend against cuDNN and the fp64 reference, default paths
#   new_kernel_tests : the same for the never-run kernels (CUTLASS 2.x forced, SM90 TF32)
#   triton_tests     : the Triton kernels and CUDA graphs on the GPU
#   ops              : per-op timings at the five networks' shapes, bf16, the BN-ReLU prologue first
#   new_kernel_ops   : the never-run kernels' timings, in a process of their own
#   models           : converted models vs eager cuDNN (benchmarks/gpu_models.py)
#   (on request, --stages ...,overhead,graphs: host cost per call; CUDA-graph capture)
# Packages missing on the machine (nvidia-cutlass, pytest-xdist, ...) are installed from
# wheels in $WHEELS (default .gpu_carry/wheels, what build_for_gpu_machine.sh fills) when there.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/out}"
mkdir -p "$OUT"
WHEELS="${WHEELS:-$PWD/.gpu_carry/wheels}"
export PYTHONUNBUFFERED=1
"${PYTHON:-python3}" benchmarks/gpu_check.py --out "$OUT" --wheels "$WHEELS" "$@"
