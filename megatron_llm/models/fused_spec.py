"""The `fused` layer spec: megatron-core's local spec with SDPA core attention and our fused ops.

Where the ops go:
- RMSNorm: the spec's norm modules (ops.modules.RMSNorm); the pre-MLP one also adds the attention's residual
  (models/fused_residual_layer.py).
- core attention: the spec's core_attention (models/sdpa_attention.py).
- RoPE, SwiGLU, cross entropy: megatron-core looks these up in module-level slots when its own switches are on
  (apply_rope_fusion -> rope_utils.fused_apply_rotary_pos_emb, which is TE's or None; bias_activation_fusion ->
  mlp.bias_swiglu_impl; cross_entropy_loss_fusion with the 'native' impl -> language_module.
  fused_vocab_parallel_cross_entropy). install_fused_ops() puts ours in those slots, so the Megatron-LM switches
  (--no-rope-fusion, --no-bias-swiglu-fusion, --cross-entropy-loss-fusion) keep their meaning. The slots are per
  process: once installed, any model in the process with those switches on uses our ops.
- the megatron-core extension modules (fused_weight_gradient_mlp_cuda, scaled_*softmax_cuda) are registered by
  ops.install_megatron_extension_modules().
"""

from __future__ import annotations

import torch

_INSTALLED = False


def _rope(t: torch.Tensor, freqs: torch.Tensor, interleaved: bool = False) -> torch.Tensor:
    from megatron_llm import ops

    if interleaved:
        raise ValueError("the fused RoPE implements megatron-core's rotate-half convention, not "
                         "rotary_interleaved; use --no-rope-fusion")
    return ops.rope(t, freqs)


def _bias_swiglu(x: torch.Tensor, bias, fp8_input_store: bool = False, cpu_offload_input: bool = False):
    from megatron_llm import ops

    if fp8_input_store:
        raise ValueError("the fused SwiGLU does not store its input in fp8; use --no-bias-swiglu-fusion")
    return ops.swiglu(x if bias is None else x + bias)


def _vocab_parallel_cross_entropy(logits: torch.Tensor, target: torch.Tensor, tp_group) -> torch.Tensor:
    from megatron_llm import ops

    # The padded vocabulary's rows take part, as in megatron-core's own loss (same model, same numbers).
    return ops.vocab_parallel_cross_entropy(logits, target, tp_group=tp_group)


def install_fused_ops() -> None:
    """Put our RoPE, SwiGLU and cross entropy into megatron-core's fusion slots (idempotent). Must run before a
    TransformerConfig with apply_rope_fusion=True is built (its __post_init__ checks the RoPE slot)."""
    global _INSTALLED
    if _INSTALLED:
        return
    from megatron.core.models.common.embeddings import rope_utils
    from megatron.core.models.common.language_module import language_module
    from megatron.core.transformer import mlp

    from megatron_llm import ops

    ops.install_megatron_extension_modules()
    rope_utils.fused_apply_rotary_pos_emb = _rope
    mlp.bias_swiglu_impl = _bias_swiglu
    language_module.fused_vocab_parallel_cross_entropy = _vocab_parallel_cross_entropy
    _INSTALLED = True


def norm_module():
    from megatron_llm.ops.modules import RMSNorm

    return RMSNorm


def fused_layer_spec():
    """megatron-core's local GPT layer spec with SDPA core attention, our RMSNorm, and the attention's residual add
    fused into the pre-MLP norm."""
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    from megatron_llm.models.fused_residual_layer import FusedResidualTransformerLayer
    from megatron_llm.models.sdpa_attention import SDPACoreAttention
    from megatron_llm.ops.modules import FusedResidualRMSNorm

    spec = get_gpt_layer_local_spec(normalization="RMSNorm")
    spec.module = FusedResidualTransformerLayer
    spec.submodules.input_layernorm = norm_module()
    spec.submodules.pre_mlp_layernorm = FusedResidualRMSNorm
    spec.submodules.self_attention.submodules.core_attention = SDPACoreAttention
    return spec
