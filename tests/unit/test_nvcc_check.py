"""scripts/nvcc_check.sh compiles every csrc/**/*.cu for sm_80 and sm_90 with the CUDA toolkit (compile only), and
fails, naming the file, on a broken kernel."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NVCC = os.environ.get("NVCC", "/usr/local/cuda/bin/nvcc")
SCRIPT = ROOT / "scripts" / "nvcc_check.sh"

pytestmark = pytest.mark.skipif(not os.access(NVCC, os.X_OK), reason=f"no CUDA toolkit at {NVCC}")


def _run(**env):
    return subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, **env))


def test_every_cu_file_compiles_for_sm80_and_sm90():
    cu = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").rglob("*.cu"))
    assert cu, "no .cu files under csrc/"
    proc = _run()
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert sorted(line.split()[1] for line in proc.stdout.splitlines() if line.startswith("ok ")) == cu


def test_a_broken_kernel_fails_with_its_name(tmp_path):
    bad = tmp_path / "broken.cu"
    bad.write_text("__global__ void k(float* x) { x[threadIdx.x] = undeclared_name; }\n")
    proc = _run(CU_ROOT=str(tmp_path))
    assert proc.returncode != 0
    assert f"FAIL {bad}" in proc.stdout and "undeclared_name" in proc.stdout
