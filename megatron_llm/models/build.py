"""One entry point for the training code: the model family named by --architecture (llama | transnormer)."""

from __future__ import annotations

from typing import List, Optional

import torch

from megatron_llm.config.training import RunConfig


def transformer_config(cfg: RunConfig, device: str, timers=None):
    if cfg.model.architecture == "transnormer":
        from megatron_llm.models.transnormer import transformer_config as build
    else:
        from megatron_llm.models.llama import transformer_config as build
    return build(cfg, device, timers=timers)


def build_model_chunks(cfg: RunConfig, tc, vocab_size: int, real_vocab_size: Optional[int] = None
                       ) -> List[torch.nn.Module]:
    """`vocab_size`: the padded vocabulary (embedding rows); `real_vocab_size`: the tokenizer's."""
    if cfg.model.architecture == "transnormer":
        from megatron_llm.models.transnormer import build_model_chunks as build
    else:
        from megatron_llm.models.llama import build_model_chunks as build
    return build(cfg, tc, vocab_size, real_vocab_size=real_vocab_size)


def gpt_model_chunks(cfg: RunConfig, tc, vocab_size: int, layer_spec, final_norm, position_embedding_type: str,
                     real_vocab_size: Optional[int] = None, rotary_base: Optional[int] = None
                     ) -> List[torch.nn.Module]:
    """GPTModels (padded vocabulary rows masked out of the softmax, models/llama.py), one per virtual pipeline
    stage of this rank, from one layer spec for every layer."""
    from megatron.core import parallel_state
    from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build

    from megatron_llm.models.llama import _llama_model_class

    GPTModel = _llama_model_class()

    vp = tc.virtual_pipeline_model_parallel_size
    chunks = []
    for vp_stage in range(vp or 1):
        stage = vp_stage if vp else None
        n = get_num_layers_to_build(tc, vp_stage=stage)
        extra = {"rotary_base": rotary_base} if rotary_base is not None else {}
        chunks.append(GPTModel(
            config=tc,
            transformer_layer_spec=TransformerBlockSubmodules(layer_specs=[layer_spec] * n, layer_norm=final_norm),
            vocab_size=vocab_size,
            max_sequence_length=cfg.model.max_position_embeddings,
            pre_process=parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=stage),
            post_process=parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=stage),
            share_embeddings_and_output_weights=not cfg.model.untie_embeddings_and_output_weights,
            position_embedding_type=position_embedding_type,
            vp_stage=stage,
            real_vocab_size=real_vocab_size or vocab_size,
            **extra,
        ))
    return chunks
