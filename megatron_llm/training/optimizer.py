"""AdamW and the gradient norm without TE or apex: one fused kernel per step, one host read per step.

Without TE/apex, megatron-core builds torch.optim.AdamW with torch's defaults (foreach on CUDA, a Python loop over
tensors on CPU), and computes the grad norm with its local fallback, which reads every tensor's norm on the host
(torch.tensor(list of 0-d device tensors): one sync per tensor). Here:
- use_fused_adamw(optimizer): every torch AdamW inside megatron-core's (distributed) optimizer steps with
  fused=True on CUDA, foreach=True on CPU;
- grad_norm(tensors): the L2 norm of all tensors at once (torch._foreach_norm), a device tensor, no host read;
- install_multi_tensor_ops(): puts grad_norm (and a foreach scale) into megatron-core's multi-tensor slots when
  they hold the local fallbacks, so its clip_grads reads the norm once per step (its .item(): the step's one sync,
  which clipping and the NaN check share).
"""

from __future__ import annotations

from typing import Iterable, List

import torch


def grad_norm(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """L2 norm of all tensors together, as a 1-element fp32 tensor on their device (no host synchronisation)."""
    tensors = [t for t in tensors if t.numel()]
    if not tensors:
        return torch.zeros(1, dtype=torch.float32)
    norms = torch._foreach_norm([t.float() if t.dtype != torch.float32 else t for t in tensors])
    return torch.linalg.vector_norm(torch.stack(norms)).reshape(1)


def _multi_tensor_l2norm(chunk_size, noop_flag, tensor_lists, per_tensor, *args):
    """Drop-in for amp_C.multi_tensor_l2norm as megatron-core calls it (per_tensor=False)."""
    if per_tensor:
        raise NotImplementedError("per-tensor norms are not used by megatron-core's clip_grads")
    return grad_norm(tensor_lists[0]), None


def _multi_tensor_scale(chunk_size, noop_flag, tensor_lists, scale):
    """Drop-in for amp_C.multi_tensor_scale: dst = src * scale, all tensors in one foreach call."""
    src, dst = tensor_lists
    if src:
        torch._foreach_copy_(dst, torch._foreach_mul(src, scale))


def install_multi_tensor_ops() -> bool:
    """Replace megatron-core's local (per-tensor, host-syncing) multi-tensor fallbacks; keep TE's or apex's when
    present. Returns whether anything was replaced."""
    from megatron.core import utils
    from megatron.core.optimizer import clip_grads
    from megatron.core.optimizer import optimizer as mc_optimizer

    replaced = False
    if clip_grads.l2_norm_impl is utils.local_multi_tensor_l2_norm:
        clip_grads.l2_norm_impl = _multi_tensor_l2norm
        replaced = True
    for mod in (clip_grads, mc_optimizer):
        if getattr(mod, "multi_tensor_scale_impl", None) is utils.local_multi_tensor_scale:
            mod.multi_tensor_scale_impl = _multi_tensor_scale
            replaced = True
    return replaced


def torch_optimizers(optimizer) -> List[torch.optim.Optimizer]:
    """The torch optimizers inside a megatron-core (chained / mixed-precision / distributed) optimizer."""
    chained = getattr(optimizer, "chained_optimizers", None)
    parts = chained if chained is not None else [optimizer]
    found = []
    for part in parts:
        inner = getattr(part, "optimizer", None)
        if isinstance(inner, torch.optim.Optimizer):
            found.append(inner)
    return found


def _kernel_flags(device: str) -> dict:
    return {"fused": True, "foreach": False} if device == "cuda" else {"fused": False, "foreach": True}


def _keep_kernel_choice(device: str):
    """A step pre-hook: loading a checkpoint replaces the param groups (their fused/foreach flags come from the run
    that saved) and may leave Adam's step counters on the host or missing; the fused kernel needs them on the
    parameter's device. Restores both before every step: dict lookups and device checks, no sync."""
    flags = _kernel_flags(device)

    def hook(opt, args, kwargs) -> None:
        for group in opt.param_groups:
            group.update(flags)
            if not flags["fused"]:
                continue
            for p in group["params"]:
                state = opt.state.get(p)
                if not state:
                    continue  # first step: torch creates the counter where the kernel wants it
                step = state.get("step")
                if step is None:
                    state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                elif not isinstance(step, torch.Tensor) or step.device != p.device:
                    state["step"] = torch.as_tensor(step, dtype=torch.float32).to(p.device)

    return hook


def use_fused_adamw(optimizer, device: str) -> int:
    """Switch torch AdamW/Adam inside `optimizer` to the fused kernel (CUDA) or the foreach path (CPU), also after
    a checkpoint load; returns how many torch optimizers were switched. Other optimizers (SGD, TE/apex FusedAdam)
    are left as they are."""
    switched = 0
    for opt in torch_optimizers(optimizer):
        if not isinstance(opt, (torch.optim.AdamW, torch.optim.Adam)):
            continue
        for group in opt.param_groups:
            group.update(_kernel_flags(device))
        if device == "cuda":
            opt._step_supports_amp_scaling = True  # what torch's constructor sets for fused=True
        opt.register_step_pre_hook(_keep_kernel_choice(device))
        switched += 1
    return switched
