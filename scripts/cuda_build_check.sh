#!/usr/bin/env bash
# Build the whole csrc/ extension, C++ and CUDA (sm_80 + sm_90), against PyTorch's CUDA build on a machine without
# a GPU, import it and run its CPU kernels once: what nvcc_check.sh cannot see (ops.cpp's CUDA branch, torch's
# c10/cuda headers, the link). The CUDA torch (~5.5 GB venv; a local wheel here, ../shared/DESIGN.md section 3)
# goes into CUDA_VENV (default .venv-cuda, kept for the next run). TORCH_CUDA (default 2.14.1): its version.
# A fresh build directory each run; MAX_JOBS as torch's extension build reads it.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${CUDA_VENV:-.venv-cuda}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
if [ ! -x "$CUDA_HOME/bin/nvcc" ]; then
  echo "cuda_build_check: no nvcc under CUDA_HOME=$CUDA_HOME (set CUDA_HOME)" >&2
  exit 2
fi
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q "torch==${TORCH_CUDA:-2.14.1}" numpy ninja
BUILD=$(mktemp -d)
trap 'rm -rf "$BUILD"' EXIT
export MEGATRON_LLM_EXT_DIR=$BUILD TORCH_CUDA_ARCH_LIST="8.0;9.0" PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
"$VENV/bin/python" - <<'PY'
import torch

from megatron_llm.ops import build

assert torch.version.cuda, f"torch {torch.__version__} in this venv is not a CUDA build"
ok, why = build.cuda_buildable()
assert ok, f"the CUDA kernels would not be built: {why}"
digest = build.source_hash(with_cuda=True)
mod = build._jit(True, digest)  # not build.load(): a failed build raises here with the compiler's messages
assert mod.with_cuda(), "the extension was built without its CUDA kernels"
# The CPU kernels of the CUDA build, against the formulas (the CUDA ones need a GPU: tests/gpu).
x, w = torch.randn(37, 96, dtype=torch.float64), torch.randn(96, dtype=torch.float64)
y = mod.rms_norm_fwd(x, w, 1e-6)[0]
assert torch.allclose(y, x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w)
a, b = torch.randn(37, 2, 48, dtype=torch.float64).unbind(1)
assert torch.allclose(mod.swiglu_fwd(torch.cat([a, b], -1)), torch.nn.functional.silu(a) * b)
ops = sorted(n for n in dir(mod) if not n.startswith("_"))
print(f"cuda_build_check: torch {torch.__version__}, built in {build.build_dir(digest)}; sm_80 + sm_90;",
      f"{len(ops)} functions: {' '.join(ops)}")
PY
