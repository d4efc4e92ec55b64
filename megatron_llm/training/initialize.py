"""Process start-up: device and backend choice, torch.distributed, megatron-core parallel state, seeds."""

from __future__ import annotations

import atexit
import datetime
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from megatron_llm.config.training import RunConfig


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: str  # "cuda" | "cpu"
    tp: int
    pp: int
    dp: int
    vp: int | None  # virtual stages per pipeline rank (None: no interleaving)

    @property
    def is_logging_rank(self) -> bool:
        """The last rank is on the last pipeline stage, which owns the loss (Megatron's print_rank_last)."""
        return self.rank == self.world_size - 1


def virtual_stages(cfg: RunConfig) -> int | None:
    vl = cfg.parallel.num_layers_per_virtual_pipeline_stage
    if vl is None:
        return None
    return cfg.model.num_layers // (cfg.parallel.pipeline_model_parallel_size * vl)


def initialize(cfg: RunConfig) -> DistInfo:
    """Initialise torch.distributed (env:// as torchrun/srun set it) and megatron-core's process groups."""
    from megatron.core import parallel_state
    from megatron.core.num_microbatches_calculator import (destroy_num_microbatches_calculator,
                                                          init_num_microbatches_calculator)

    from megatron_llm.parallel.device import resolve_device

    device = resolve_device(cfg.launch.device)
    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    os.environ.setdefault("MASTER_ADDR", cfg.launch.master_addr)
    os.environ.setdefault("MASTER_PORT", str(cfg.launch.master_port or 29500))

    if device == "cpu":
        from megatron_llm.parallel import cpu_emulation

        cpu_emulation.activate()
        backend = "gloo"
    else:
        torch.cuda.set_device(local_rank)
        backend = "nccl"
    # One timeout for the world group and megatron-core's subgroups (its own default is 30 minutes): a collective
    # that does not finish within it fails instead of hanging the job.
    timeout_min = cfg.launch.distributed_timeout_minutes
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(minutes=timeout_min))
        if backend == "gloo":  # whatever way the process ends, gloo's threads end first (release() says why)
            atexit.register(release)
    if device == "cuda":
        _assert_no_emulation()

    tp, pp = cfg.parallel.tensor_model_parallel_size, cfg.parallel.pipeline_model_parallel_size
    vp = virtual_stages(cfg)
    parallel_state.destroy_model_parallel()
    from megatron_llm.parallel.comm_tuning import ORDER_DEFAULT, ORDER_TP_PP_DP

    parallel_state.initialize_model_parallel(
        order=ORDER_TP_PP_DP if cfg.parallel.use_tp_pp_dp_mapping else ORDER_DEFAULT,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        virtual_pipeline_model_parallel_size=vp,
        create_gloo_process_groups=device == "cpu" or cfg.parallel.use_distributed_optimizer,
        distributed_timeout_minutes=timeout_min,
    )
    dp = parallel_state.get_data_parallel_world_size()
    gbs = cfg.global_batch_size(dp)
    destroy_num_microbatches_calculator()
    init_num_microbatches_calculator(rank, None, gbs, cfg.data.micro_batch_size, dp)
    set_seed(cfg.train.seed, cfg.train.deterministic, device)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device,
                    tp=tp, pp=pp, dp=dp, vp=vp)


def _assert_no_emulation() -> None:
    import sys

    mod = sys.modules.get("megatron_llm.parallel.cpu_emulation")
    if mod is not None:
        mod.guard_cuda_run()


def set_seed(seed: int, deterministic: bool, device: str) -> None:
    """Same seed on every rank for the host RNGs; megatron's tracker derives the per-TP-rank CUDA streams."""
    from megatron.core import tensor_parallel

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)
    if deterministic and device == "cuda":
        # cuBLAS needs this to be deterministic; set before the first GEMM.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if device == "cpu":
        torch.use_deterministic_algorithms(deterministic, warn_only=True)


def release() -> None:
    """Destroys megatron-core's and torch's process groups, without a barrier (also on an error path, where a peer
    may not get there). Left to interpreter exit, a gloo group's thread may take the GIL while Python finalises and
    abort the process: SIGABRT instead of the exit status the launcher acts on."""
    import sys

    parallel_state = sys.modules.get("megatron.core.parallel_state")  # not imported: nothing was initialised
    if parallel_state is not None:
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


def shutdown() -> None:
    if dist.is_initialized():
        dist.barrier()
    release()
