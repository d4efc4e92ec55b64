#!/usr/bin/env bash
# Compile every csrc/**/*.cu with nvcc for sm_80 and sm_90 (compile only: nothing runs), all files in parallel,
# with the half/bfloat16 flags torch's extension build uses. Fails on the first broken kernel with its messages.
# NVCC (default /usr/local/cuda/bin/nvcc), NVCC_JOBS (default: CPU count), CU_ROOT (default csrc: where to look for
# .cu files). Objects go to a temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC=${NVCC:-/usr/local/cuda/bin/nvcc}
if [ ! -x "$NVCC" ]; then
  echo "nvcc_check: no nvcc at $NVCC (set NVCC)" >&2
  exit 2
fi
CU_ROOT=${CU_ROOT:-csrc}
mapfile -t FILES < <(find "$CU_ROOT" -name '*.cu' | sort)
if [ "${#FILES[@]}" -eq 0 ]; then
  echo "nvcc_check: no .cu files under $CU_ROOT" >&2
  exit 2
fi
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
FLAGS=(-std=c++17 -O3 -Icsrc/include -Icsrc -gencode=arch=compute_80,code=sm_80 -gencode=arch=compute_90,code=sm_90
       -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__
       -D__CUDA_NO_HALF2_OPERATORS__ -Werror all-warnings)
export NVCC TMP
printf '%s\n' "${FILES[@]}" | xargs -P "${NVCC_JOBS:-$(nproc)}" -I{} sh -c \
  'o="$TMP/$(echo {} | tr / _).o"; if "$NVCC" '"${FLAGS[*]}"' -c {} -o "$o" > "$o.log" 2>&1; then
     echo "ok   {}"; else echo "FAIL {}"; cat "$o.log"; exit 255; fi'
echo "nvcc_check: ${#FILES[@]} files compiled for sm_80 and sm_90"
