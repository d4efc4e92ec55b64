"""TransNormerLLM (arXiv 2307.14995) on megatron-core: GPTModel whose layers mix tokens by decayed linear attention.

A layer, as in the released modeling code (OpenNLPLab/TransNormerLLM-*):
    x = x + TokenMixer(SRMSNorm(x))          q, k, v, u = x W_qkvu;  q, k = silu(q), silu(k);  LRPE on q, k (some
                                             layers);  o = LinearAttention(q, k, v; per-head decay);
                                             out = (SRMSNorm(o) * u) W_o
    x = x + SGLU(SRMSNorm(x))                (x W_1 * x W_2) W_3, no activation
with SRMSNorm(x) = x / sqrt(mean(x^2) + eps) (no weights), embeddings scaled by sqrt(hidden), no other position
encoding, the output layer tied to the embeddings (the released checkpoints store one matrix).

megatron-core pieces: the token mixer takes the self-attention slot of megatron-core's local layer spec, with a
ColumnParallelLinear for q|k|v|u (each TP rank holds its heads' rows of all four) and a RowParallelLinear for the
output, so heads split across tensor-parallel ranks and sequence parallelism works as for attention (the linear
layers gather / reduce-scatter the sequence). The norm inside the mixer spans all heads: its mean square is
all-reduced over the TP group. The SGLU is megatron-core's gated MLP with an identity activation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Union

import torch

from megatron_llm.config.model import LIGHTNING_BLOCK_SIZE
from megatron_llm.config.training import RunConfig
from megatron_llm.ops.linear_attention import (layer_slopes, linear_attention, linear_attention_lightning,
                                               linear_attention_recurrent)

SRMS_EPS = 1e-6  # the released models' SimpleRMSNorm default (the presets' --norm-epsilon)


def identity(x: torch.Tensor) -> torch.Tensor:
    """The simple GLU's 'activation' (none): megatron-core's gated MLP computes identity(x W_1) * (x W_2)."""
    return x


class SRMSNorm(torch.nn.Module):
    """Simple RMSNorm: x / sqrt(mean(x^2) + eps), in fp32, no learnable weight."""

    def __init__(self, config=None, hidden_size: int = 0, eps: float = SRMS_EPS, **_unused):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


def _tp_srms_norm(x: torch.Tensor, eps: float, full_width: int, tp_group) -> torch.Tensor:
    """SRMSNorm over channels that are split across TP ranks: the sum of squares is all-reduced (with its
    gradient all-reduced too, which torch.distributed.nn does)."""
    x32 = x.float()
    sumsq = x32.pow(2).sum(-1, keepdim=True)
    if tp_group is not None and torch.distributed.get_world_size(tp_group) > 1:
        from torch.distributed.nn.functional import all_reduce

        sumsq = all_reduce(sumsq, group=tp_group)
    return (x32 * torch.rsqrt(sumsq / full_width + eps)).to(x.dtype)


def lrpe_theta(num_heads: int, head_dim: int) -> torch.Tensor:
    """LRPE angles [heads, 1, head_dim]: 10000^(-2 c / D) over the D = heads x head_dim channels (public code)."""
    d = num_heads * head_dim
    return (10000.0 ** (-2.0 / d * torch.arange(d, dtype=torch.float64))).reshape(num_heads, 1, head_dim)


def apply_lrpe(x: torch.Tensor, theta: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """[b, h, n, d] -> [b, h, n, 2d]: [x cos(theta t), x sin(theta t)] at positions t = offset..offset+n-1, so that
    q_i . k_j sums q k cos(theta (i - j)): a relative position, and still a dot product linear attention can use."""
    n = x.shape[-2]
    pos = torch.arange(offset, offset + n, device=x.device, dtype=torch.float32).view(1, -1, 1)
    angle = theta.float() * pos
    x32 = x.float()
    return torch.cat([x32 * torch.cos(angle), x32 * torch.sin(angle)], dim=-1).to(x.dtype)


def _chunked_sharded_factory(original, sharded_offsets, chunks: int):
    """Checkpoint a TP-sharded weight whose local rows are `chunks` pieces of `chunks` separate global tensors
    ([q_r; k_r; v_r; u_r]): each piece is saved at its place in the global [q; k; v; u], so a checkpoint does not
    depend on the TP degree it was written with (megatron-core does the same for the gated MLP's two halves)."""
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

    axis = len(sharded_offsets)  # TP shards dim 0 of the weight, after any prepended (PP) axes
    rank_offset = original.global_offset[axis] // original.local_shape[0]
    frags = original.axis_fragmentations[axis]

    @torch.no_grad()
    def build(key, t, replica_id, flattened_range):
        return [ShardedTensor.from_rank_offsets(key, piece, *sharded_offsets,
                                                (axis, i * frags + rank_offset, frags * chunks),
                                                replica_id=replica_id, prepend_axis_num=axis)
                for i, piece in enumerate(torch.chunk(t, chunks, dim=0))]

    def merge(pieces):
        with torch.no_grad():
            return torch.cat(pieces)

    return ShardedTensorFactory(original.key, original.data, build, merge, original.replica_id,
                                flattened_range=original.flattened_range)


@dataclass
class TokenMixerSubmodules:
    linear_qkvu: Union[type, object] = None
    linear_proj: Union[type, object] = None


class TokenMixer(torch.nn.Module):
    """TransNormerLLM's NormLinearAttention in the self-attention slot of a megatron-core TransformerLayer.
    Input and output [s, b, h] (s / TP under sequence parallelism); returns (output, bias=None)."""

    def __init__(self, config, submodules: TokenMixerSubmodules, layer_number: int,
                 lrpe_layers: Sequence[int] = (0,), block_size: int = LIGHTNING_BLOCK_SIZE, **_unused):
        super().__init__()
        from megatron.core import parallel_state
        from megatron.core.transformer.spec_utils import build_module

        self.config = config
        tp = parallel_state.get_tensor_model_parallel_world_size()
        rank = parallel_state.get_tensor_model_parallel_rank()
        heads, d = config.num_attention_heads, config.kv_channels
        self.local_heads, self.head_dim, self.width = heads // tp, d, heads * d
        self.block_size = block_size
        self.tp_group = parallel_state.get_tensor_model_parallel_group() if tp > 1 else None
        self.linear_qkvu = build_module(submodules.linear_qkvu, config.hidden_size, 4 * self.width, config=config,
                                        init_method=config.init_method, gather_output=False, bias=False,
                                        skip_bias_add=False, is_expert=False, tp_comm_buffer_name="qkv")
        self.linear_proj = build_module(submodules.linear_proj, self.width, config.hidden_size, config=config,
                                        init_method=config.output_layer_init_method, bias=False,
                                        input_is_parallel=True, skip_bias_add=True, is_expert=False,
                                        tp_comm_buffer_name="proj")
        index = self.layer_index = layer_number - 1  # global, 0-based
        local = slice(rank * self.local_heads, (rank + 1) * self.local_heads)
        self.register_buffer("slopes", layer_slopes(heads, index, config.num_layers)[local].float(), persistent=False)
        self.use_lrpe = index in set(lrpe_layers)
        if self.use_lrpe:
            theta = lrpe_theta(heads, d)[local].to(config.params_dtype)
            # Trained, as in the public TransNormerLLM code (its Lrpe.theta is an nn.Parameter). Initially a
            # deterministic function of the shape, computed whole and sliced: init_weights keeps it as it is.
            self.theta = torch.nn.Parameter(theta)
            self.theta.keep_module_init = True
            self.theta.tp_partition_dim = 0

    def forward(self, hidden_states, attention_mask=None, inference_context=None, **_unused):
        qkvu, _ = self.linear_qkvu(hidden_states)  # [s, b, 4 x local width]
        s, b = qkvu.shape[:2]
        q, k, v, u = qkvu.chunk(4, dim=-1)

        def by_head(t):
            return t.reshape(s, b, self.local_heads, self.head_dim).permute(1, 2, 0, 3)  # [b, h, s, d]

        q, k, v = torch.nn.functional.silu(by_head(q)), torch.nn.functional.silu(by_head(k)), by_head(v)
        if inference_context is None:
            if self.use_lrpe:
                q, k = apply_lrpe(q, self.theta), apply_lrpe(k, self.theta)
            o = linear_attention(q, k, v, self.slopes, "lightning", self.block_size)
        else:
            o = self._decode(q, k, v, inference_context)
        o = o.permute(2, 0, 1, 3).reshape(s, b, self.local_heads * self.head_dim)
        o = _tp_srms_norm(o, self.config.layernorm_epsilon, self.width, self.tp_group) * u
        return self.linear_proj(o)

    def _decode(self, q, k, v, ctx):
        """Generation: the prompt block-wise, then each new token through the recurrent form, carrying this layer's
        [d, e] state in megatron-core's inference context (what a KV cache is for softmax attention)."""
        key = f"transnormer_state_{self.layer_index}"
        offset = ctx.sequence_len_offset
        state = ctx.key_value_memory_dict.get(key) if offset else None
        if self.use_lrpe:
            q, k = apply_lrpe(q, self.theta, offset), apply_lrpe(k, self.theta, offset)
        if q.shape[2] == 1 and state is not None:
            o, state = linear_attention_recurrent(q, k, v, self.slopes, state=state)
        else:
            o, state = linear_attention_lightning(q, k, v, self.slopes, self.block_size, state=state,
                                                  return_state=True)
        ctx.key_value_memory_dict[key] = state
        return o

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata: Optional[dict] = None):
        from megatron.core.transformer.utils import make_sharded_tensors_for_checkpoint

        out = {}
        out.update(self.linear_qkvu.sharded_state_dict(f"{prefix}linear_qkvu.", sharded_offsets, metadata))
        key = f"{prefix}linear_qkvu.weight"
        out[key] = _chunked_sharded_factory(out[key], sharded_offsets, 4)
        out.update(self.linear_proj.sharded_state_dict(f"{prefix}linear_proj.", sharded_offsets, metadata))
        if self.use_lrpe:
            # Only some layers have LRPE, so theta cannot be one tensor stacked over the layer axis (the first of
            # sharded_offsets when megatron-core stacks layers): one key per layer instead.
            theta = make_sharded_tensors_for_checkpoint({"theta": self.theta}, prefix, {"theta": 0},
                                                        sharded_offsets[1:])[f"{prefix}theta"]
            theta.key = f"{prefix}theta_of_layer_{self.layer_index}"
            out[f"{prefix}theta"] = theta
        return out


