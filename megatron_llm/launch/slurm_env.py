"""Slurm -> torchrun environment: a task started by `srun` becomes one rank.

srun sets SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID; torch.distributed (env://) and our trainer read RANK /
WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT. Our batch script exports MASTER_ADDR (first host of the
allocation) and MASTER_PORT (from the job id) and MEGATRON_LLM_LAUNCHER=srun; the per-task variables can only be
set inside each task, which is what `bridge` does.
"""

from __future__ import annotations

import os
import subprocess
from typing import MutableMapping, Optional

# MASTER_PORT = BASE + job id % SPAN: distinct for jobs sharing a node, inside the unprivileged range and below the
# Linux ephemeral range (32768+ is where outgoing connections take ports; 20000-32767 stays clear of most of them).
MASTER_PORT_BASE = 20000
MASTER_PORT_SPAN = 12000
LAUNCHER_ENV = "MEGATRON_LLM_LAUNCHER"


def master_port_for_job(job_id: int) -> int:
    return MASTER_PORT_BASE + int(job_id) % MASTER_PORT_SPAN


def first_host_address(nodelist: str) -> Optional[str]:
    """Address of the first node of a Slurm node list ('n[1-4]' -> n1 -> its NodeAddr), via scontrol."""
    try:
        hosts = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                               check=True, timeout=30).stdout.split()
        if not hosts:
            return None
        node = subprocess.run(["scontrol", "show", "node", "-o", hosts[0]], capture_output=True, text=True,
                              timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for field in node.split():
        if field.startswith("NodeAddr="):
            return field.split("=", 1)[1]
    return hosts[0]


def in_srun_task(env: MutableMapping[str, str]) -> bool:
    """A task of an srun step that should be a rank: our script said so, or the step has several tasks (a user's
    own `srun -n 8 megatron-llm train ...`). A single-task step (e.g. `srun megatron-llm train --nproc-per-node 8`)
    keeps spawning its own workers."""
    if "SLURM_PROCID" not in env or "SLURM_STEP_ID" not in env:
        return False
    return env.get(LAUNCHER_ENV) == "srun" or int(env.get("SLURM_NTASKS", "1")) > 1


def bridge(env: MutableMapping[str, str] = os.environ) -> bool:
    """Export RANK/WORLD_SIZE/LOCAL_RANK(/MASTER_*) from SLURM_* when this is an srun task; True if it did.
    A launcher that already set RANK (torchrun inside the allocation) wins."""
    if "RANK" in env or not in_srun_task(env):
        return False
    env["RANK"] = env["SLURM_PROCID"]
    env["WORLD_SIZE"] = env["SLURM_NTASKS"]
    env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
    if "SLURM_NTASKS_PER_NODE" in env:
        env["LOCAL_WORLD_SIZE"] = env["SLURM_NTASKS_PER_NODE"]
    if "MASTER_ADDR" not in env:
        env["MASTER_ADDR"] = first_host_address(env.get("SLURM_JOB_NODELIST", "")) or "127.0.0.1"
    if "MASTER_PORT" not in env:
        env["MASTER_PORT"] = str(master_port_for_job(int(env.get("SLURM_JOB_ID", "0"))))
    if "OMP_NUM_THREADS" not in env and "SLURM_CPUS_PER_TASK" in env:
        env["OMP_NUM_THREADS"] = env["SLURM_CPUS_PER_TASK"]
    return True
