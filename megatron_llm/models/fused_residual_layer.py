"""The `fused` spec's transformer layer: megatron-core's TransformerLayer with the residual add after attention
fused into the pre-MLP RMSNorm (one kernel reads the attention output and the residual, writes their sum and its
norm; unfused, the sum is written by the bias-dropout-add and read again by the norm).

megatron-core calls `self_attn_bda(...)(attention_output, residual, dropout)` and, a few identity ops later,
`_forward_pre_mlp_layernorm(that sum)`. Here the first computes the sum and the norm together and keeps the norm;
the second hands it back when it is given that same tensor, and otherwise (any change megatron-core makes in
between) computes the norm itself. Layers where that order does not hold keep megatron-core's path: cross
attention, layernorm recompute or activation offloading of the norms, CUDA graphs.
"""

from __future__ import annotations

import torch
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.transformer_layer import TransformerLayer

from megatron_llm.ops.modules import FusedResidualRMSNorm


class FusedResidualTransformerLayer(TransformerLayer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._normed = None  # (sum, its norm) from the attention's residual add, until the MLP takes it
        self.fuses_residual_norm = (
            isinstance(self.pre_mlp_layernorm, FusedResidualRMSNorm)
            and isinstance(self.cross_attention, IdentityOp)
            and isinstance(self.pre_cross_attn_layernorm, IdentityOp)
            and not self.recompute_pre_mlp_layernorm
            and not self.offload_attn_norm
            and not self.offload_mlp_norm
            and getattr(self.config, "cuda_graph_impl", "none") == "none"
            and not getattr(self.config, "enable_cuda_graph", False)
        )
        if self.fuses_residual_norm:
            self.self_attn_bda = self._add_and_norm

    def _add_and_norm(self, training: bool, fused: bool):
        """Stands in for megatron-core's get_bias_dropout_add(training, fused): out = residual + dropout(x + bias),
        with the pre-MLP norm of out computed in the same kernel."""

        def bias_dropout_add_norm(x_with_bias, residual: torch.Tensor, prob: float) -> torch.Tensor:
            x, bias = x_with_bias
            if bias is not None:
                x = x + bias
            if training and prob > 0:
                x = torch.nn.functional.dropout(x, p=prob, training=True)
            residual = residual if residual.dtype == x.dtype else residual.to(x.dtype)
            normed, total = self.pre_mlp_layernorm(x, residual)
            self._normed = (total, normed)
            return total

        return bias_dropout_add_norm

    def _forward_pre_mlp_layernorm(self, hidden_states):
        kept, self._normed = self._normed, None
        if kept is not None and kept[0] is hidden_states:
            return kept[1]
        return super()._forward_pre_mlp_layernorm(hidden_states)

    def forward(self, *args, **kwargs):
        try:
            return super().forward(*args, **kwargs)
        finally:
            self._normed = None  # not kept past the call, even one that stopped part way
