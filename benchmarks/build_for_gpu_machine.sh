#!/usr/bin/env bash
# Build fastconv._C here (no GPU needed) against the torch of a GPU machine, so that a short GPU
# lease spends no time compiling: benchmarks/gpu_check.sh skips its build stage when the extension
# it finds loads with its CUDA backend.
#
#   bash benchmarks/build_for_gpu_machine.sh [TORCH_VERSION] [PYTHON] [ARCH_LIST] [OUT_DIR]
#   defaults: 2.11.0, python3.12, 9.0a, .gpu_carry
#
# Makes a virtual environment with that torch (from the package index), builds for ARCH_LIST
# only in a copy of this tree (tracked and untracked-not-ignored files: the working tree's own
# extension and fastconv/_build_info.py stay as they are, so the local install keeps working),
# and copies the .so and that build's _build_info.py into OUT_DIR/so/, plus the nvidia-cutlass
# wheel into OUT_DIR/wheels/ (gpu_check installs it only if it must build after all). On the GPU
# machine, before gpu_check.sh: `cp OUT_DIR/so/* fastconv/`.
# Used on 2026-11-28 for the H200 (torch 2.11.0+cu130, Python 3.12): 5 min here, 4 s there.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_VERSION="${1:-2.11.0}"
PYTHON="${2:-python3.12}"
ARCH="${3:-9.0a}"
OUT_DIR="${4:-.gpu_carry}"
VENV="${VENV:-/tmp/fastconv-venv-torch-$TORCH_VERSION}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q "torch==$TORCH_VERSION" setuptools wheel ninja nvidia-cutlass
fi
# The copy: one per checkout (keyed by its path), emptied but for its build folder before every
# run (a file deleted or renamed here must not stay there: setup.py compiles csrc/*/*.cpp by glob),
# so ninja recompiles only what changed (tar keeps the files' times). Files deleted here but still
# in git's index are left out.
SRC="$VENV/src-$(pwd | cksum | cut -d' ' -f1)"
mkdir -p "$SRC"
find "$SRC" -mindepth 1 -maxdepth 1 ! -name build -exec rm -rf {} +
git ls-files -z --cached --others --exclude-standard \
  | "$VENV/bin/python" -c 'import os, sys; sys.stdout.write("".join(p + "\0" for p in sys.stdin.read().split("\0") if p and os.path.exists(p)))' \
  | tar --null -T - -cf - | tar -xf - -C "$SRC"
(cd "$SRC" && FASTCONV_CUDA=1 TORCH_CUDA_ARCH_LIST="$ARCH" CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}" \
  MAX_JOBS="${MAX_JOBS:-2}" "$VENV/bin/python" setup.py build_ext --inplace)
tag=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
mkdir -p "$OUT_DIR/so" "$OUT_DIR/wheels"
cp "$SRC/fastconv/_C$tag" "$SRC/fastconv/_build_info.py" "$OUT_DIR/so/"
"$VENV/bin/pip" download -q --no-deps -d "$OUT_DIR/wheels" nvidia-cutlass
echo "built fastconv/_C$tag for torch $TORCH_VERSION, arch $ARCH; carry $OUT_DIR (add it to .git/info/exclude)"
