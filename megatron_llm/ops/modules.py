"""nn.Modules over the fused ops, with the constructor megatron-core's layer specs call norms with."""

from __future__ import annotations

import torch

from .functions import rms_norm, rms_norm_residual


class RMSNorm(torch.nn.Module):
    """RMSNorm for a megatron-core spec's norm slots (`build_module(norm, config=, hidden_size=, eps=)`). The
    weight carries `sequence_parallel` as megatron-core's own norms do, so its gradient is all-reduced across the
    tensor-parallel group when activations are sequence-sharded. `layernorm_zero_centered_gamma` stores w - 1."""

    def __init__(self, config, hidden_size: int, eps: float = 1e-5, **_ignored):
        super().__init__()
        self.config = config
        self.eps = eps
        self.zero_centered_gamma = bool(getattr(config, "layernorm_zero_centered_gamma", False))
        dtype = getattr(config, "params_dtype", torch.float32)
        init = torch.zeros if self.zero_centered_gamma else torch.ones
        self.weight = torch.nn.Parameter(init(hidden_size, dtype=dtype))
        setattr(self.weight, "sequence_parallel", bool(getattr(config, "sequence_parallel", False)))

    def _gamma(self) -> torch.Tensor:
        return self.weight + 1 if self.zero_centered_gamma else self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self._gamma(), self.eps)


class FusedResidualRMSNorm(RMSNorm):
    """forward(x, residual) -> (rms_norm(x + residual), x + residual): the residual add fused into the norm;
    forward(x) is the plain norm."""

    def forward(self, x: torch.Tensor, residual=None):
        if residual is None:
            return rms_norm(x, self._gamma(), self.eps)
        return rms_norm_residual(x, residual, self._gamma(), self.eps)
