"""tests/ on the import path: the unit tests use tests/cuda_emulation (the csrc CUDA kernels on a CPU emulation)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
