"""Weight initialisation that does not depend on the parallel layout.

Each parameter's *full* (unsharded) tensor is drawn from a generator seeded by (seed, global parameter name), and
this rank keeps its tensor-parallel slice. The same --seed therefore gives the same model at TP1/PP1, TP2 x PP2 or
with virtual stages — which is what makes layouts comparable loss for loss, and a run reproducible when it is moved
to a different cluster shape. The distributions are megatron-core's: N(0, std) for weights, N(0, std/sqrt(2L)) for
the two output projections of each layer, ones for norms.
"""

from __future__ import annotations

import math
import re
import zlib
from typing import Dict, Iterator, List, Tuple

import torch

_LAYER_RE = re.compile(r"^decoder\.layers\.(\d+)\.")


def _partition_dims(chunk: torch.nn.Module) -> Dict[int, int]:
    """id(weight) -> the dim it is split along across TP ranks, from the module types: megatron-core only sets
    the ``tensor_model_parallel`` attributes when it initialises weights itself, which we skip."""
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding

    dims: Dict[int, int] = {}
    for module in chunk.modules():
        weight = getattr(module, "weight", None)
        if weight is None:
            continue
        if isinstance(module, (ColumnParallelLinear, VocabParallelEmbedding)):
            dims[id(weight)] = 0
        elif isinstance(module, RowParallelLinear):
            dims[id(weight)] = 1
    return dims


def global_parameter_names(chunk: torch.nn.Module) -> Iterator[Tuple[str, torch.nn.Parameter, int | None]]:
    """(name with the local layer index replaced by the global one, parameter, TP partition dim or None)."""
    layers = getattr(getattr(chunk, "decoder", None), "layers", [])
    offsets: Dict[int, int] = {i: layer.layer_number - 1 for i, layer in enumerate(layers)}
    dims = _partition_dims(chunk)
    for name, param in chunk.named_parameters():
        m = _LAYER_RE.match(name)
        if m:
            name = f"decoder.layers.{offsets[int(m.group(1))]}." + name[m.end():]
        if name == "output_layer.weight" and getattr(param, "shared_embedding", False):
            name = "embedding.word_embeddings.weight"  # tied: the last stage's copy of the embedding
        yield name, param, dims.get(id(param), getattr(param, "tp_partition_dim", None))


def _stacked_parts(name: str, gated: bool) -> int:
    """How many separately sharded tensors a weight stacks: [gate; up] (gated MLP), [q; k; v; u] (TransNormer)."""
    if gated and name.endswith("mlp.linear_fc1.weight"):
        return 2
    return 4 if name.endswith("self_attention.linear_qkvu.weight") else 1


def _full_and_slice(name: str, param: torch.nn.Parameter, dim: int | None, tp_rank: int, tp: int, gated: bool):
    """Full shape and a function that cuts this rank's shard out of a full tensor."""
    if dim is None or tp == 1:
        return tuple(param.shape), lambda full: full
    shape = list(param.shape)
    shape[dim] *= tp
    parts = _stacked_parts(name, gated)
    # megatron-core keeps [gate_shard; up_shard] per rank (and we keep [q_r; k_r; v_r; u_r]): cut each part.
    return tuple(shape), lambda full: torch.cat([p.chunk(tp, dim=dim)[tp_rank] for p in full.chunk(parts, dim=dim)],
                                                dim=dim)


def _seed_for(seed: int, name: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2 ** 62)


VOCAB_WEIGHTS = ("embedding.word_embeddings.weight", "output_layer.weight")


@torch.no_grad()
def init_weights(chunks: List[torch.nn.Module], seed: int, std: float, num_layers: int, gated: bool = True,
                 vocab_size: int | None = None) -> None:
    """`vocab_size`: the real (unpadded) vocabulary. The embedding and output rows beyond it (TP-dependent padding)
    start at zero and, their logits being masked, get no gradient: they stay zero, whatever the TP."""
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel.layers import set_tensor_model_parallel_attributes

    tp = parallel_state.get_tensor_model_parallel_world_size()
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    out_std = std / math.sqrt(2.0 * num_layers)
    for chunk in chunks:
        for name, param, dim in global_parameter_names(chunk):
            # Grad-norm clipping and the optimizers read these to tell TP shards from TP duplicates.
            set_tensor_model_parallel_attributes(param, dim is not None, 0 if dim is None else dim, 1)
            if getattr(param, "keep_module_init", False):  # set by its module, the same at every layout
                continue
            if param.dim() == 1:
                param.fill_(1.0 if name.endswith("weight") else 0.0)  # norm weights; biases
                continue
            full_shape, cut = _full_and_slice(name, param, dim, tp_rank, tp, gated)
            gen = torch.Generator(device=param.device).manual_seed(_seed_for(seed, name))
            sigma = out_std if name.endswith(("linear_proj.weight", "linear_fc2.weight")) else std
            rows = full_shape[0] if vocab_size is None or name not in VOCAB_WEIGHTS else vocab_size
            full = torch.zeros(full_shape, dtype=torch.float32, device=param.device)
            full[:rows].normal_(0.0, sigma, generator=gen)
            param.copy_(cut(full).to(param.dtype))
