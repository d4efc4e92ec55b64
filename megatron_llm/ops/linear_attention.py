"""Causal linear attention with per-head exponential decay (TransNormerLLM's token mixer core), three ways.

For one head with decay rate s (lambda = exp(-s)), queries q_i, keys k_j, values v_j (rows), the output is

    o_i = sum_{j <= i} lambda^(i - j) (q_i . k_j) v_j                                   (no softmax, no 1/sqrt(d))

* parallel   : the n x n matrix (Q K^T) * D, D[i, j] = lambda^(i-j) for j <= i else 0. O(n^2); the reference.
* recurrent  : state S_i = lambda S_{i-1} + k_i^T v_i, o_i = q_i S_i. One token at a time; what generation uses.
* lightning  : blocks of B tokens (arXiv 2307.14995 / 2401.04658). Inside a block the parallel form; across blocks
               the state: for block t (positions tB .. tB+m-1, local index i = 1..m)
                   O_t  = [(Q_t K_t^T) * D] V_t  +  (lambda^i * Q_t) S          (intra + inter)
                   S   <- lambda^m S + (lambda^(m-j) * K_t)^T V_t                  (j = 1..m)
               O(n B d + n d^2); any n, the last block may be short.

Tensors are [batch, heads, n, d] (values may have another width e); `slopes` holds s per head, shape [heads].
All three accumulate in fp32 and return the input dtype. The lightning form runs the csrc/ kernel (C++ on CPU tensors,
CUDA on GPU ones; forward and a backward of three kernel calls) when the extension is built and no carried state is
asked for; else the torch code here, with gradients from autograd (MEGATRON_LLM_NO_EXT=1 forces it).
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch

from megatron_llm.config.model import LIGHTNING_BLOCK_SIZE

from .dispatch import extension

IMPLEMENTATIONS = ("lightning", "parallel", "recurrent")


def alibi_slopes(num_heads: int) -> List[float]:
    """Per-head decay rates of TransNormerLLM: ALiBi's geometric sequence 2^(-8/n), 2^(-16/n), ... (Press et al.
    2022); for a head count that is not a power of two, the power of two below plus every other slope of the one
    above (the public code's rule)."""
    def power_of_2(n: int) -> List[float]:
        start = 2.0 ** (-(2.0 ** -(math.log2(n) - 3)))
        return [start * start ** i for i in range(n)]

    if math.log2(num_heads).is_integer():
        return power_of_2(num_heads)
    below = 2 ** math.floor(math.log2(num_heads))
    return power_of_2(below) + alibi_slopes(2 * below)[0::2][: num_heads - below]


def layer_slopes(num_heads: int, layer_index: int, num_layers: int) -> torch.Tensor:
    """Decay rates of layer `layer_index` (0-based): the head slopes scaled by 1 - l/(L-1) + 1e-5, so the first
    layer decays fastest and the last keeps (almost) everything, as in the released models."""
    scale = 1.0 - (layer_index / (num_layers - 1) if num_layers > 1 else 0.0) + 1e-5
    return torch.tensor(alibi_slopes(num_heads), dtype=torch.float64) * scale


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slopes: torch.Tensor) -> None:
    if q.dim() != 4 or q.shape != k.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"linear attention expects q, k [b, h, n, d] and v [b, h, n, e]; got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    if slopes.shape != (q.shape[1],):
        raise ValueError(f"slopes must have one rate per head ({q.shape[1]}), got shape {tuple(slopes.shape)}")


def _rates(slopes: torch.Tensor, device) -> torch.Tensor:
    return slopes.to(device=device, dtype=torch.float32).view(1, -1, 1, 1)


def decay_matrix(slopes: torch.Tensor, n: int, device=None) -> torch.Tensor:
    """[1, h, n, n]: lambda^(i-j) on and below the diagonal, 0 above."""
    idx = torch.arange(n, device=device, dtype=torch.float32)
    dist = idx.view(-1, 1) - idx.view(1, -1)
    s = _rates(slopes, device)
    return torch.where(dist >= 0, torch.exp(-s * dist.clamp(min=0)), torch.zeros((), device=device))


def linear_attention_parallel(q, k, v, slopes):
    """Quadratic reference: ((Q K^T) * D) V."""
    _check(q, k, v, slopes)
    qf, kf, vf = q.float(), k.float(), v.float()
    scores = torch.matmul(qf, kf.transpose(-1, -2)) * decay_matrix(slopes, q.shape[2], q.device)
    return torch.matmul(scores, vf).to(q.dtype)


