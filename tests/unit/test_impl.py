"""--transformer-impl and the fusion/recompute switches: resolution, mapping onto TransformerConfig fields, and
that megatron-core really recomputes when asked (its checkpoint function is called on the built model)."""

import subprocess
import sys
import textwrap

import pytest

from megatron_llm.config.arguments import ConfigError, build_config, validate_recompute
from megatron_llm.models import impl


def test_default_impl_per_device(monkeypatch):
    monkeypatch.setattr(impl, "te_available", lambda: False)
    assert impl.resolve_transformer_impl(None, "cpu") == "local"
    assert impl.resolve_transformer_impl(None, "cuda") == "fused"
    monkeypatch.setattr(impl, "te_available", lambda: True)
    assert impl.resolve_transformer_impl(None, "cuda") == "transformer_engine"
    assert impl.resolve_transformer_impl("fused", "cpu") == "fused"
    monkeypatch.setattr(impl, "te_available", lambda: False)
    with pytest.raises(ValueError, match="transformer_engine does not import"):
        impl.resolve_transformer_impl("transformer_engine", "cuda")


def test_switches_map_onto_transformer_config_fields():
    flags = build_config({"no_rope_fusion": None, "rope_fusion": False, "cross_entropy_loss_fusion": True}).impl
    fused, off = impl.fusion_fields("fused", flags, "cuda")
    assert fused == dict(masked_softmax_fusion=False, bias_activation_fusion=True, apply_rope_fusion=False,
                         cross_entropy_loss_fusion=True, cross_entropy_fusion_impl="native",
                         gradient_accumulation_fusion=True) and off == []
    fused_cpu, off = impl.fusion_fields("fused", flags, "cpu")
    assert not fused_cpu["gradient_accumulation_fusion"] and "CUDA only" in off[0]
    local, _ = impl.fusion_fields("local", build_config({}).impl, "cuda")
    assert local["masked_softmax_fusion"] and local["bias_activation_fusion"] and not local["apply_rope_fusion"]
    local_cpu, _ = impl.fusion_fields("local", build_config({}).impl, "cpu")
    assert not any(v for v in local_cpu.values() if isinstance(v, bool))  # CPU reference: all unfused
    te, _ = impl.fusion_fields("transformer_engine", build_config({"masked_softmax_fusion": False}).impl, "cuda")
    assert te["cross_entropy_fusion_impl"] == "te" and not te["masked_softmax_fusion"]


def test_megatron_lm_flag_spellings():
    from megatron_llm.config.arguments import parse_run_args

    _, values = parse_run_args(["--transformer-impl", "fused", "--no-masked-softmax-fusion",
                                "--no-bias-swiglu-fusion", "--no-rope-fusion", "--cross-entropy-loss-fusion",
                                "--no-gradient-accumulation-fusion", "--recompute-granularity", "full",
                                "--recompute-method", "block", "--recompute-num-layers", "1"])
    i = build_config(values).impl
    assert (i.transformer_impl, i.masked_softmax_fusion, i.bias_swiglu_fusion, i.rope_fusion,
            i.cross_entropy_loss_fusion, i.gradient_accumulation_fusion) == ("fused", False, False, False, True,
                                                                              False)
    assert (i.recompute_granularity, i.recompute_method, i.recompute_num_layers) == ("full", "block", 1)


@pytest.mark.parametrize("values,match", [
    ({"recompute_method": "uniform"}, "need --recompute-granularity full"),
    ({"recompute_granularity": "selective", "recompute_num_layers": 2}, "drop --recompute-method"),
    ({"recompute_granularity": "full", "recompute_method": "block"}, "needs --recompute-method"),
    ({"recompute_granularity": "full", "recompute_method": "block", "recompute_num_layers": 3,
      "num_layers": 4, "pipeline_model_parallel_size": 2}, "exceeds the 2 layers"),
])
def test_bad_recompute_combinations(values, match):
    with pytest.raises(ConfigError, match=match):
        validate_recompute(build_config(values))


