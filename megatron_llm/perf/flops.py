"""FLOPs of a Llama-family decoder step: model FLOPs (for MFU) and hardware FLOPs (for HFU).

Convention (the Megatron-LM paper's, Narayanan et al. 2021, "Efficient Large-Scale Language Model Training on GPU
Clusters Using Megatron-LM", section 5.1): a matmul of an (m x k) by a (k x n) matrix costs 2mkn FLOPs; only
matmuls are counted (norms, softmax, rotary, activations and the optimizer are a few percent and are left out);
the backward pass costs twice the forward (one matmul for the input gradient, one for the weight gradient).

Per token and layer, forward, with h = hidden size, q = heads x head_dim, kv = query_groups x head_dim,
f = FFN hidden size, s = sequence length:

    QKV projection              2 h (q + 2 kv)      GQA: K and V have kv = groups x head_dim columns, not q
    attention scores  Q K^T     2 s q               every query against all s keys (full s x s counted)
    weighted values   P V       2 s q
    output projection           2 q h
    MLP, SwiGLU (gated)         3 x 2 h f           gate, up and down projections
    MLP, GELU (GPT-3)           2 x 2 h f           up and down projections

then, once per token, the output layer (logits) 2 h V.  The input embedding is a table lookup (no FLOPs), so
untied embeddings add parameters but no FLOPs: the logits matmul is counted once whether or not its weight is
shared with the input embedding.  Hence model FLOPs = 6 x (matmul parameters) + 12 L s q per trained token, which
the unit tests check against ModelConfig.num_parameters.

Attention: "full" counts the whole s x s score matrix (the Megatron-LM paper; DESIGN.md section 4; the published
MFU tables), "causal" halves the two attention matmuls (what a causal kernel actually needs; Megatron-LM's own
logging since core 0.15).  Reports say which one they used.

TransNormerLLM (--architecture transnormer) replaces the two attention matmuls by lightning attention's, per
token, head (H heads, head dim d; dk = 2d in LRPE layers, whose queries and keys are [x cos, x sin]) and block of
B = min(LIGHTNING_BLOCK_SIZE, s) tokens, forward:
    intra-block scores  Q_t K_t^T       2 B dk          each query against the B keys of its block (whole block)
    intra-block values  P V_t           2 B d
    inter-block         Q_t S           2 dk d          the query reads the [dk, d] state of earlier blocks
    state update        K_t^T V_t       2 dk d          the token's share of the next block's state
("causal" halves the two intra-block terms); its projections are q, k, v, u (2 h 4q) and the output (2 q h), its
MLP the simple GLU (3 x 2 h f). The cost is linear in s: 4 H dk d + 2 H B (dk + d) per token, whatever s is.

Model FLOPs vs hardware FLOPs (Chowdhery et al. 2022, PaLM, appendix B): MFU divides the FLOPs the model *needs*
(3 x forward) by time; HFU divides the FLOPs the hardware *executes*, which adds activation recomputation:
  recompute "none"       3 x forward
  recompute "selective"  + one more forward of the attention core (scores, softmax, weighted values) in every layer
                           (Korthikanti et al. 2022, megatron-core's recompute_granularity="selective")
  recompute "full"       + one more forward of every recomputed transformer layer (not the logits, which are
                           outside the checkpointed layers); recompute_num_layers limits it to that many layers
GPT-3 175B with full recompute gives Narayanan et al.'s 96 B s l h^2 (1 + s/6h + V/16lh) exactly (tested).
Hardware FLOPs should use the vocabulary as padded for the model (those logits are computed too); model FLOPs use
the tokenizer's vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from megatron_llm.config.model import LIGHTNING_BLOCK_SIZE, ModelConfig

RECOMPUTE_CHOICES = ("none", "selective", "full")
ATTENTION_CHOICES = ("full", "causal")


@dataclass(frozen=True)
class LayerFlops:
    """Forward FLOPs of one transformer layer for one token, by matmul."""

    qkv: float
    attention_scores: float
    attention_values: float
    attention_output: float
    mlp: float

    @property
    def attention_core(self) -> float:
        return self.attention_scores + self.attention_values

    @property
    def total(self) -> float:
        return self.qkv + self.attention_core + self.attention_output + self.mlp


def _linear_attention_layer_flops(model: ModelConfig, seq_length: int, attention: str, layer: int) -> LayerFlops:
    h, f, d = model.hidden_size, model.ffn_hidden_size, model.head_dim
    heads = model.num_attention_heads
    q = heads * d
    dk = 2 * d if layer in set(model.lrpe_layers or []) else d
    block = min(LIGHTNING_BLOCK_SIZE, seq_length)
    keys = block / 2 if attention == "causal" else block
    return LayerFlops(
        qkv=2.0 * h * 4 * q,  # q, k, v and the output gate u
        attention_scores=2.0 * keys * dk * heads,
        attention_values=2.0 * keys * d * heads + 4.0 * dk * d * heads,  # intra-block P V + state read and update
        attention_output=2.0 * q * h,
        mlp=3 * 2.0 * h * f,
    )


def layer_forward_flops(model: ModelConfig, seq_length: int, gated_mlp: bool = True,
                        attention: str = "full", layer: int = 0) -> LayerFlops:
    """Per-token forward FLOPs of one layer (`layer`: its 0-based index, which matters for TransNormerLLM's LRPE
    layers). gated_mlp=False is the GPT-2/3 GELU MLP (two matrices)."""
    if attention not in ATTENTION_CHOICES:
        raise ValueError(f"attention must be one of {ATTENTION_CHOICES}, got {attention!r}")
    if model.architecture == "transnormer":
        return _linear_attention_layer_flops(model, seq_length, attention, layer)
    h, f = model.hidden_size, model.ffn_hidden_size
    q = model.num_attention_heads * model.head_dim
    kv = model.num_query_groups * model.head_dim
    # A causal kernel only needs the lower triangle: on average (s+1)/2 keys per query; s/2 is the convention.
    keys = seq_length / 2 if attention == "causal" else seq_length
    return LayerFlops(
        qkv=2.0 * h * (q + 2 * kv),
        attention_scores=2.0 * keys * q,
        attention_values=2.0 * keys * q,
        attention_output=2.0 * q * h,
        mlp=(3 if gated_mlp else 2) * 2.0 * h * f,
    )


def logits_flops(model: ModelConfig, vocab_size: int) -> float:
    """Per-token forward FLOPs of the output layer; the same for tied and untied embeddings (input is a lookup)."""
    return 2.0 * model.hidden_size * vocab_size


def forward_flops_per_token(model: ModelConfig, seq_length: int, vocab_size: int, gated_mlp: bool = True,
                            attention: str = "full") -> float:
    layers = _all_layers(model, seq_length, gated_mlp, attention)
    return float(sum(layer.total for layer in layers) + logits_flops(model, vocab_size))


def training_flops_per_token(model: ModelConfig, seq_length: int, vocab_size: int, gated_mlp: bool = True,
                             attention: str = "full") -> float:
    """Model FLOPs (forward + backward) per trained token; recomputation is not counted (that is hardware FLOPs)."""
    return 3.0 * forward_flops_per_token(model, seq_length, vocab_size, gated_mlp, attention)


def flops_per_iteration(model: ModelConfig, seq_length: int, vocab_size: int, global_batch_size: int,
                        gated_mlp: bool = True, attention: str = "full") -> float:
    """Model FLOPs of one optimizer step over the whole global batch."""
    return (training_flops_per_token(model, seq_length, vocab_size, gated_mlp, attention)
            * seq_length * global_batch_size)


def recompute_flops_per_token(model: ModelConfig, seq_length: int, recompute: str = "none",
                              recompute_num_layers: Optional[int] = None, gated_mlp: bool = True,
                              attention: str = "full") -> float:
    """Extra forward FLOPs per token spent recomputing activations in the backward pass."""
    if recompute not in RECOMPUTE_CHOICES:
        raise ValueError(f"recompute must be one of {RECOMPUTE_CHOICES}, got {recompute!r}")
    per_layer = _all_layers(model, seq_length, gated_mlp, attention)
    layers = model.num_layers if recompute_num_layers is None else min(recompute_num_layers, model.num_layers)
    if recompute == "selective":
        return float(sum(layer.attention_core for layer in per_layer))
    if recompute == "full":
        # Block recompute of the first n layers of each chunk: counted as n average layers.
        return float(layers * sum(layer.total for layer in per_layer) / model.num_layers)
    return 0.0


def _all_layers(model: ModelConfig, seq_length: int, gated_mlp: bool, attention: str):
    return [layer_forward_flops(model, seq_length, gated_mlp, attention, i) for i in range(model.num_layers)]


def hardware_flops_per_token(model: ModelConfig, seq_length: int, vocab_size: int, recompute: str = "none",
                             recompute_num_layers: Optional[int] = None, gated_mlp: bool = True,
                             attention: str = "full") -> float:
    """FLOPs the hardware executes per trained token: model FLOPs + recomputation (for HFU)."""
    return (training_flops_per_token(model, seq_length, vocab_size, gated_mlp, attention)
            + recompute_flops_per_token(model, seq_length, recompute, recompute_num_layers, gated_mlp, attention))


def hardware_flops_per_iteration(model: ModelConfig, seq_length: int, vocab_size: int, global_batch_size: int,
                                 recompute: str = "none", recompute_num_layers: Optional[int] = None,
                                 gated_mlp: bool = True, attention: str = "full") -> float:
    return (hardware_flops_per_token(model, seq_length, vocab_size, recompute, recompute_num_layers, gated_mlp,
                                     attention) * seq_length * global_batch_size)


def recompute_from_transformer_config(tc: Any, num_layer_chunks: int = 1) -> tuple:
    """(recompute, recompute_num_layers) from a megatron-core TransformerConfig: what the model really does.

    megatron-core: recompute_granularity None | "selective" | "full". For "full", recompute_method "uniform"
    recomputes every layer (in groups of recompute_num_layers); "block" recomputes only the first
    recompute_num_layers layers of each model chunk, so the whole model recomputes that many times the number of
    chunks (pipeline stages x virtual stages: num_layer_chunks). Selective recompute is counted as the attention
    core, megatron-core's default recompute_modules.
    """
    gran = getattr(tc, "recompute_granularity", None)
    if gran in (None, "none"):
        return "none", None
    if gran == "selective":
        return "selective", None
    if gran == "full":
        if getattr(tc, "recompute_method", None) == "block":
            n = getattr(tc, "recompute_num_layers", None)
            return "full", None if n is None else int(n) * max(1, num_layer_chunks)
        return "full", None
    raise ValueError(f"unknown recompute_granularity {gran!r}")


def attention_counted(model: ModelConfig) -> str:
    """How the token mixer enters the FLOPs, in a few words (the metrics log line)."""
    if model.architecture == "transnormer":
        return f"lightning linear attention counted, block {LIGHTNING_BLOCK_SIZE}"
    return "full attention counted"


def describe_convention(attention: str = "full", model: Optional[ModelConfig] = None) -> str:
    """One line for reports: which formula the FLOPs figures use."""
    att = ("full s x s attention counted (Megatron-LM paper convention)" if attention == "full"
           else "causal attention halved (Megatron-LM logging since core 0.15)")
    if model is not None and model.architecture == "transnormer":
        att = f"{attention_counted(model)} ({'whole blocks' if attention == 'full' else 'intra-block halved'})"
    return (f"model FLOPs = 3 x forward matmul FLOPs (backward = 2 x forward), {att}; "
            f"hardware FLOPs add activation recomputation; see megatron_llm/perf/flops.py")