def linear_attention_recurrent(q, k, v, slopes, state: Optional[torch.Tensor] = None
                               ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Token by token from `state` ([b, h, d, e] fp32, zeros when None). Returns (output, final state)."""
    _check(q, k, v, slopes)
    b, h, n, d = q.shape
    e = v.shape[-1]
    lam = torch.exp(-_rates(slopes, q.device))
    s = state.float() if state is not None else torch.zeros(b, h, d, e, device=q.device, dtype=torch.float32)
    outs = []
    for i in range(n):
        ki, vi, qi = k[:, :, i].float(), v[:, :, i].float(), q[:, :, i].float()
        s = lam * s + ki.unsqueeze(-1) * vi.unsqueeze(-2)
        outs.append(torch.matmul(qi.unsqueeze(-2), s).squeeze(-2))
    out = torch.stack(outs, dim=2) if outs else q.new_zeros(b, h, 0, e, dtype=torch.float32)
    return out.to(q.dtype), s


class _LightningKernel(torch.autograd.Function):
    """The csrc/ kernel: forward, and backward as dq = LA(do, v, k), dk, dv = anti-causal LA(v, do, q), LA(k, q, do)
    (recomputed block-wise from q, k, v; nothing but the inputs is saved)."""

    @staticmethod
    def forward(ctx, ext, q, k, v, slopes, block_size):
        ctx.ext, ctx.block_size = ext, block_size
        ctx.save_for_backward(q, k, v, slopes)
        return ext.lightning_attention_fwd(q, k, v, slopes, block_size)

    @staticmethod
    def backward(ctx, g):
        q, k, v, slopes = ctx.saved_tensors
        dq, dk, dv = ctx.ext.lightning_attention_bwd(g, q, k, v, slopes, ctx.block_size)
        return None, dq, dk, dv, None, None


def _kernel(q, k, v, slopes):
    """The extension to run the lightning form with, or None (torch code): one floating dtype, no slope gradient."""
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float32, torch.float64, torch.float16,
                                                              torch.bfloat16) or slopes.requires_grad:
        return None
    ext = extension(q, k, v)
    return ext if ext is not None and hasattr(ext, "lightning_attention_fwd") else None


def linear_attention_lightning(q, k, v, slopes, block_size: int = LIGHTNING_BLOCK_SIZE,
                               state: Optional[torch.Tensor] = None, return_state: bool = False):
    """Block-wise form: intra-block quadratic, inter-block through the [d, e] state. Returns the output, or
    (output, final state) with return_state=True (a prefill for generation)."""
    _check(q, k, v, slopes)
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
    if state is None and not return_state:
        ext = _kernel(q, k, v, slopes)
        if ext is not None:
            return _LightningKernel.apply(ext, q, k, v, slopes.detach().to(q.device), int(block_size))
    return linear_attention_lightning_torch(q, k, v, slopes, block_size, state, return_state)


def linear_attention_lightning_torch(q, k, v, slopes, block_size: int = LIGHTNING_BLOCK_SIZE,
                                     state: Optional[torch.Tensor] = None, return_state: bool = False):
    """The lightning form in torch ops (the fallback, and the kernel's reference in tests)."""
    _check(q, k, v, slopes)
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
    b, h, n, d = q.shape
    e = v.shape[-1]
    s_rate = _rates(slopes, q.device)  # [1, h, 1, 1]
    B = min(block_size, max(n, 1))
    local = torch.arange(1, B + 1, device=q.device, dtype=torch.float32).view(1, 1, -1, 1)  # i = 1..B
    q_decay = torch.exp(-s_rate * local)  # lambda^i
    diag = decay_matrix(slopes, B, q.device)
    S = state.float() if state is not None else torch.zeros(b, h, d, e, device=q.device, dtype=torch.float32)
    outs = []
    for start in range(0, n, B):
        m = min(B, n - start)
        qi, ki, vi = (t[:, :, start:start + m].float() for t in (q, k, v))
        intra = torch.matmul(torch.matmul(qi, ki.transpose(-1, -2)) * diag[:, :, :m, :m], vi)
        inter = torch.matmul(qi * q_decay[:, :, :m], S)
        outs.append(intra + inter)
        k_decay = torch.exp(-s_rate * (m - local[:, :, :m]))  # lambda^(m-j)
        S = torch.exp(-s_rate * m) * S + torch.matmul((ki * k_decay).transpose(-1, -2), vi)
    out = (torch.cat(outs, dim=2) if outs else q.new_zeros(b, h, 0, e, dtype=torch.float32)).to(q.dtype)
    return (out, S) if return_state else out


def linear_attention(q, k, v, slopes, impl: str = "lightning", block_size: int = LIGHTNING_BLOCK_SIZE):
    """Dispatch by implementation name (the model's --linear-attention-impl)."""
    if impl == "lightning":
        return linear_attention_lightning(q, k, v, slopes, block_size)
    if impl == "parallel":
        return linear_attention_parallel(q, k, v, slopes)
    if impl == "recurrent":
        return linear_attention_recurrent(q, k, v, slopes)[0]
    raise ValueError(f"unknown linear attention implementation {impl!r}; one of {', '.join(IMPLEMENTATIONS)}")
