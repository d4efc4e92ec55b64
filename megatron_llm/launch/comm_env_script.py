"""<run>/comm_env.sh: what the Slurm script sources before it starts the ranks (slurm_script.render).

The node-dependent settings (HCAs, socket interface) cannot be decided on the login node that submits, so the
file asks the first node of the allocation at job start (python -m megatron_llm.parallel.comm_env, torch-free)
and evals its `export` lines; variables already in the job's environment are the user's and stay. The
layout-dependent flags (overlap, buckets, rank order) are decided by each rank at start-up (training/pretrain.py).
"""

from __future__ import annotations

import os
import shlex

from megatron_llm.fileio import atomic_write_text


def render_comm_env(python: str, world_size: int, gpus_per_node: int, tp: int, pp: int, vp, device: str,
                    distributed_optimizer: bool) -> str:
    cmd = [python, "-m", "megatron_llm.parallel.comm_env", "--world-size", str(world_size), "--gpus-per-node",
           str(gpus_per_node), "--tp", str(tp), "--pp", str(pp), "--device", device]
    if vp:
        cmd += ["--vp", str(vp)]
    if not distributed_optimizer:
        cmd.append("--no-distributed-optimizer")
    q = " ".join(shlex.quote(c) for c in cmd)
    return "\n".join([
        "# Written by `megatron-llm submit`: communication settings for this run, decided on the first node at",
        "# job start (megatron_llm/parallel/comm_tuning.py; every decision is logged with its reason). Variables",
        "# already set in the job's environment are yours and are kept.",
        f'if MLLM_COMM_ENV=$({q} 2>&1); then',
        '  echo "$MLLM_COMM_ENV" | grep "^#" | sed "s/^# /[megatron-llm comm] /" >&2',
        '  eval "$(echo "$MLLM_COMM_ENV" | grep "^export ")"',
        "else",
        '  echo "[megatron-llm comm] could not decide the communication settings; NCCL defaults apply:" >&2',
        '  echo "$MLLM_COMM_ENV" >&2',
        "fi",
        "unset MLLM_COMM_ENV",
        "",
    ])


def write_comm_env(run_dir: str, cfg, python: str, world_size: int, gpus_per_node: int, device: str) -> str:
    p = cfg.parallel
    path = os.path.join(run_dir, "comm_env.sh")
    os.makedirs(run_dir, exist_ok=True)
    atomic_write_text(path, render_comm_env(python, world_size, gpus_per_node, p.tensor_model_parallel_size,
                                            p.pipeline_model_parallel_size, p.num_layers_per_virtual_pipeline_stage,
                                            device, p.use_distributed_optimizer))
    return path
