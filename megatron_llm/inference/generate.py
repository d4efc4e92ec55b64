"""Autoregressive generation with megatron-core's KV cache (StaticInferenceContext): the prompt is run once, then
one token per step attends to the cached keys and values."""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from megatron_llm.inference.sampling import Sampling, next_token


@torch.no_grad()
def generate(model: torch.nn.Module, prompt: Sequence[int], max_new_tokens: int, vocab_size: int,
             sampling: Sampling = Sampling(), eos_id: Optional[int] = None) -> List[int]:
    """New token ids after `prompt` (stops early at `eos_id`). `vocab_size`: logits past it are vocabulary
    padding and never chosen."""
    from megatron.core.inference.contexts import StaticInferenceContext

    if not prompt:
        raise ValueError("the prompt is empty (no tokens)")
    device = next(model.parameters()).device
    ctx = StaticInferenceContext(1, len(prompt) + max_new_tokens)
    gen = torch.Generator().manual_seed(sampling.seed)
    tokens = torch.tensor([list(prompt)], dtype=torch.long, device=device)
    positions = torch.arange(len(prompt), device=device)[None]
    out: List[int] = []
    for _ in range(max_new_tokens):
        logits = model(tokens, positions, None, inference_context=ctx, runtime_gather_output=True)
        ctx.sequence_len_offset += tokens.shape[1]
        tok = next_token(logits[:, -1, :vocab_size], sampling, gen)
        out.append(int(tok[0]))
        if eos_id is not None and out[-1] == eos_id:
            break
        tokens = tok.view(1, 1)
        positions = torch.tensor([[ctx.sequence_len_offset]], device=device)
    return out
