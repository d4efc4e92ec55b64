"""Memory per GPU of a layout: parameters, gradients, optimizer state (exact, as megatron-core allocates them)
and activations (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models",
arXiv 2205.05198, section 4, adapted to Llama layers).

Parameters, gradients and optimizer state follow megatron-core 0.16.1's buffers (distributed/param_and_grad_buffer.py):
all parameters of a model chunk live in one contiguous buffer, laid out in reverse registration order; with the
distributed optimizer each parameter starts at a multiple of 64 elements and each bucket ends at a multiple of
lcm(DP, 128), so it splits evenly across data-parallel ranks. The gradient buffer has the same layout (fp32 when
training in bf16/fp16: grad_reduce_in_fp32). The optimizer keeps, for the elements of its own shard (or all of them
without the distributed optimizer), fp32 main weights (bf16/fp16 only; an fp32 model is its own main copy) and
Adam's two moments in fp32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from megatron_llm.config.model import ModelConfig
from megatron_llm.planner.layout import Layout

GiB = 2 ** 30
ACTIVATION_IMPLS = ("fused", "local")
UNFUSED_SCORE_BYTES = 6  # fp32 softmax output + bf16 probabilities per score element (see activation_bytes_per_layer)
LOGITS_BYTES = 10  # per logit at the start of the loss backward: fp32 softmax (4) + its fp32 gradient (4) + bf16 (2)


def padded_vocab(vocab_size: int, tp: int, divisible_by: int = 128) -> int:
    """Megatron-LM's rule (--make-vocab-size-divisible-by x TP), mirrored from the trainer."""
    multiple = divisible_by * tp
    return ((vocab_size + multiple - 1) // multiple) * multiple


def layer_param_numels(m: ModelConfig, tp: int, gated_mlp: bool = True) -> List[int]:
    """Parameters of one transformer layer on one TP rank, in registration order (megatron-core local spec:
    input norm, output projection (Attention.__init__), QKV (SelfAttention.__init__, after super), pre-MLP norm,
    fc1, fc2). The order places the shard boundaries of the distributed optimizer."""
    h, f, d = m.hidden_size, m.ffn_hidden_size, m.head_dim
    q, kv = m.num_attention_heads * d, m.num_query_groups * d
    fc1 = (2 if gated_mlp else 1) * f
    qkv_bias = [(q + 2 * kv) // tp] if getattr(m, "add_qkv_bias", False) else []  # Qwen2
    return [h, h * q // tp, (q + 2 * kv) // tp * h, *qkv_bias, h, fc1 // tp * h, h * f // tp]


def chunk_param_numels(m: ModelConfig, layout: Layout, vocab: int, stage: int, chunk: int,
                       gated_mlp: bool = True) -> List[int]:
    """Parameters of one model chunk (pipeline stage `stage`, virtual chunk `chunk`) on one TP rank, in order."""
    v = layout.virtual_stages(m.num_layers)
    layers = m.num_layers // (layout.pp * v)
    first = stage == 0 and chunk == 0
    last = stage == layout.pp - 1 and chunk == v - 1
    out: List[int] = []
    if first:
        out.append(vocab // layout.tp * m.hidden_size)  # word embeddings (RoPE: no position table)
        if getattr(m, "use_stable_embedding", False):  # Open-Llama: LayerNorm weight + bias after the lookup
            out += [m.hidden_size, m.hidden_size]
    for _ in range(layers):
        out += layer_param_numels(m, layout.tp, gated_mlp)
    if last:
        out.append(m.hidden_size)  # final norm
        if m.untie_embeddings_and_output_weights or not first:
            out.append(vocab // layout.tp * m.hidden_size)  # output layer (a tied copy on the last stage)
    return out


def buffer_buckets(numels: Sequence[int], dp: int, distributed_optimizer: bool,
                   bucket_size: Optional[int]) -> List[Tuple[int, int, List[Tuple[int, int]]]]:
    """megatron-core's buffer layout: [(bucket_start, bucket_end, [(param_start, param_end), ...])], params taken
    in reverse registration order (roughly backprop order). bucket_size None: one bucket."""
    def pad(n: int, d: int) -> int:
        return int(math.ceil(n / d) * d)

    buckets = []
    start = bucket_start = 0
    params: List[Tuple[int, int]] = []
    end = 0
    for n in reversed(list(numels)):
        if distributed_optimizer:
            start = pad(start, 64)
        end = start + n
        params.append((start, end))
        if bucket_size is not None and end - bucket_start >= bucket_size:
            bucket_end = pad(end, math.lcm(dp, 128)) if distributed_optimizer else end
            buckets.append((bucket_start, bucket_end, params))
            bucket_start = start = bucket_end
            params = []
        else:
            start = end
    if params:
        bucket_end = pad(end, math.lcm(dp, 128)) if distributed_optimizer else end
        buckets.append((bucket_start, bucket_end, params))
    return buckets


def optimizer_shard_numel(buckets, dp: int, dp_rank: int, distributed_optimizer: bool) -> int:
    """Elements whose optimizer state this data-parallel rank holds (padding holds none)."""
    total = 0
    for b_start, b_end, params in buckets:
        if distributed_optimizer:
            size = (b_end - b_start) // dp
            lo, hi = b_start + dp_rank * size, b_start + (dp_rank + 1) * size
        else:
            lo, hi = b_start, b_end
        total += sum(max(0, min(hi, pe) - max(lo, ps)) for ps, pe in params)
    return total


@dataclass(frozen=True)
class StateBytes:
    params: int
    grads: int
    optimizer: int

    @property
    def total(self) -> int:
        return self.params + self.grads + self.optimizer


def state_bytes(m: ModelConfig, layout: Layout, vocab: int, stage: int, dp_rank: int = 0, dtype: str = "bf16",
                bucket_size: Optional[int] = None, gated_mlp: bool = True) -> StateBytes:
    """Bytes of parameters, gradients and optimizer state one GPU of pipeline stage `stage` allocates.
    bucket_size: elements per DDP bucket of the first chunk (None: one bucket; later chunks always use one)."""
    low = dtype in ("bf16", "fp16")
    pbytes, gbytes = (2, 4) if low else (4, 4)
    obytes = 12 if low else 8  # (fp32 main copy +) Adam exp_avg + exp_avg_sq
    p = g = o = 0
    for chunk in range(layout.virtual_stages(m.num_layers)):
        numels = chunk_param_numels(m, layout, vocab, stage, chunk, gated_mlp)
        buckets = buffer_buckets(numels, layout.dp, layout.distributed_optimizer,
                                 bucket_size if chunk == 0 else None)
        numel = buckets[-1][1]
        # Without the distributed optimizer megatron-core keeps the parameters themselves (no param buffer).
        p += (numel if layout.distributed_optimizer else sum(numels)) * pbytes
        g += numel * gbytes
        o += optimizer_shard_numel(buckets, layout.dp, dp_rank, layout.distributed_optimizer) * obytes
    return StateBytes(p, g, o)


def activation_bytes_per_layer(m: ModelConfig, layout: Layout, seq: int, gated_mlp: bool = True,
                               flash_attention: bool = True, impl: str = "fused") -> float:
    """Activations one layer keeps for the backward pass, per micro-batch, on one GPU (16-bit activations).

    Korthikanti et al.'s count for a GPT layer is s b h (34 + 5 a s / h) bytes; here the same bookkeeping for the
    trainer's Llama layers (no dropout), per implementation (--transformer-impl):
      fused (ours: fused RMSNorm, SDPA with native GQA, fused SwiGLU): each norm keeps its 16-bit input (2sbh),
        QKV input 2sbh, Q/K/V 2sbh (1 + 2g/a), SDPA output 2sbh and the projection's input 2sbh, MLP input 2sbh,
        SwiGLU input 2 x 2sbf and fc2 input 2sbf; flash attention keeps fp32 log-sum-exp (4asb);
      local (megatron-core's local modules, no apex): the fp32 RMSNorm keeps x and y in fp32 (2 x 4sbh each),
        K/V are expanded to all heads (3 x 2sbh), the unfused GLU keeps gate, up and silu(gate) (3 x 2sbf) besides
        fc2's input (2sbf), and materialised scores cost UNFUSED_SCORE_BYTES each (fp32 softmax output 4 +
        bf16 probabilities 2; Korthikanti's 5 = 2 + 1 dropout mask + 2 dropout output is for apex's fused kernel
        with attention dropout).
    Tensor parallelism splits everything but the norm and block inputs, which sequence parallelism splits too.
    Selective recompute drops the attention core's term; full recompute keeps only the layer input (2sbh, split
    by SP).
    """
    if impl not in ACTIVATION_IMPLS:
        raise ValueError(f"impl must be one of {ACTIVATION_IMPLS}, got {impl!r}")
    s, b, h, f = seq, layout.micro_batch_size, m.hidden_size, m.ffn_hidden_size
    t = layout.tp
    a = m.num_attention_heads
    gq = m.num_query_groups / a
    sbh, sbf = s * b * h, s * b * f
    if layout.recompute == "full":
        return 2 * sbh / (t if layout.sequence_parallel else 1)
    gate = 2 if gated_mlp else 1
    if impl == "local":
        replicated = 2 * 8 * sbh + 2 * sbh + 2 * sbh  # two fp32 norms (x, y), QKV input, MLP input
        split = 3 * 2 * sbh + 2 * sbh + (8 if gated_mlp else 4) * sbf
    else:
        replicated = 2 * 2 * sbh + 2 * sbh + 2 * sbh  # two norm inputs, QKV input, MLP input
        split = 2 * sbh * (1 + 2 * gq) + 2 * sbh + 2 * sbh + 2 * gate * sbf + 2 * sbf
    if layout.recompute != "selective":
        split += 4 * a * s * b if flash_attention else UNFUSED_SCORE_BYTES * a * s * s * b
    if layout.sequence_parallel:
        return (replicated + split) / t
    return replicated + split / t


def activation_bytes(m: ModelConfig, layout: Layout, seq: int, vocab: int, num_microbatches: int,
                     gated_mlp: bool = True, flash_attention: bool = True, impl: str = "fused") -> float:
    """Peak activation memory on the first pipeline stage (the one holding the most micro-batches in flight):
    1F1B keeps min(PP, micro-batches) micro-batches of its L/PP layers; the interleaved schedule keeps
    (1 + (PP-1)/(PP v)) times that (Korthikanti et al. eq. 5 / Narayanan et al. 2021 section 2.2). Plus the
    logits on the last stage: LOGITS_BYTES x s b V/t at the start of the loss backward (megatron-core's
    vocab-parallel cross entropy keeps the fp32 softmax; its fp32 gradient and the bf16 copy for the output layer
    follow); counted when PP = 1 (with PP > 1 the last stage holds fewer micro-batches)."""
    v = layout.virtual_stages(m.num_layers)
    layers_per_stage = m.num_layers / layout.pp
    in_flight = min(layout.pp, num_microbatches)
    factor = 1 + (layout.pp - 1) / (layout.pp * v) if v > 1 else 1
    per_layer = activation_bytes_per_layer(m, layout, seq, gated_mlp, flash_attention, impl)
    acts = per_layer * layers_per_stage * in_flight * factor
    # Full recompute re-materialises one layer's activations during its backward.
    if layout.recompute == "full":
        acts += activation_bytes_per_layer(m, _no_recompute(layout), seq, gated_mlp, flash_attention, impl)
    logits = LOGITS_BYTES * seq * layout.micro_batch_size * vocab / layout.tp if layout.pp == 1 else 0
    embedding_out = 2 * seq * layout.micro_batch_size * m.hidden_size * in_flight
    return acts + logits + embedding_out


def _no_recompute(layout: Layout) -> Layout:
    from dataclasses import replace

    return replace(layout, recompute="none")


@dataclass(frozen=True)
class MemoryEstimate:
    params_gb: float
    grads_gb: float
    optimizer_gb: float
    activations_gb: float

    @property
    def total_gb(self) -> float:
        return self.params_gb + self.grads_gb + self.optimizer_gb + self.activations_gb


def estimate_memory(m: ModelConfig, layout: Layout, seq: int, vocab: int, num_microbatches: int,
                    dtype: str = "bf16", bucket_size: Optional[int] = None, gated_mlp: bool = True,
                    flash_attention: bool = True, impl: str = "fused") -> MemoryEstimate:
    """The most loaded GPU: the larger of the first stage (embeddings + most activations) and the last (output
    layer + logits)."""
    first = state_bytes(m, layout, vocab, 0, 0, dtype, bucket_size, gated_mlp)
    last = state_bytes(m, layout, vocab, layout.pp - 1, 0, dtype, bucket_size, gated_mlp)
    st = first if first.total >= last.total else last
    acts = activation_bytes(m, layout, seq, vocab, num_microbatches, gated_mlp, flash_attention, impl)
    return MemoryEstimate(st.params / GiB, st.grads / GiB, st.optimizer / GiB, acts / GiB)
