"""RMSNorm for megatron-core layer specs, usable with sequence parallelism and without apex/TE."""

from __future__ import annotations

import torch


class RMSNorm(torch.nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight, computed in fp32 whatever the activation dtype.

    With sequence parallelism each TP rank sees a slice of the sequence, so the weight's gradient is partial:
    the ``sequence_parallel`` attribute tells megatron-core's finalize_model_grads to all-reduce it across TP.
    """

    def __init__(self, config, hidden_size: int, eps: float = 1e-5, **_unused):
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))
        setattr(self.weight, "sequence_parallel", bool(config.sequence_parallel))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(x.dtype)
