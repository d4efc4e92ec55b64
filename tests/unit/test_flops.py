"""FLOPs formula against counts computed independently: published closed forms and matmul-by-matmul enumeration."""

from types import SimpleNamespace

import pytest

from megatron_llm.config.model import ModelConfig
from megatron_llm.perf import flops


def mm(m, k, n):
    """FLOPs of an (m x k) @ (k x n) matmul: m*n dot products of length k, a multiply and an add each."""
    return 2 * m * k * n


def gpt3_175b():
    # Brown et al. 2020, table 2.1: 96 layers, d_model 12288, 96 heads; FFN 4 x d_model; GELU (non-gated) MLP.
    return ModelConfig(num_layers=96, hidden_size=12288, num_attention_heads=96, ffn_hidden_size=4 * 12288,
                       max_position_embeddings=2048)


def test_gpt3_175b_full_recompute_matches_narayanan_2021():
    """Narayanan et al. 2021, eq. (3): F = 96 B s l h^2 (1 + s/6h + V/16lh) FLOPs per iteration, with activation
    recomputation (one extra forward of the transformer layers) — our hardware FLOPs with recompute='full'."""
    m = gpt3_175b()
    B, s, l, h, V = 1536, 2048, 96, 12288, 51200
    published = 96 * B * s * l * h ** 2 * (1 + s / (6 * h) + V / (16 * l * h))
    ours = flops.hardware_flops_per_iteration(m, s, V, B, recompute="full", gated_mlp=False)
    assert ours == pytest.approx(published, rel=1e-12)
    # Order of magnitude by hand: 96 * 1536 * 2048 * 96 * 12288^2 = 4.38e18, times (1 + 0.028 + 0.003).
    assert 4.0e18 < published < 5.0e18
    # Without recompute it is 72 B s l h^2 (1 + s/6h + V/12lh): 3/4 of the layer term, the same logits term.
    model_flops = flops.flops_per_iteration(m, s, V, B, gated_mlp=False)
    assert model_flops == pytest.approx(72 * B * s * l * h ** 2 * (1 + s / (6 * h) + V / (12 * l * h)), rel=1e-12)


def llama2_70b():
    # Touvron et al. 2023 (Llama 2): 80 layers, hidden 8192, 64 heads, 8 KV heads (GQA), FFN 28672, vocab 32000.
    return ModelConfig(num_layers=80, hidden_size=8192, num_attention_heads=64, num_query_groups=8,
                       ffn_hidden_size=28672, max_position_embeddings=4096)


def enumerate_llama_step(L, h, heads, groups, d, f, V, s):
    """Forward FLOPs of one sequence of s tokens, matmul by matmul, layer by layer (no closed form used)."""
    total = 0
    for _ in range(L):
        total += mm(s, h, heads * d)          # Q
        total += mm(s, h, groups * d)         # K (GQA: only `groups` heads)
        total += mm(s, h, groups * d)         # V
        for _head in range(heads):            # each query head attends with its group's K/V
            total += mm(s, d, s)              # Q K^T
            total += mm(s, s, d)              # P V
        total += mm(s, heads * d, h)          # output projection
        total += mm(s, h, f)                  # gate
        total += mm(s, h, f)                  # up
        total += mm(s, f, h)                  # down
    total += mm(s, h, V)                      # logits
    return total


def test_llama2_70b_gqa_layer_by_layer():
    m, s, V = llama2_70b(), 4096, 32000
    fwd_seq = enumerate_llama_step(80, 8192, 64, 8, 128, 28672, V, s)
    assert flops.forward_flops_per_token(m, s, V) == pytest.approx(fwd_seq / s, rel=1e-12)
    assert flops.training_flops_per_token(m, s, V) == pytest.approx(3 * fwd_seq / s, rel=1e-12)
    # GQA must matter: the same shape with full multi-head attention costs more, by exactly 2 * 2h(q - kv) per
    # layer-token (K and V projections), three times for training.
    mha = ModelConfig(num_layers=80, hidden_size=8192, num_attention_heads=64, ffn_hidden_size=28672,
                      max_position_embeddings=4096)
    diff = flops.training_flops_per_token(mha, s, V) - flops.training_flops_per_token(m, s, V)
    assert diff == pytest.approx(3 * 80 * 2 * 2 * 8192 * (8192 - 1024), rel=1e-12)


def test_small_gqa_with_kv_channels_layer_by_layer():
    """head_dim != hidden/heads (kv_channels set) and a vocabulary that is not a round number."""
    m = ModelConfig(num_layers=3, hidden_size=96, num_attention_heads=6, num_query_groups=2, kv_channels=24,
                    ffn_hidden_size=200, max_position_embeddings=64)
    s, V = 48, 1003
    fwd = enumerate_llama_step(3, 96, 6, 2, 24, 200, V, s)
    assert flops.forward_flops_per_token(m, s, V) == pytest.approx(fwd / s, rel=1e-12)
    assert flops.flops_per_iteration(m, s, V, 10) == pytest.approx(3 * fwd * 10, rel=1e-12)


