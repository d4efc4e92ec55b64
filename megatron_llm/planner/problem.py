"""Build a planner Problem (and an optional fixed Layout) from a RunConfig and the plan verb's own options."""

from __future__ import annotations

from typing import Optional

from megatron_llm.config.model import ModelConfig
from megatron_llm.config.training import RunConfig
from megatron_llm.planner.hardware import gpu_spec, load_calibration
from megatron_llm.planner.layout import Layout
from megatron_llm.planner.predict import Problem


class PlanError(ValueError):
    """A plan request that cannot be answered; the message names the flag to fix."""


def config_value(cfg: RunConfig, name: str, default=None):
    """A field of whichever config section has it (sections move as features land), else default."""
    for section in RunConfig.SECTIONS:
        obj = getattr(cfg, section, None)
        if obj is not None and hasattr(obj, name):
            value = getattr(obj, name)
            return default if value is None else value
    return default


def vocab_divisible_by(cfg: RunConfig) -> int:
    """The trainer's --make-vocab-size-divisible-by when config has it, else Megatron-LM's 128."""
    return int(config_value(cfg, "make_vocab_size_divisible_by", 128))


def model_for_plan(cfg: RunConfig, swiglu: bool, ffn_given: bool) -> ModelConfig:
    """The recipe's model; without SwiGLU and no explicit FFN size, the GPT rule FFN = 4h."""
    m = cfg.model
    if not swiglu and not ffn_given:
        from dataclasses import replace

        m = replace(m, ffn_hidden_size=4 * m.hidden_size)
    return m


def trainer_impl(cfg: RunConfig) -> str:
    """The layer implementation a GPU run of `train` uses: --transformer-impl when config has it (None: fused
    on CUDA), else megatron-core's local modules (the only ones before the fused spec existed)."""
    if not any(hasattr(getattr(cfg, s, None), "transformer_impl") for s in RunConfig.SECTIONS):
        return "local"
    return "local" if config_value(cfg, "transformer_impl", "fused") == "local" else "fused"


def build_problem(cfg: RunConfig, gpus: int, gpu_type: str, gpus_per_node: int, swiglu: bool = True,
                  ffn_given: bool = True, inter_node_gbps: Optional[float] = None,
                  calibration_file: Optional[str] = None) -> Problem:
    if gpus < 1:
        raise PlanError(f"--gpus {gpus}: need at least one GPU")
    if gpus_per_node < 1 or (gpus > gpus_per_node and gpus % gpus_per_node):
        raise PlanError(f"--gpus {gpus} is not a whole number of nodes of --gpus-per-node {gpus_per_node}")
    if not cfg.model.vocab_size:
        raise PlanError("the vocabulary size is unknown: pass --vocab-size (or a --recipe that sets vocab_size)")
    dtype = "fp16" if cfg.optim.fp16 else "bf16"
    try:
        gpu = gpu_spec(gpu_type, dtype, inter_node_gbps, min(gpus, gpus_per_node), load_calibration(calibration_file))
    except ValueError as e:
        raise PlanError(str(e)) from None
    gbs = cfg.data.global_batch_size
    if not gbs:
        raise PlanError("--global-batch-size is required (or a --recipe that sets global_batch_size)")
    return Problem(model=model_for_plan(cfg, swiglu, ffn_given), seq_length=cfg.data.seq_length,
                   global_batch_size=gbs, vocab_size=int(cfg.model.vocab_size), num_gpus=gpus,
                   gpus_per_node=min(gpus, gpus_per_node), gpu=gpu, gated_mlp=swiglu,
                   flash_attention=trainer_impl(cfg) != "local", impl=trainer_impl(cfg), dtype=dtype,
                   vocab_divisible_by=vocab_divisible_by(cfg))


def fixed_layout(cfg: RunConfig, pb: Problem, recompute: str) -> Layout:
    """The layout given by the flags, checked the way `train` checks it (config/arguments.validate)."""
    from dataclasses import replace

    from megatron_llm.config.arguments import ConfigError, validate

    p, d = cfg.parallel, cfg.data
    tp, pp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size
    if pb.num_gpus % (tp * pp):
        raise PlanError(f"--gpus {pb.num_gpus} is not divisible by --tensor-model-parallel-size {tp} x "
                        f"--pipeline-model-parallel-size {pp}")
    probe = replace(cfg, data=replace(d, mock_data=True), model=replace(cfg.model, ffn_hidden_size=pb.model.ffn_hidden_size))
    try:
        validate(probe, pb.num_gpus, schedule=False)
    except ConfigError as e:
        raise PlanError(str(e)) from None
    dp = pb.num_gpus // (tp * pp)
    overlap = p.overlap_grad_reduce if p.overlap_grad_reduce is not None else dp > 1
    return Layout(tp=tp, pp=pp, dp=dp, micro_batch_size=d.micro_batch_size,
                  vp_layers=p.num_layers_per_virtual_pipeline_stage, sequence_parallel=p.sequence_parallel,
                  recompute=recompute, distributed_optimizer=p.use_distributed_optimizer,
                  overlap_grad_reduce=bool(overlap) and dp > 1,
                  overlap_param_gather=bool(overlap) and dp > 1 and p.use_distributed_optimizer)
