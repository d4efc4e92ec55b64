"""Pure-torch reference implementations of the fused ops: the fallback when the extension is not built and the
independent expectation the kernels are tested against. Each computes in fp32 and returns the input dtype, as the
kernels do; autograd differentiates them."""

from __future__ import annotations

from typing import Optional, Tuple

import torch


def _acc(t: torch.Tensor) -> torch.Tensor:
    """The accumulation dtype: fp32, or fp64 for fp64 inputs (gradcheck)."""
    return t if t.dtype == torch.float64 else t.float()


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = _acc(x)
    rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (xf * rstd * _acc(weight)).to(x.dtype)


def rms_norm_residual(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                      eps: float) -> Tuple[torch.Tensor, torch.Tensor]:
    total = x + residual
    return rms_norm(total, weight, eps), total


def rotate_half(t: torch.Tensor) -> torch.Tensor:
    t1, t2 = torch.chunk(t, 2, dim=-1)
    return torch.cat((-t2, t1), dim=-1)


def rope(t: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """megatron-core's non-interleaved rotate-half RoPE on [s, b, h, d]; the first freqs.shape[-1] channels rotate,
    the rest pass through."""
    d_rot = freqs.shape[-1]
    rot, rest = _acc(t[..., :d_rot]), t[..., d_rot:]
    f = _acc(freqs)
    out = rot * torch.cos(f) + rotate_half(rot) * torch.sin(f)
    return torch.cat((out.to(t.dtype), rest), dim=-1)


def swiglu(x: torch.Tensor) -> torch.Tensor:
    a, b = torch.chunk(_acc(x), 2, dim=-1)
    return (torch.nn.functional.silu(a) * b).to(x.dtype)


def scaled_masked_softmax(x: torch.Tensor, mask: Optional[torch.Tensor], scale: float,
                          causal: bool = False) -> torch.Tensor:
    """apex's scaled (upper-triangular / additive-boolean) masked softmax: masked scores become -10000 after scaling
    (so a fully masked row is uniform, as in apex and megatron-core's unfused path), causal hides j > i."""
    s = _acc(x) * scale
    if mask is not None:
        s = s.masked_fill(mask.bool(), -10000.0)
    if causal:
        sq, sk = s.shape[-2], s.shape[-1]
        upper = torch.ones(sq, sk, dtype=torch.bool, device=s.device).triu(1)
        s = s.masked_fill(upper, float("-inf"))
    return torch.softmax(s, dim=-1).to(x.dtype)


def softmax_backward(grad: torch.Tensor, probs: torch.Tensor, scale: float) -> torch.Tensor:
    g, y = _acc(grad), _acc(probs)
    return (scale * y * (g - (g * y).sum(-1, keepdim=True))).to(grad.dtype)


def wgrad_accumulate(total_input: torch.Tensor, grad_output: torch.Tensor, main_grad: torch.Tensor) -> None:
    """main_grad += grad_output^T @ total_input over all leading (token) dimensions, accumulated in fp32."""
    x = _acc(total_input.reshape(-1, total_input.shape[-1]))
    g = _acc(grad_output.reshape(-1, grad_output.shape[-1]))
    main_grad.add_((g.t() @ x).to(main_grad.dtype))


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0,
                  vocab_size: Optional[int] = None) -> torch.Tensor:
    """Single-rank per-token cross entropy over the whole vocabulary (fp32 [s, b]); columns >= vocab_size are padding
    and excluded. With label smoothing alpha over K real classes: (1 - alpha K/(K-1)) * nll + alpha K/(K-1) *
    mean(-log p), megatron-core's formula."""
    lf = _acc(logits)
    k = lf.shape[-1] if vocab_size is None else vocab_size
    lf = lf[..., :k]
    logp = torch.log_softmax(lf, dim=-1)
    nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    if label_smoothing > 0:
        sm = label_smoothing * k / (k - 1)
        nll = (1.0 - sm) * nll - sm * logp.mean(-1)
    return nll
