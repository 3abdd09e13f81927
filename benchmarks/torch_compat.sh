#!/usr/bin/env bash
# The CPU test suite against another torch release (pyproject promises torch >= 2.6; CI runs 2.14.1).
#
#   bash benchmarks/torch_compat.sh TORCH_VERSION TORCHVISION_VERSION [PYTHON] [tests to run...]
#   e.g. bash benchmarks/torch_compat.sh 2.6.0 0.21.0 python3.11
#
# Makes a virtual environment with that torch (from the package index, so it needs network),
# clones this checkout's HEAD into a scratch folder, builds the C++ extension there for the CPU
# only (FASTCONV_CUDA=0, about a minute) and runs the tests. NumPy is held below 2.3: the Triton
# interpreter of older triton (3.2, 3.6) cannot take NumPy >= 2.3 ("only 0-dimensional arrays can
# be converted to Python scalars"); CI's triton 3.8 can.
# `===` (exact version): the index also serves CPU builds such as 2.13.0+cpu, which `==` would
# take, and they come without triton. Results: benchmarks/RESULTS.md, "torch versions".
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_VERSION="$1"
TORCHVISION_VERSION="$2"
PYTHON="${3:-python3}"
shift $(( $# < 3 ? $# : 3 ))
VENV="${VENV:-/tmp/fastconv-compat-venv-$TORCH_VERSION}"
TREE="${TREE:-/tmp/fastconv-compat-tree-$TORCH_VERSION}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
  # the constraint file of a workplace that caps torch to the releases on its disk does not apply here
  PIP_CONSTRAINT=/dev/null "$VENV/bin/pip" install -q "torch===$TORCH_VERSION" "torchvision===$TORCHVISION_VERSION" \
    "numpy<2.3" pillow pytest pytest-xdist pytest-benchmark hypothesis setuptools wheel ninja
fi
rm -rf "$TREE"
git clone -q . "$TREE"
cd "$TREE"
FASTCONV_CUDA=0 MAX_JOBS="${MAX_JOBS:-2}" "$VENV/bin/python" setup.py build_ext --inplace > build.log 2>&1 \
  || { tail -30 build.log; exit 1; }
"$VENV/bin/python" -c "import torch, triton, numpy; print('torch', torch.__version__, 'triton', triton.__version__, 'numpy', numpy.__version__)"
"$VENV/bin/python" -m pytest -n "${JOBS:-2}" -q -p no:cacheprovider "${@:-tests}"
