"""Vocab-parallel cross entropy that never holds an fp32 copy of the [s, b, V/tp] logits.

One pass over this rank's shard gives, per token, the shard's max, the sum of exp relative to it, the target logit
(when the target lies in the shard) and the sum of the logits (for label smoothing); two collectives (MAX, then one
SUM of the rescaled stats) combine the shards; the backward recomputes softmax from the saved logits row by row.
The extension's kernels do both passes; the torch fallback does them in chunks of rows. Vocabulary columns at or
above `vocab_size` (padding) are left out of the softmax and get zero gradient.

Label smoothing follows megatron-core's formula with K = the real (global) vocabulary size and the mean log-prob
taken over all K classes; megatron-core takes it over the local shard only, which equals ours at TP 1.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist

from .dispatch import extension
from .reference import _acc

_CHUNK_ELEMENTS = 1 << 22  # torch fallback: rows per chunk so that one fp32 chunk is ~16 MB


def _acc_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _chunks(n_rows: int, width: int):
    step = max(1, _CHUNK_ELEMENTS // max(1, width))
    for start in range(0, n_rows, step):
        yield start, min(n_rows, start + step)


def _stats_torch(logits: torch.Tensor, target_local: torch.Tensor, n_valid: int) -> torch.Tensor:
    n = logits.shape[0]
    stats = torch.empty(n, 4, dtype=_acc_dtype(logits), device=logits.device)
    for a, b in _chunks(n, logits.shape[1]):
        x = _acc(logits[a:b, :n_valid])
        m = x.max(-1).values if n_valid > 0 else torch.full((b - a,), float("-inf"), device=x.device)
        stats[a:b, 0] = m
        stats[a:b, 1] = torch.exp(x - m.unsqueeze(-1)).sum(-1) if n_valid > 0 else 0.0
        t = target_local[a:b]
        here = t >= 0
        picked = x.gather(-1, t.clamp(min=0).unsqueeze(-1)).squeeze(-1) if n_valid > 0 else torch.zeros_like(m)
        stats[a:b, 2] = torch.where(here, picked, torch.zeros_like(picked))
        stats[a:b, 3] = x.sum(-1)
    return stats


def _grad_torch(logits, target_local, n_valid, lse, gscale, smoothing, k):
    grad = torch.zeros_like(logits)
    for a, b in _chunks(logits.shape[0], logits.shape[1]):
        x = _acc(logits[a:b, :n_valid])
        g = torch.exp(x - lse[a:b].unsqueeze(-1)) - smoothing / k
        t = target_local[a:b]
        # the target's column loses 1 - smoothing, in rows whose target is in this shard (masked, not indexed:
        # selecting the rows would read their count on the host, a sync per chunk on a GPU)
        hit = (t >= 0).unsqueeze(-1).to(g.dtype) * -(1.0 - smoothing)
        g.scatter_add_(-1, t.clamp(min=0).unsqueeze(-1), hit)
        grad[a:b, :n_valid] = (g * gscale[a:b].unsqueeze(-1)).to(logits.dtype)
    return grad


class _TorchKernels:
    ce_stats = staticmethod(_stats_torch)
    ce_grad = staticmethod(_grad_torch)


class _VocabParallelCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, kernels, logits, target, group, world, rank, label_smoothing, vocab_size):
        shard = logits.shape[-1]
        start = rank * shard
        k = shard * world if vocab_size is None else int(vocab_size)
        n_valid = max(0, min(shard, k - start))
        logits2 = logits.contiguous().view(-1, shard)
        tgt = target.reshape(-1).to(torch.int64)
        local = tgt - start
        target_local = torch.where((local >= 0) & (local < n_valid), local, torch.full_like(local, -1))
        stats = kernels.ce_stats(logits2, target_local, n_valid)
        m_local, s_local = stats[:, 0], stats[:, 1]
        if world > 1:
            m = m_local.clone()
            dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
        else:
            m = m_local
        rest = torch.stack([s_local * torch.exp(m_local - m), stats[:, 2], stats[:, 3]])
        rest = torch.nan_to_num(rest, nan=0.0)  # a shard of padding only: exp(-inf - m) * 0
        if world > 1:
            dist.all_reduce(rest, op=dist.ReduceOp.SUM, group=group)
        lse = m + torch.log(rest[0])
        smoothing = label_smoothing * k / (k - 1) if label_smoothing > 0 else 0.0
        loss = lse - (1.0 - smoothing) * rest[1] - smoothing * rest[2] / k
        ctx.save_for_backward(logits2, target_local, lse)
        ctx.kernels, ctx.n_valid, ctx.smoothing, ctx.k, ctx.shape = kernels, n_valid, smoothing, k, logits.shape
        return loss.view(target.shape)

    @staticmethod
    def backward(ctx, grad_loss):
        logits2, target_local, lse = ctx.saved_tensors
        gscale = grad_loss.reshape(-1).to(lse.dtype).contiguous()
        grad = ctx.kernels.ce_grad(logits2, target_local, ctx.n_valid, lse, gscale, float(ctx.smoothing),
                                   float(ctx.k))
        return None, grad.view(ctx.shape), None, None, None, None, None, None


def _default_group():
    try:
        from megatron.core import parallel_state

        if parallel_state.model_parallel_is_initialized():
            return parallel_state.get_tensor_model_parallel_group()
    except Exception:  # megatron-core absent or not initialised: a single shard
        pass
    return None


def vocab_parallel_cross_entropy(logits: torch.Tensor, target: torch.Tensor, tp_group=None,
                                 label_smoothing: float = 0.0, vocab_size: Optional[int] = None) -> torch.Tensor:
    """Per-token loss [s, b] (fp32) of logits [s, b, V/tp] (this rank's shard) against global target ids [s, b].
    tp_group None: megatron-core's tensor-parallel group when initialised, else one shard. vocab_size: the real
    vocabulary; columns at or above it (padding) never count."""
    if logits.shape[:-1] != target.shape:
        raise ValueError(f"vocab_parallel_cross_entropy: logits {tuple(logits.shape)} and target "
                         f"{tuple(target.shape)} must agree on every dim but the last")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"vocab_parallel_cross_entropy: label_smoothing {label_smoothing} must be in [0, 1)")
    group = tp_group if tp_group is not None else _default_group()
    world = dist.get_world_size(group) if group is not None and dist.is_initialized() else 1
    rank = dist.get_rank(group) if world > 1 else 0
    if vocab_size is not None and not 0 < vocab_size <= logits.shape[-1] * world:
        raise ValueError(f"vocab_parallel_cross_entropy: vocab_size {vocab_size} must be in (0, "
                         f"{logits.shape[-1] * world}] (the padded vocabulary)")
    kernels = extension(logits) or _TorchKernels
    return _VocabParallelCE.apply(kernels, logits, target, group, world, rank, label_smoothing, vocab_size)
