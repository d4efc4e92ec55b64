"""Full logits of a batch from a model split over any TP x PP layout (megatron-core's forward-only schedule)."""

from __future__ import annotations

import os
from typing import List, Optional

import torch


@torch.no_grad()
def forward_logits(chunks: List[torch.nn.Module], tokens: torch.Tensor) -> Optional[torch.Tensor]:
    """[batch, seq] token ids -> [batch, seq, padded vocab] logits (gathered over TP) on the last pipeline stage;
    None on the other stages. Every rank of the model-parallel group must call it with the same tokens."""
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    b, s = tokens.shape
    positions = torch.arange(s, device=tokens.device)[None].expand(b, s)

    def step(data_iterator, model):
        out = model(tokens, positions, None, runtime_gather_output=True)
        return out, lambda output, non_loss_data=False: output

    fb = get_forward_backward_func()
    data = [iter([None]) for _ in chunks] if len(chunks) > 1 else iter([None])
    stored = fb(forward_step_func=step, data_iterator=data, model=chunks if len(chunks) > 1 else chunks[0],
                num_microbatches=1, seq_length=s, micro_batch_size=b, forward_only=True,
                collect_non_loss_data=True)
    if not parallel_state.is_pipeline_last_stage(ignore_virtual=True):
        return None
    return stored[-1]


def checkpoint_logits(root: str, tokens: torch.Tensor) -> torch.Tensor:
    """[batch, seq] -> [batch, seq, vocab] fp32 logits of a checkpoint, on this one process (TP1/PP1)."""
    from megatron_llm.inference import session

    info = session.checkpoint_info(root)
    cfg = session.run_config(info.model, dtype=info.dtype, load=os.path.dirname(info.path))
    with session.single_process(cfg):
        chunks = session.build_model(cfg, info.vocab_rows, "cpu", info.vocab_size)
        session.load_weights(cfg, chunks)
        return forward_logits(chunks, tokens)[..., : info.vocab_size].float()
