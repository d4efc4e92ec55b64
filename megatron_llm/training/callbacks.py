"""Hooks the training loop calls, so that profilers and tests can observe it without editing it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional


@dataclass
class TrainContext:
    """What a callback may look at. Filled by the trainer before on_train_start."""

    cfg: Any  # RunConfig
    rank: int = 0
    world_size: int = 1
    device: str = "cpu"
    model: Any = None  # list of model chunks (DDP-wrapped)
    optimizer: Any = None
    timers: Any = None  # megatron.core.timers.Timers when a callback asks for it (wants_timers)
    vocab_size: int = 0  # the model's (padded) vocabulary
    tokenizer_vocab_size: Optional[int] = None  # unpadded: model FLOPs for MFU count these logits (profiler)
    extra: Dict[str, Any] = field(default_factory=dict)


class TrainCallback:
    """Base class: override what you need. Every rank calls every hook."""

    wants_timers: bool = False  # ask the trainer to create megatron-core Timers and pass them to the schedules

    def on_train_start(self, ctx: TrainContext) -> None: ...

    def on_step_start(self, ctx: TrainContext, iteration: int) -> None: ...

    def on_step_end(self, ctx: TrainContext, iteration: int, metrics: Dict[str, float]) -> None:
        """metrics: lm_loss, lr, grad_norm, loss_scale, iteration_time_s, tokens_per_s, flops_per_iteration,
        tflops, mfu (None when not applicable), mem_gb, and, if timers were requested, timer_<name>_s."""

    def on_eval(self, ctx: TrainContext, iteration: int, val_loss: float) -> None: ...

    def on_train_end(self, ctx: TrainContext, summary: Optional[Dict[str, Any]] = None) -> None: ...
