"""Shared by the unit tests that build megatron-core modules: run a snippet in a fresh CPU process whose
megatron-core parallel state is initialised (one rank, gloo, CUDA calls emulated), so no test process keeps it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

PREAMBLE = """
import os, torch
from megatron_llm.launch.local import free_port  # a fixed port collides with concurrent runs
os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
from megatron_llm.parallel import cpu_emulation
cpu_emulation.activate()
import torch.distributed as dist
dist.init_process_group("gloo")
import atexit
from megatron_llm.training.initialize import release
atexit.register(release)  # as initialize() does: the groups end before the interpreter (release() says why)
from megatron.core import parallel_state, tensor_parallel
parallel_state.initialize_model_parallel()
tensor_parallel.model_parallel_cuda_manual_seed(1)
"""


def run(code: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Runs PREAMBLE + code; asserts it exited 0 and returns the finished process."""
    proc = subprocess.run([sys.executable, "-c", PREAMBLE + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc
