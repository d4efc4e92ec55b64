"""Non-finite gradients never reach the weights: the optimizer step split where megatron-core's ChainedOptimizer.step
is one call (prepare_grads -> get_grad_norm -> clip -> step_with_ready_grads), with the check between the norm and
the clip. The norm is the one clipping needs anyway, reduced over every rank that holds gradients, so every rank
sees the same value and takes the same decision without another collective.

On a non-finite norm the policy (--nan-policy) decides: skip the update, roll back to the last checkpoint and skip
the batch, or stop. Which parameter went bad is looked up only then (a scan of the local gradients and one gather),
so it costs nothing in a healthy run.

Test hook: MEGATRON_LLM_TEST_NAN_GRAD=ITER:RANK[,ITER:RANK...] makes the first parameter of RANK's first model
chunk receive a NaN gradient in iteration ITER (in backward, before the data-parallel reduction).
"""

from __future__ import annotations

import math
import os
import socket
from dataclasses import dataclass
from typing import List, Optional, Set, Tuple

import torch
import torch.distributed as dist

TEST_HOOK_ENV = "MEGATRON_LLM_TEST_NAN_GRAD"


@dataclass
class StepOutcome:
    updated: bool
    grad_norm: Optional[float]  # None when the fp16 loss scaler found an overflow (a normal skipped step)
    nonfinite: bool = False  # the gradient norm was NaN/Inf and the update was withheld


def _clip(optimizer, grad_norm: float) -> None:
    from megatron.core.optimizer.clip_grads import clip_grad_by_total_norm_fp32

    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        if getattr(opt, "is_stub_optimizer", False) or opt.config.clip_grad <= 0.0:
            continue
        params = opt.get_parameters()
        if params:
            clip_grad_by_total_norm_fp32(params, max_norm=opt.config.clip_grad, total_norm=grad_norm,
                                         use_decoupled_grad=opt.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8)


@torch.no_grad()
def step(optimizer, check: bool) -> StepOutcome:
    """optimizer.step(), withholding the update when `check` and the gradient norm is not finite."""
    if optimizer.prepare_grads():  # fp16: the loss scaler saw inf/nan and backs off; megatron-core skips too
        return StepOutcome(updated=False, grad_norm=None)
    grad_norm = float(optimizer.get_grad_norm())  # the one host read per step
    if check and not math.isfinite(grad_norm):
        return StepOutcome(updated=False, grad_norm=grad_norm, nonfinite=True)
    _clip(optimizer, grad_norm)
    return StepOutcome(updated=bool(optimizer.step_with_ready_grads()), grad_norm=grad_norm)


def first_nonfinite_parameter(model) -> Optional[str]:
    """Name of the first parameter (in model order) whose local gradient holds a NaN/Inf, or None."""
    for i, chunk in enumerate(model):
        for name, p in chunk.named_parameters():
            g = getattr(p, "main_grad", None)
            if g is None:
                g = p.grad
            if g is not None and not bool(torch.isfinite(g).all()):
                prefix = f"chunk{i}." if len(model) > 1 else ""
                return prefix + name.removeprefix("module.")
    return None


def _device_name(device: str) -> str:
    if device == "cuda":
        return f"cuda:{torch.cuda.current_device()} ({torch.cuda.get_device_name()})"
    return "cpu"


def describe(model, iteration: int, grad_norm: float, device: str) -> str:
    """Collective (call on every rank): which ranks hold non-finite gradients, and in which parameter first."""
    here = (dist.get_rank(), socket.gethostname(), _device_name(device), first_nonfinite_parameter(model))
    found: List[Tuple] = [None] * dist.get_world_size()
    dist.all_gather_object(found, here)
    bad = [f"rank {r} ({host}, {dev}): {name}" for r, host, dev, name in found if name is not None]
    where = "; ".join(bad) if bad else "no rank holds a non-finite gradient any more (inf in the norm only)"
    return f"iteration {iteration}: gradient norm is {grad_norm}; first non-finite gradient per rank: {where}"


def poisoned_iterations(rank: int) -> Set[int]:
    """Iterations in which this rank's test hook injects a NaN gradient (MEGATRON_LLM_TEST_NAN_GRAD)."""
    spec = os.environ.get(TEST_HOOK_ENV, "").strip()
    out: Set[int] = set()
    for item in filter(None, (s.strip() for s in spec.split(","))):
        try:
            it, r = (int(x) for x in item.split(":"))
        except ValueError:
            raise ValueError(f"{TEST_HOOK_ENV}={spec!r}: expected ITER:RANK[,ITER:RANK...]") from None
        if r == rank:
            out.add(it)
    return out


class NanInjector:
    """The test hook: a gradient hook on one parameter that turns its gradient into NaN for one iteration."""

    def __init__(self, rank: int) -> None:
        self.iterations = poisoned_iterations(rank)
        self._handle = None

    def before_step(self, model, iteration: int) -> None:
        if iteration in self.iterations:
            param = next(model[0].parameters())
            self._handle = param.register_hook(lambda g: torch.full_like(g, float("nan")))
            self.iterations.discard(iteration)  # once: a rollback replaying this iteration finds it healthy

    def after_step(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


def rollback(cfg, model, optimizer, scheduler):
    """Reload the newest complete checkpoint of --save into the live model and optimizer. None if there is none."""
    import dataclasses

    from megatron_llm.training import checkpointing

    if not cfg.checkpoint.save:
        return None
    from megatron_llm.training.checkpointing import latest_iteration

    if not os.path.isdir(cfg.checkpoint.save) or latest_iteration(cfg.checkpoint.save) is None:
        return None
    # megatron-core's scheduler load adds the saved step count to its own (right for a fresh one only)
    scheduler.num_steps = 0
    ck = dataclasses.replace(cfg.checkpoint, load=cfg.checkpoint.save, no_load_optim=False, no_load_rng=False,
                             finetune=False)
    return checkpointing.load(dataclasses.replace(cfg, checkpoint=ck), model, optimizer, scheduler)