def test_recompute_flags_reach_megatron_core():
    """Full recompute of 2 layers in groups of 1 calls megatron-core's checkpoint twice per forward; selective
    once per layer; none never. (That the recomputed backward gives the same numbers is
    tests/distributed/test_recompute.py.)"""
    code = textwrap.dedent('''
        import os, json, torch
        from megatron_llm.launch.local import free_port  # a fixed port collides with concurrent runs
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
        from megatron_llm.config.arguments import build_config
        from megatron_llm.training.initialize import initialize
        from megatron_llm.models.llama import build_model_chunks, transformer_config
        from megatron.core import tensor_parallel
        calls = [0]
        original = tensor_parallel.checkpoint
        def counting(*a, **k):
            calls[0] += 1
            return original(*a, **k)
        tensor_parallel.checkpoint = counting
        out = {}
        for name, over in [("none", {}), ("selective", {"recompute_granularity": "selective"}),
                           ("full", {"recompute_granularity": "full", "recompute_method": "uniform",
                                     "recompute_num_layers": 1})]:
            cfg = build_config({"device": "cpu", "mock_data": True, "num_layers": 2, "hidden_size": 32,
                                "num_attention_heads": 2, "vocab_size": 128, "seq_length": 16,
                                "max_position_embeddings": 16, **over})
            initialize(cfg)
            tc = transformer_config(cfg, "cpu")
            model = build_model_chunks(cfg, tc, 128)[0]
            calls[0] = 0
            tokens = torch.randint(0, 128, (2, 16))
            pos = torch.arange(16)[None].expand(2, 16)
            model(tokens, pos, None, labels=tokens)  # forward: where megatron-core checkpoints
            out[name] = calls[0]
        print(json.dumps(out))
    ''')
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"none": 0, "selective": 2, "full": 2}


def test_fused_impl_builds_sdpa_and_our_ops_into_the_model():
    """The fused spec really is in the model: SDPA core attention, ops' RMSNorm, and our RoPE/SwiGLU/CE in
    megatron-core's fusion slots with its switches on."""
    code = textwrap.dedent('''
        import os
        from megatron_llm.launch.local import free_port  # a fixed port collides with concurrent runs
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
        from megatron_llm.config.arguments import build_config
        from megatron_llm.training.initialize import initialize
        from megatron_llm.models.llama import build_model_chunks, transformer_config
        from megatron_llm.models import fused_spec
        from megatron_llm.models.sdpa_attention import SDPACoreAttention
        from megatron_llm.ops.modules import RMSNorm as OpsRMSNorm
        from megatron.core.models.common.embeddings import rope_utils
        from megatron.core.transformer import mlp
        from megatron.core.models.common.language_module import language_module
        cfg = build_config({"device": "cpu", "mock_data": True, "num_layers": 2, "hidden_size": 32,
                            "num_attention_heads": 2, "vocab_size": 128, "seq_length": 16,
                            "max_position_embeddings": 16, "transformer_impl": "fused",
                            "cross_entropy_loss_fusion": True})
        initialize(cfg)
        tc = transformer_config(cfg, "cpu")
        assert tc.apply_rope_fusion and tc.bias_activation_fusion and tc.cross_entropy_loss_fusion
        assert not tc.gradient_accumulation_fusion  # CUDA only
        model = build_model_chunks(cfg, tc, 128)[0]
        layers = model.decoder.layers
        assert all(isinstance(l.self_attention.core_attention, SDPACoreAttention) for l in layers)
        assert all(isinstance(l.input_layernorm, OpsRMSNorm) and isinstance(l.pre_mlp_layernorm, OpsRMSNorm)
                   for l in layers)
        assert isinstance(model.decoder.final_layernorm, OpsRMSNorm)
        assert rope_utils.fused_apply_rotary_pos_emb is fused_spec._rope
        assert mlp.bias_swiglu_impl is fused_spec._bias_swiglu
        assert language_module.fused_vocab_parallel_cross_entropy is fused_spec._vocab_parallel_cross_entropy
        print("fused ok")
    ''')
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and "fused ok" in proc.stdout, proc.stderr[-3000:]


def test_a_fusion_whose_kernel_is_missing_is_turned_off(monkeypatch):
    """On a GPU machine without the built extension, megatron-core would refuse gradient_accumulation_fusion at
    model construction: prepare() turns it off and the start-up line says why."""
    monkeypatch.setattr(impl, "_importable", lambda name: name != "fused_weight_gradient_mlp_cuda")
    flags = build_config({"transformer_impl": "local"}).impl
    fields, _ = impl.fusion_fields("local", flags, "cuda")
    monkeypatch.setattr("megatron_llm.ops.install_megatron_extension_modules", lambda: [])
    impl.prepare("local", fields)
    assert fields["gradient_accumulation_fusion"] is False and fields["masked_softmax_fusion"] is True
    line = impl.describe(flags, "cuda")
    assert "gradient_accumulation_fusion: fused_weight_gradient_mlp_cuda not built here" in line
    assert "fusions on: masked_softmax_fusion, bias_activation_fusion" in line
