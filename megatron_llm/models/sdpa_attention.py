"""megatron-core core attention on torch's scaled_dot_product_attention (the `fused` spec's attention).

Replaces megatron-core's local DotProductAttention, which materialises [b*heads, s, s] scores in fp32, rebuilds a
causal mask each call and copies K/V with repeat_interleave for GQA. Here: causal without a mask tensor, GQA with
enable_gqa=True (no KV copy), and on CUDA the cuDNN backend first (fastest for the Llama shapes on H100: DESIGN.md
section 4), then flash, memory-efficient, math. Same constructor keywords and forward as DotProductAttention, so
megatron-core's SelfAttention (and its selective recompute of the core attention) builds and calls it unchanged.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule

SUPPORTED_MASK_TYPES = (AttnMaskType.causal, AttnMaskType.no_mask)


def _unsupported(what: str) -> ValueError:
    return ValueError(f"SDPACoreAttention (--transformer-impl fused) does not support {what}; use "
                      f"--transformer-impl local")


def _check_mask_type(mask_type) -> None:
    if mask_type not in SUPPORTED_MASK_TYPES:
        raise _unsupported(f"attention mask type {getattr(mask_type, 'name', mask_type)!r} (supported: "
                           f"{', '.join(m.name for m in SUPPORTED_MASK_TYPES)})")


def _backends(device: torch.device):
    """Backend priority for sdpa_kernel; None on CPU (torch picks its CPU flash or math kernel)."""
    if device.type != "cuda":
        return None
    from torch.nn.attention import SDPBackend

    return [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
            SDPBackend.MATH]


class SDPACoreAttention(MegatronModule):
    """q [s, b, heads, d], k/v [s, b, groups, d] (this TP rank's heads) -> [s, b, heads * d]."""

    def __init__(self, config, layer_number: int, attn_mask_type: AttnMaskType, attention_type: str,
                 attention_dropout: Optional[float] = None, softmax_scale: Optional[float] = None,
                 cp_comm_type: Optional[str] = None, pg_collection=None):
        super().__init__(config=config)
        if config.context_parallel_size != 1:
            raise _unsupported("context parallelism")
        if getattr(config, "window_size", None) is not None:
            raise _unsupported("sliding-window attention (--window-size)")
        if getattr(config, "softmax_type", "vanilla") != "vanilla":
            raise _unsupported(f"softmax_type {config.softmax_type!r}")
        _check_mask_type(attn_mask_type)
        self.layer_number = max(1, layer_number)
        self.attn_mask_type = attn_mask_type
        self.attention_type = attention_type
        # apply_query_key_layer_scaling divides the scale by layer_number and multiplies it back inside the fp32
        # softmax: the net scale is 1/sqrt(d) either way, which is what SDPA applies (with fp32 accumulation).
        self.softmax_scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(config.kv_channels)
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout

    def forward(self, query, key, value, attention_mask, attn_mask_type: Optional[AttnMaskType] = None,
                attention_bias=None, packed_seq_params=None):
        if packed_seq_params is not None:
            raise _unsupported("packed sequences (packed_seq_params)")
        if attention_bias is not None:
            raise _unsupported("an attention bias")
        mask_type = self.attn_mask_type if attn_mask_type is None else attn_mask_type
        _check_mask_type(mask_type)
        # The causal mask is implied (is_causal): a causal mask tensor, if the dataset made one, says nothing more.
        # [s, b, h, d] -> [b, h, s, d]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        dropout_p = self.dropout_p if self.training else 0.0
        out = self._sdpa(q, k, v, mask_type == AttnMaskType.causal, dropout_p)
        s, b = query.shape[0], query.shape[1]
        return out.permute(2, 0, 1, 3).reshape(s, b, -1)

    def _sdpa(self, q, k, v, causal: bool, dropout_p: float):
        import contextlib

        from torch.nn.attention import sdpa_kernel
        from torch.nn.functional import scaled_dot_product_attention

        backends = _backends(q.device)
        kernel = sdpa_kernel(backends, set_priority=True) if backends else contextlib.nullcontext()
        rng = contextlib.nullcontext()
        if dropout_p > 0.0:  # the TP-aware RNG stream, as megatron-core's attention dropout uses
            from megatron.core import tensor_parallel

            rng = tensor_parallel.get_cuda_rng_tracker().fork()
        with kernel, rng:
            return scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal,
                                                scale=self.softmax_scale, enable_gqa=k.shape[1] != q.shape[1])
