"""Llama-family decoder on megatron-core: GPTModel + a layer spec (RMSNorm, RoPE, SwiGLU, GQA)."""

from __future__ import annotations

from typing import List, Optional

import torch

from megatron_llm.config.training import RunConfig
from megatron_llm.models.norms import RMSNorm


def padded_vocab_size(vocab_size: int, tp: int, divisible_by: int = 128) -> int:
    """Megatron pads the vocabulary so every TP shard is a multiple of `divisible_by` rows (GEMM-friendly)."""
    multiple = divisible_by * tp
    return ((vocab_size + multiple - 1) // multiple) * multiple


def transformer_config(cfg: RunConfig, device: str, timers=None):
    """megatron-core TransformerConfig for a Llama-family model."""
    from megatron.core.transformer import TransformerConfig

    m, p, o = cfg.model, cfg.parallel, cfg.optim
    dtype = torch.bfloat16 if o.bf16 else torch.float16 if o.fp16 else torch.float32
    vl = p.num_layers_per_virtual_pipeline_stage
    tc = TransformerConfig(
        num_layers=m.num_layers,
        hidden_size=m.hidden_size,
        num_attention_heads=m.num_attention_heads,
        num_query_groups=m.num_query_groups,
        ffn_hidden_size=m.ffn_hidden_size,
        kv_channels=m.kv_channels,
        normalization="RMSNorm",
        layernorm_epsilon=m.norm_epsilon,
        gated_linear_unit=True,
        activation_func=torch.nn.functional.silu,
        add_bias_linear=False,
        add_qkv_bias=m.add_qkv_bias,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=m.init_method_std,
        tensor_model_parallel_size=p.tensor_model_parallel_size,
        pipeline_model_parallel_size=p.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=(m.num_layers // (p.pipeline_model_parallel_size * vl)
                                              if vl else None),
        sequence_parallel=p.sequence_parallel,
        pipeline_dtype=dtype,
        params_dtype=dtype,
        bf16=o.bf16,
        fp16=o.fp16,
        # megatron-core's local attention asks apex for the fused softmax; we do not require apex.
        masked_softmax_fusion=False,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        persist_layer_norm=False,
        # Weights are initialised by init_weights() below, identically for any TP/PP layout.
        perform_initialization=False,
        use_cpu_initialization=device == "cpu",
        deallocate_pipeline_outputs=True,
        timers=timers,
    )
    return tc


def layer_spec():
    """megatron-core's local spec with our RMSNorm (it supports sequence parallelism, torch's wrapper does not)."""
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    spec = get_gpt_layer_local_spec(normalization="RMSNorm")
    spec.submodules.input_layernorm = RMSNorm
    spec.submodules.pre_mlp_layernorm = RMSNorm
    return spec


def block_spec(tc, vp_stage: Optional[int]):
    from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build

    n = get_num_layers_to_build(tc, vp_stage=vp_stage)
    return TransformerBlockSubmodules(layer_specs=[layer_spec()] * n, layer_norm=RMSNorm)


def build_model_chunks(cfg: RunConfig, tc, vocab_size: int) -> List[torch.nn.Module]:
    """One GPTModel per virtual pipeline stage held by this rank (one chunk without interleaving)."""
    from megatron.core import parallel_state
    from megatron.core.models.gpt import GPTModel

    vp = tc.virtual_pipeline_model_parallel_size
    chunks = []
    for vp_stage in range(vp or 1):
        stage = vp_stage if vp else None
        pre = parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=stage)
        post = parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=stage)
        model = GPTModel(
            config=tc,
            transformer_layer_spec=block_spec(tc, stage),
            vocab_size=vocab_size,
            max_sequence_length=cfg.model.max_position_embeddings,
            pre_process=pre,
            post_process=post,
            share_embeddings_and_output_weights=not cfg.model.untie_embeddings_and_output_weights,
            position_embedding_type="rope",
            rotary_base=int(cfg.model.rotary_base),
            vp_stage=stage,
        )
        chunks.append(model)
    return chunks