def transformer_config(cfg: RunConfig, device: str, timers=None):
    """The Llama TransformerConfig with TransNormerLLM's differences: simple GLU (no activation)."""
    from megatron_llm.models.llama import transformer_config as llama_config

    tc = llama_config(cfg, device, timers)
    tc.activation_func = identity
    tc.bias_activation_fusion = False  # megatron-core fuses only SwiGLU / GeGLU; the simple GLU has no activation
    return tc


def layer_spec(cfg: RunConfig):
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
    from megatron.core.transformer.spec_utils import ModuleSpec

    spec = get_gpt_layer_local_spec()
    spec.submodules.input_layernorm = SRMSNorm
    spec.submodules.pre_mlp_layernorm = SRMSNorm
    spec.submodules.self_attention = ModuleSpec(
        module=TokenMixer, params={"lrpe_layers": tuple(cfg.model.lrpe_layers or ())},
        submodules=TokenMixerSubmodules(linear_qkvu=ColumnParallelLinear, linear_proj=RowParallelLinear))
    return spec


def _scale_embeddings(scale: float):
    def hook(_module, _inputs, output):
        return output * scale
    return hook


def build_model_chunks(cfg: RunConfig, tc, vocab_size: int, real_vocab_size: Optional[int] = None
                       ) -> List[torch.nn.Module]:
    """One GPTModel per virtual pipeline stage held by this rank."""
    from megatron_llm.models.build import gpt_model_chunks

    chunks = gpt_model_chunks(cfg, tc, vocab_size, layer_spec(cfg), SRMSNorm, position_embedding_type="none",
                              real_vocab_size=real_vocab_size)
    for chunk in chunks:
        if getattr(chunk, "pre_process", False):
            chunk.embedding.register_forward_hook(_scale_embeddings(math.sqrt(cfg.model.hidden_size)))
    return chunks
