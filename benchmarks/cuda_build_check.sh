#!/usr/bin/env bash
# Builds the CUDA extension against a CUDA build of torch on a machine without a
# GPU, and checks what can be checked there:
#   - the build succeeds with nvcc for sm_80 and sm_90 (+PTX) and the library imports;
#   - the dispatcher holds a CUDA kernel for every op the CUDA backend implements;
#   - no kernel uses stack or local memory (cuobjdump's resource usage), and the
#     fp16/bf16 GEMMs run on tensor cores (HMMA in the machine code).
# With RUN_TESTS=1 it also runs the test suite (CPU tensors) in that build.
#
# The CUDA build of torch (several GB with its CUDA libraries) goes into a venv
# of its own, kept between runs in $CUDA_VENV (default
# ~/.cache/shufflenet-ops/cuda-venv); TORCH_SPEC picks its version (default
# torch==2.11.0, what the GPU machines run). The build happens in a copy of the
# working tree, so the project's own in-place build is left alone. Takes about
# 10 minutes on 2 cores once the venv exists: too long for CI, so run it before
# every change to csrc/cuda.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CUDA_VENV=${CUDA_VENV:-$HOME/.cache/shufflenet-ops/cuda-venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.11.0}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-8.0;9.0+PTX}

NVCC=$(command -v nvcc) || { echo "cuda_build_check: nvcc is not on PATH" >&2; exit 1; }
if [ ! -x "$CUDA_VENV/bin/python" ] || ! "$CUDA_VENV/bin/python" -c "import torch; assert torch.version.cuda" 2>/dev/null; then
  echo "==> creating $CUDA_VENV with $TORCH_SPEC (CUDA build)"
  python3 -m venv "$CUDA_VENV"
  "$CUDA_VENV/bin/python" -m pip install --quiet "$TORCH_SPEC" numpy pytest hypothesis ninja "setuptools>=64" wheel
fi
PYTHON=$CUDA_VENV/bin/python
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
echo "==> copying the working tree to $WORK"
(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$WORK")

echo "==> building for $TORCH_CUDA_ARCH_LIST with $(readlink -f "$NVCC")"
(cd "$WORK" && MAX_JOBS=${MAX_JOBS:-$(nproc)} "$PYTHON" setup.py build_ext --inplace >"$WORK/build.log" 2>&1) \
  || { tail -n 40 "$WORK/build.log"; exit 1; }
LIBRARY=$(ls "$WORK"/shufflenet_ops/_C*.so)

echo "==> importing and checking the CUDA registrations"
(cd "$WORK" && "$PYTHON" - <<'PY'
import torch
import shufflenet_ops as so
from shufflenet_ops.ops import NATIVE

implemented = ["channel_shuffle", "pointwise_group_conv", "pointwise_group_conv_grad_input",
               "pointwise_group_conv_grad_weight", "pointwise_group_conv_grad_bias"]
missing = [op for op in implemented
           if not torch._C._dispatch_has_kernel_for_dispatch_key(NATIVE.qualname(op), "CUDA")]
assert not missing, f"no CUDA kernel registered for {missing}"
print("CUDA kernels registered for", ", ".join(implemented))
PY
)

echo "==> checking the kernels' resources"
CUOBJDUMP=$(command -v cuobjdump || true)
if [ -z "$CUOBJDUMP" ]; then
  # Triton's package carries one.
  CUOBJDUMP=$("$PYTHON" -c "import os, triton; print(os.path.join(os.path.dirname(triton.__file__), 'backends/nvidia/bin/cuobjdump'))")
fi
"$CUOBJDUMP" --dump-resource-usage "$LIBRARY" >"$WORK/resources.txt"
kernels=$(grep -c "Function" "$WORK/resources.txt")
spilling=$(grep -E "STACK:[1-9]|LOCAL:[1-9]" "$WORK/resources.txt" || true)
[ -z "$spilling" ] || { echo "kernels with stack or local memory:"; echo "$spilling"; exit 1; }
echo "$kernels kernels (all architectures), none with stack or local memory"
sass=$("$CUOBJDUMP" --dump-sass "$LIBRARY" 2>/dev/null)
mma=$(grep -cE "HMMA|HGMMA" <<<"$sass" || true)
[ "$mma" -gt 0 ] || { echo "no tensor-core instruction in the machine code"; exit 1; }
echo "$mma tensor-core instructions (HMMA/HGMMA) in the machine code"
ptx=$("$CUOBJDUMP" --list-ptx "$LIBRARY")
grep -q "sm_90" <<<"$ptx" || { echo "no PTX for sm_90 embedded"; exit 1; }
echo "PTX for sm_90 embedded"

if [ "${RUN_TESTS:-0}" = 1 ]; then
  echo "==> running the test suite in this build"
  (cd "$WORK" && "$PYTHON" -m pytest tests -q -p no:cacheprovider)
fi
echo "cuda_build_check: passed"
