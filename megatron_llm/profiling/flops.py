"""Model FLOPs of a Llama-family decoder (the Megatron-LM paper's convention).

Per token, forward: for each layer 2h(q + 2kv) [QKV] + 2qh [attention output] + 6h*ffn [SwiGLU: gate, up, down]
+ 4*s*q [scores and weighted values, full s x s attention counted], then 2hV for the logits.  Training counts the
forward three times (backward = 2 x forward).  With h=q this is DESIGN.md section 4's
3 * (L * (2h(h + 2 kv_dim) + 2h^2 + 6 h ffn + 4 s h) + 2 h V).
"""

from __future__ import annotations

from megatron_llm.config.model import ModelConfig


def forward_flops_per_token(model: ModelConfig, seq_length: int, vocab_size: int) -> float:
    h, f = model.hidden_size, model.ffn_hidden_size
    q = model.num_attention_heads * model.head_dim
    kv = model.num_query_groups * model.head_dim
    per_layer = 2 * h * (q + 2 * kv) + 2 * q * h + 6 * h * f + 4 * seq_length * q
    return float(model.num_layers * per_layer + 2 * h * vocab_size)


def training_flops_per_token(model: ModelConfig, seq_length: int, vocab_size: int) -> float:
    """Model FLOPs (forward + backward) per trained token; recomputation is not counted (that is hardware FLOPs)."""
    return 3.0 * forward_flops_per_token(model, seq_length, vocab_size)


def flops_per_iteration(model: ModelConfig, seq_length: int, vocab_size: int, global_batch_size: int) -> float:
    """Model FLOPs of one optimizer step over the whole global batch."""
    return training_flops_per_token(model, seq_length, vocab_size) * seq_length * global_batch_size
