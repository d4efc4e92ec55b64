"""Stable embedding (Bloom's, used by the Open-Llama model type): a LayerNorm on the token embeddings before the
first layer. Attached to megatron-core's LanguageModelEmbedding as a child module, so that its weights are
checkpointed as `embedding.stable_norm.{weight,bias}` (replicated over TP) by megatron-core's default rules."""

from __future__ import annotations

import torch

EPS = 1e-5  # torch.nn.LayerNorm's default, which Open-Llama uses


def attach(embedding: torch.nn.Module, hidden_size: int, dtype: torch.dtype, sequence_parallel: bool) -> None:
    norm = torch.nn.LayerNorm(hidden_size, eps=EPS, dtype=dtype)
    for p in norm.parameters():
        # with sequence parallelism each TP rank normalises a slice of the tokens: grads are all-reduced over TP
        setattr(p, "sequence_parallel", sequence_parallel)
    embedding.stable_norm = norm
    plain = embedding.forward

    def forward(input_ids, position_ids, tokentype_ids=None):
        # embedding dropout is 0 in our configs, so normalising after it equals Open-Llama's norm-then-dropout
        return norm(plain(input_ids, position_ids, tokentype_ids))

    embedding.forward = forward
