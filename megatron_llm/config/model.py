"""Model shape: a typed dataclass that recipes and CLI flags fill in."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional


ARCHITECTURES = ("llama", "transnormer")
# Tokens per block of lightning attention (the block-wise linear attention of TransNormerLLM): its FLOPs formula
# (perf/flops.py) and its kernels (ops/linear_attention.py, csrc/) share this number.
LIGHTNING_BLOCK_SIZE = 256


@dataclass
class ModelConfig:
    """Shape of a Llama-family (or TransNormerLLM) decoder. Field names follow Megatron-LM's flags."""

    num_layers: int = 2
    hidden_size: int = 128
    num_attention_heads: int = 4
    num_query_groups: Optional[int] = None  # None: multi-head attention (as many KV heads as query heads)
    ffn_hidden_size: Optional[int] = None  # None: Llama's rule, 2/3 * 4h rounded up to a multiple of 256
    kv_channels: Optional[int] = None  # head dim; None: hidden / heads
    vocab_size: Optional[int] = None  # None: taken from the tokenizer
    make_vocab_size_divisible_by: int = field(default=128, metadata={
        "help": "pad the vocabulary to a multiple of this x TP (padded rows are masked out of the softmax)"})
    max_position_embeddings: int = 2048
    rotary_base: float = 10000.0
    norm_epsilon: float = 1e-5
    untie_embeddings_and_output_weights: bool = True
    add_qkv_bias: bool = field(default=False, metadata={"help": "biases on the query/key/value projections (Qwen2)"})
    use_stable_embedding: bool = field(default=False, metadata={
        "help": "LayerNorm on the token embeddings (Bloom's stable embedding; the Open-Llama model type)"})
    init_method_std: float = 0.02
    # Only implemented families are accepted; a new one adds its name here with its model code.
    architecture: str = field(default="llama", metadata={"help": "model family", "choices": ARCHITECTURES})
    # TransNormerLLM: layers (0-based) whose token mixer applies LRPE to queries and keys; the released models use
    # it in the first layer only (their config.json's linear_use_lrpe_list). None: [0].
    lrpe_layers: Optional[List[int]] = field(default=None, metadata={
        "help": "transnormer: 0-based layers with LRPE relative positions (default: 0)", "nargs": "*"})

    def __post_init__(self) -> None:
        if self.num_query_groups is None:
            self.num_query_groups = self.num_attention_heads
        if self.ffn_hidden_size is None:
            ffn = int(2 * 4 * self.hidden_size / 3)
            self.ffn_hidden_size = 256 * ((ffn + 255) // 256)
        if self.kv_channels is None:
            self.kv_channels = self.hidden_size // self.num_attention_heads
        if self.lrpe_layers is None and self.architecture == "transnormer":
            self.lrpe_layers = [0]

    @property
    def head_dim(self) -> int:
        return int(self.kv_channels)

    def num_parameters(self, vocab_size: Optional[int] = None) -> int:
        """Exact parameter count of the megatron-core model this config builds (no padding of the vocabulary)."""
        v = vocab_size or self.vocab_size or 0
        h, f, d = self.hidden_size, self.ffn_hidden_size, self.head_dim
        q = self.num_attention_heads * d
        kv = self.num_query_groups * d
        embeddings = v * h * (2 if self.untie_embeddings_and_output_weights else 1)
        if self.architecture == "transnormer":
            # q, k, v, u projections + output projection, simple GLU (l1, l2, l3); SRMSNorm has no weights; each LRPE
            # layer learns one angle per (head, channel).
            per_layer = 4 * h * q + q * h + 3 * h * f
            return self.num_layers * per_layer + len(self.lrpe_layers or []) * q + embeddings
        per_layer = h * (q + 2 * kv) + q * h + 3 * h * f + 2 * h  # qkv, out proj, SwiGLU (gate+up, down), 2 norms
        per_layer += (q + 2 * kv) if self.add_qkv_bias else 0
        embeddings += 2 * h if self.use_stable_embedding else 0
        return self.num_layers * per_layer + embeddings + h  # + final norm