def test_tinyllama_design_figure():
    """DESIGN.md section 4: TinyLlama 1.1B at seq 2048 is 7.31 GFLOP per token (full attention, x3)."""
    m = ModelConfig(num_layers=22, hidden_size=2048, num_attention_heads=32, num_query_groups=4,
                    ffn_hidden_size=5632, max_position_embeddings=2048)
    per_token = flops.training_flops_per_token(m, 2048, 32000)
    assert round(per_token / 1e9, 2) == 7.31
    assert per_token == 3 * (22 * (2 * 2048 * (2048 + 2 * 256) + 2 * 2048 ** 2 + 6 * 2048 * 5632
                                   + 4 * 2048 * 2048) + 2 * 2048 * 32000)


@pytest.mark.parametrize("untied", [True, False])
def test_six_n_identity_and_untied_embeddings(untied):
    """Model FLOPs = 6 x (parameters that take part in matmuls) + 12 L s q. The input embedding is a lookup, so
    tied and untied models cost the same FLOPs though their parameter counts differ by V*h."""
    m = ModelConfig(num_layers=4, hidden_size=256, num_attention_heads=8, num_query_groups=2,
                    untie_embeddings_and_output_weights=untied, max_position_embeddings=512)
    s, V = 512, 5000
    h, L = 256, 4
    n = m.num_parameters(V)
    norms = L * 2 * h + h
    matmul_params = n - norms - (V * h if untied else 0)  # drop norms, and the input table when it is separate
    q = m.num_attention_heads * m.head_dim
    assert flops.training_flops_per_token(m, s, V) == pytest.approx(6 * matmul_params + 12 * L * s * q, rel=1e-12)
    other = ModelConfig(num_layers=4, hidden_size=256, num_attention_heads=8, num_query_groups=2,
                        untie_embeddings_and_output_weights=not untied, max_position_embeddings=512)
    assert flops.training_flops_per_token(other, s, V) == flops.training_flops_per_token(m, s, V)
    assert abs(other.num_parameters(V) - n) == V * h


def test_sequence_length_enters_only_through_attention():
    m = llama2_70b()
    a, b = flops.training_flops_per_token(m, 1024, 32000), flops.training_flops_per_token(m, 4096, 32000)
    assert b - a == pytest.approx(3 * 80 * 4 * (4096 - 1024) * 8192, rel=1e-12)


def test_causal_attention_halves_only_the_attention_matmuls():
    m, s, V = llama2_70b(), 4096, 32000
    full = flops.forward_flops_per_token(m, s, V)
    causal = flops.forward_flops_per_token(m, s, V, attention="causal")
    assert full - causal == pytest.approx(80 * 2 * s * 8192, rel=1e-12)  # half of 4 s q per layer
    with pytest.raises(ValueError):
        flops.forward_flops_per_token(m, s, V, attention="sliding")


def test_recompute_variants():
    m, s, V = llama2_70b(), 4096, 32000
    model = flops.training_flops_per_token(m, s, V)
    layer = flops.layer_forward_flops(m, s)
    assert flops.hardware_flops_per_token(m, s, V, "none") == model
    # selective: the attention core (QK^T and PV) is run once more in every layer
    assert flops.hardware_flops_per_token(m, s, V, "selective") - model == pytest.approx(80 * 4 * s * 8192)
    # full: every layer's forward once more; the logits are not recomputed
    full = flops.hardware_flops_per_token(m, s, V, "full")
    assert full - model == pytest.approx(80 * layer.total)
    assert full == pytest.approx(4 * flops.forward_flops_per_token(m, s, V) - flops.logits_flops(m, V))
    # block recompute of 10 layers
    assert flops.hardware_flops_per_token(m, s, V, "full", recompute_num_layers=10) - model == \
        pytest.approx(10 * layer.total)
    with pytest.raises(ValueError):
        flops.hardware_flops_per_token(m, s, V, "sometimes")


def test_recompute_from_transformer_config():
    tc = SimpleNamespace(recompute_granularity=None)
    assert flops.recompute_from_transformer_config(tc) == ("none", None)
    tc = SimpleNamespace(recompute_granularity="selective")
    assert flops.recompute_from_transformer_config(tc) == ("selective", None)
    tc = SimpleNamespace(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
    assert flops.recompute_from_transformer_config(tc) == ("full", None)
    # block: N layers per model chunk; 4 pipeline stages -> 4N layers of the whole model
    tc = SimpleNamespace(recompute_granularity="full", recompute_method="block", recompute_num_layers=3)
    assert flops.recompute_from_transformer_config(tc, num_layer_chunks=4) == ("full", 12)
