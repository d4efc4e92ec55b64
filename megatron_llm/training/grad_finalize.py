"""The schedules' finalize_model_grads hook: megatron-core's, with the per-token division kept on the device.

With calculate_per_token_loss (models/llama.py) megatron-core divides the gradients by the global batch's token
count behind `if num_tokens > 0:` once per model chunk: a host read of a device tensor, so one more synchronisation
every step besides the gradient-norm read (two more with interleaved chunks). Here megatron-core reduces the
gradients (DP, sequence-parallel norms, tied embeddings) and the count is gathered as it gathers it, then the
division picks 1/count or 1 on the device: the same factor megatron-core applies, without the branch.
"""

from __future__ import annotations

from typing import List, Optional

import torch
import torch.distributed as dist


def finalize_model_grads(model: List[torch.nn.Module], num_tokens: Optional[torch.Tensor] = None,
                         pg_collection=None, force_all_reduce: Optional[bool] = False) -> None:
    from megatron.core import parallel_state
    from megatron.core.distributed import finalize_model_grads as reduce_model_grads

    reduce_model_grads(model, None, pg_collection=pg_collection, force_all_reduce=force_all_reduce)
    if num_tokens is None:
        return
    if pg_collection is not None:
        pp_group, dp_cp_group = pg_collection.pp, pg_collection.dp_cp
    else:
        pp_group = parallel_state.get_pipeline_model_parallel_group()
        dp_cp_group = parallel_state.get_data_parallel_group(with_context_parallel=True)
    # only the last pipeline stage counted tokens
    dist.broadcast(num_tokens, src=dist.get_process_group_ranks(pp_group)[-1], group=pp_group)
    dist.all_reduce(num_tokens, group=dp_cp_group)
    # 1/0 is inf, but where() takes the 1 then: no tokens, gradients left as they are (megatron-core skips them)
    scaling = torch.where(num_tokens > 0, 1.0 / num_tokens, 1.0)
    for chunk in model:
        chunk.scale_gradients(scaling)
