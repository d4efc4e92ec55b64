"""Llama-family decoder on megatron-core: GPTModel + a layer spec (RMSNorm, RoPE, SwiGLU, GQA)."""

from __future__ import annotations

from typing import List, Optional

import torch

from megatron_llm.config.training import RunConfig
from megatron_llm.models import impl as impl_mod


def padded_vocab_size(vocab_size: int, tp: int, divisible_by: int = 128) -> int:
    """Megatron pads the vocabulary so every TP shard is a multiple of `divisible_by` rows (GEMM-friendly)."""
    multiple = divisible_by * tp
    return ((vocab_size + multiple - 1) // multiple) * multiple


def transformer_impl(cfg: RunConfig, device: Optional[str] = None) -> str:
    """The --transformer-impl this run builds (resolved for the device when not given)."""
    from megatron_llm.parallel.device import resolve_device

    return impl_mod.resolve_transformer_impl(cfg.impl.transformer_impl, device or resolve_device(cfg.launch.device))


def transformer_config(cfg: RunConfig, device: str, timers=None):
    """megatron-core TransformerConfig for a Llama-family model."""
    from megatron.core.transformer import TransformerConfig

    m, p, o = cfg.model, cfg.parallel, cfg.optim
    impl = transformer_impl(cfg, device)
    fusions, _ = impl_mod.fusion_fields(impl, cfg.impl, device)
    impl_mod.prepare(impl, fusions)
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
        add_qkv_bias=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=m.init_method_std,
        tensor_model_parallel_size=p.tensor_model_parallel_size,
        pipeline_model_parallel_size=p.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=(m.num_layers // (p.pipeline_model_parallel_size * vl)
                                              if vl else None),
        sequence_parallel=p.sequence_parallel,
        # p2p overlap exists for the interleaved schedule; it excludes batched p2p (megatron-core's rule).
        overlap_p2p_comm=bool(p.overlap_p2p_communication) and vl is not None,
        batch_p2p_comm=not (bool(p.overlap_p2p_communication) and vl is not None),
        pipeline_dtype=dtype,
        params_dtype=dtype,
        bf16=o.bf16,
        fp16=o.fp16,
        # Fusions per --transformer-impl and the per-op switches (models/impl.py).
        **fusions,
        **impl_mod.recompute_fields(cfg.impl),
        transformer_impl="transformer_engine" if impl == "transformer_engine" else "local",
        bias_dropout_fusion=False,
        persist_layer_norm=False,
        # Weights are initialised by init_weights() below, identically for any TP/PP layout.
        perform_initialization=False,
        use_cpu_initialization=device == "cpu",
        deallocate_pipeline_outputs=True,
        timers=timers,
    )
    return tc


def block_spec(tc, vp_stage: Optional[int], impl: str = "local"):
    from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build

    n = get_num_layers_to_build(tc, vp_stage=vp_stage)
    return TransformerBlockSubmodules(layer_specs=[impl_mod.layer_spec(impl)] * n,
                                      layer_norm=impl_mod.final_norm(impl))


def build_model_chunks(cfg: RunConfig, tc, vocab_size: int, impl: Optional[str] = None) -> List[torch.nn.Module]:
    """One GPTModel per virtual pipeline stage held by this rank (one chunk without interleaving)."""
    from megatron.core import parallel_state
    from megatron.core.models.gpt import GPTModel

    impl = impl or transformer_impl(cfg)
    vp = tc.virtual_pipeline_model_parallel_size
    chunks = []
    for vp_stage in range(vp or 1):
        stage = vp_stage if vp else None
        pre = parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=stage)
        post = parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=stage)
        model = GPTModel(
            config=tc,
            transformer_layer_spec=block_spec(tc, stage, impl),
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
