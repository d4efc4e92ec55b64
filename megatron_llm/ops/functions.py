"""The fused ops: autograd functions over the extension's kernels, or the torch reference (see dispatch.py)."""

from __future__ import annotations

from typing import Tuple

import torch

from . import reference
from .dispatch import extension


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(-1, t.shape[-1])


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ext, x, weight, eps):
        x2 = _rows(x)
        y, rstd = ext.rms_norm_fwd(x2, weight, float(eps))
        ctx.ext = ext
        ctx.save_for_backward(x2, weight, rstd)
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, gy):
        x2, weight, rstd = ctx.saved_tensors
        dx, dw = ctx.ext.rms_norm_bwd(_rows(gy), x2, weight, rstd)
        return None, dx.view(gy.shape), dw.to(weight.dtype), None


class _RMSNormResidual(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ext, x, residual, weight, eps):
        y, total, rstd = ext.add_rms_norm_fwd(_rows(x), _rows(residual), weight, float(eps))
        ctx.ext = ext
        ctx.save_for_backward(total, weight, rstd)
        return y.view(x.shape), total.view(x.shape)

    @staticmethod
    def backward(ctx, gy, gtotal):
        total, weight, rstd = ctx.saved_tensors
        dx, dw = ctx.ext.rms_norm_bwd(_rows(gy), total, weight, rstd)
        if gtotal is not None:
            dx = dx + _rows(gtotal).to(dx.dtype)
        dx = dx.view(gy.shape)
        return None, dx, dx, dw.to(weight.dtype), None


class _Rope(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ext, t, freqs2d):
        ctx.ext = ext
        ctx.save_for_backward(freqs2d)
        return ext.rope_fwd(t.contiguous(), freqs2d)

    @staticmethod
    def backward(ctx, g):
        (freqs2d,) = ctx.saved_tensors
        return None, ctx.ext.rope_bwd(g.contiguous(), freqs2d), None


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ext, x):
        x2 = _rows(x)
        ctx.ext = ext
        ctx.save_for_backward(x2)
        return ext.swiglu_fwd(x2).view(*x.shape[:-1], x.shape[-1] // 2)

    @staticmethod
    def backward(ctx, g):
        (x2,) = ctx.saved_tensors
        dx = ctx.ext.swiglu_bwd(_rows(g), x2)
        return None, dx.view(*g.shape[:-1], g.shape[-1] * 2)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """RMSNorm over the last dim, fp32 accumulation, output in x.dtype."""
    if x.shape[-1] != weight.numel():
        raise ValueError(f"rms_norm: weight has {weight.numel()} elements, input's last dim is {x.shape[-1]}")
    ext = extension(x, weight)
    return reference.rms_norm(x, weight, eps) if ext is None else _RMSNorm.apply(ext, x, weight, eps)


def rms_norm_residual(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                      eps: float = 1e-5) -> Tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + residual), x + residual): the norm fused with the residual add before it."""
    if x.shape != residual.shape or x.dtype != residual.dtype:
        raise ValueError(f"rms_norm_residual: x {tuple(x.shape)} {x.dtype} and residual {tuple(residual.shape)} "
                         f"{residual.dtype} must match")
    ext = extension(x, residual, weight)
    if ext is None:
        return reference.rms_norm_residual(x, residual, weight, eps)
    return _RMSNormResidual.apply(ext, x, residual, weight, eps)


def rope(t: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """megatron-core's rotate-half RoPE: t [s, b, h, d], freqs [s, 1, 1, d_rot] angles (d_rot <= d, even)."""
    if t.dim() != 4 or freqs.dim() != 4:
        raise ValueError(f"rope: expects t [s, b, h, d] and freqs [s, 1, 1, d_rot], got {tuple(t.shape)} and "
                         f"{tuple(freqs.shape)}")
    d_rot = freqs.shape[-1]
    if d_rot > t.shape[-1] or d_rot % 2:
        raise ValueError(f"rope: rotary dim {d_rot} must be even and <= head dim {t.shape[-1]}")
    ext = extension(t, freqs)
    if ext is None or freqs.shape[0] != t.shape[0] or freqs.shape[1] != 1 or freqs.shape[2] != 1:
        return reference.rope(t, freqs)  # broadcast layouts other than megatron-core's [s, 1, 1, d] stay in torch
    angles = freqs.reshape(freqs.shape[0], d_rot).to(torch.float64 if t.dtype == torch.float64 else torch.float32)
    return _Rope.apply(ext, t, angles.contiguous())  # angles stay fp32: bf16 would round positions' phases


def swiglu(x: torch.Tensor) -> torch.Tensor:
    """x [..., 2f] -> silu(x[..., :f]) * x[..., f:] (megatron-core's bias_swiglu_impl without bias)."""
    if x.shape[-1] % 2:
        raise ValueError(f"swiglu: last dim {x.shape[-1]} must be even (gate and value halves)")
    ext = extension(x)
    return reference.swiglu(x) if ext is None else _SwiGLU.apply(ext, x)
