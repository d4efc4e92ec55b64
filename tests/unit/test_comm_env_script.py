"""`submit` writes <run>/comm_env.sh; sourced by the batch shell it exports the tuner's choices for the node it
runs on and keeps the variables the user already set."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _submit(tmp_path, *flags):
    run = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "megatron_llm.cli", "submit", "--dry-run", "--nodes", "2",
                        "--gpus-per-node", "8", "--partition", "gpu", "--time", "01:00:00", "--run-dir", str(run),
                        "--recipe", "tinyllama-1.1b", "--mock-data", "--bf16", "--train-iters", "100000", *flags],
                       capture_output=True, text=True, timeout=120, cwd=str(REPO))
    assert p.returncode == 0, p.stderr
    return run


def _source(run: Path, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_DEVICE_MAX_CONNECTIONS", "NCCL_IB_HCA")}
    env.update(PYTHONPATH=str(REPO), **(env_extra or {}))
    return subprocess.run(["bash", "-c", f'. {run}/comm_env.sh; echo "CDMC=${{CUDA_DEVICE_MAX_CONNECTIONS:-}}"; '
                                         'echo "AUTO=${MEGATRON_LLM_COMM_AUTO:-}"'],
                          capture_output=True, text=True, timeout=60, env=env)


def test_submit_writes_comm_env_and_the_script_sources_it(tmp_path):
    run = _submit(tmp_path, "--tensor-model-parallel-size", "2", "--sequence-parallel")
    text = (run / "comm_env.sh").read_text()
    assert "--world-size 16 --gpus-per-node 8 --tp 2 --pp 1 --device cuda" in text
    assert '. "$RUN_DIR/comm_env.sh"' in (run / "submit.sbatch").read_text()
    p = _source(run)
    assert p.returncode == 0, p.stderr
    assert "CDMC=1" in p.stdout and "AUTO=CUDA_DEVICE_MAX_CONNECTIONS" in p.stdout
    assert "[megatron-llm comm] CUDA_DEVICE_MAX_CONNECTIONS=1 [auto]" in p.stderr  # the reason is logged


def test_the_users_environment_wins_in_comm_env(tmp_path):
    run = _submit(tmp_path, "--tensor-model-parallel-size", "2", "--sequence-parallel")
    p = _source(run, {"CUDA_DEVICE_MAX_CONNECTIONS": "4"})
    assert "CDMC=4" in p.stdout and "already set in the environment" in p.stderr


def test_a_broken_interpreter_leaves_nccl_defaults_and_says_so(tmp_path):
    run = _submit(tmp_path, "--python", "/nonexistent/python")
    p = _source(run)
    assert p.returncode == 0 and "CDMC=" in p.stdout
    assert "could not decide the communication settings" in p.stderr
