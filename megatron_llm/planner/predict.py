"""Prediction for one layout: memory, step time split, TFLOP/s per GPU and MFU."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from megatron_llm.config.model import ModelConfig
from megatron_llm.perf import flops as F
from megatron_llm.planner.hardware import GpuSpec
from megatron_llm.planner.layout import Layout
from megatron_llm.planner.memory import MemoryEstimate, estimate_memory
from megatron_llm.planner.timing import StepTime, step_time

CONVENTION = ("model FLOPs = 3 x forward matmul FLOPs, full s x s attention counted (Megatron-LM paper "
              "convention, Narayanan et al. 2021), recomputation not counted (it is in hardware_tflops_per_gpu)")


@dataclass(frozen=True)
class Problem:
    """What is being trained and on what."""

    model: ModelConfig
    seq_length: int
    global_batch_size: int
    vocab_size: int  # the tokenizer's; the model's padded vocabulary is derived per layout
    num_gpus: int
    gpus_per_node: int
    gpu: GpuSpec
    gated_mlp: bool = True
    flash_attention: bool = True
    impl: str = "fused"  # the trainer's layer implementation (--transformer-impl): fused | local
    dtype: str = "bf16"
    vocab_divisible_by: int = 128


@dataclass
class Prediction:
    layout: Layout
    memory: MemoryEstimate
    time: StepTime
    tflops_per_gpu: float
    hardware_tflops_per_gpu: float
    mfu: float
    tokens_per_s: float
    fits: bool
    notes: List[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "layout": self.layout.as_dict(),
            "step_time_s": self.time.total_s,
            "time": self.time.as_dict(),
            "tflops_per_gpu": self.tflops_per_gpu,
            "hardware_tflops_per_gpu": self.hardware_tflops_per_gpu,
            "mfu": self.mfu,
            "tokens_per_s": self.tokens_per_s,
            "memory_gb_per_gpu": self.memory.total_gb,
            "memory": {"params_gb": self.memory.params_gb, "grads_gb": self.memory.grads_gb,
                       "optimizer_gb": self.memory.optimizer_gb, "activations_gb": self.memory.activations_gb},
            "fits": self.fits,
            "flops_convention": CONVENTION,
            "notes": self.notes,
        }


def predict(pb: Problem, layout: Layout, bucket_size: Optional[int] = None) -> Prediction:
    from megatron_llm.planner.memory import padded_vocab

    m = pb.model
    vocab = padded_vocab(pb.vocab_size, layout.tp, pb.vocab_divisible_by)
    mb = pb.global_batch_size // (layout.micro_batch_size * layout.dp)
    mem = estimate_memory(m, layout, pb.seq_length, vocab, mb, pb.dtype, bucket_size, pb.gated_mlp,
                          pb.flash_attention, pb.impl)
    t = step_time(m, layout, pb.seq_length, pb.global_batch_size, vocab, pb.gpu, pb.gpus_per_node, pb.gated_mlp,
                  pb.flash_attention)
    # Model FLOPs use the tokenizer's vocabulary; hardware FLOPs the padded one plus recomputation.
    model_flops = F.flops_per_iteration(m, pb.seq_length, pb.vocab_size, pb.global_batch_size, pb.gated_mlp)
    hw_flops = F.hardware_flops_per_iteration(m, pb.seq_length, vocab, pb.global_batch_size, layout.recompute,
                                              gated_mlp=pb.gated_mlp)
    n = layout.tp * layout.pp * layout.dp
    tflops = model_flops / t.total_s / n / 1e12
    return Prediction(layout=layout, memory=mem, time=t, tflops_per_gpu=tflops,
                      hardware_tflops_per_gpu=hw_flops / t.total_s / n / 1e12, mfu=tflops / pb.gpu.peak_tflops,
                      tokens_per_s=pb.global_batch_size * pb.seq_length / t.total_s,
                      fits=mem.total_gb <= pb.gpu.memory_gb)
