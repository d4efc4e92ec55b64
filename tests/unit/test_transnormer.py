"""TransNormerLLM: presets sized as the released checkpoints, the megatron-core model equals a reference forward
written from the published modeling code's structure, and the HF layout round-trips bitwise."""

import json
import math
import subprocess
import sys
import textwrap

import pytest

from megatron_llm.config.arguments import ConfigError, build_config, validate
from megatron_llm.config.model import ModelConfig
from megatron_llm.models.transnormer_hf import HFLayoutError, hf_config_from_model, model_config_from_hf


def test_presets_match_released_checkpoint_sizes():
    # Independent figures: the Hub's file sizes of the released weights (bytes / bytes-per-parameter) and the
    # README's parameter size. 1B: pytorch_model.bin 2.04 GB in bf16. 7B (fp32 upload): shards 9.88 + 9.91 + 7.55
    # GB. 385M: README table "PS 0.39" (billions, truncated). The checkpoints store the tied embedding once.
    one_b = build_config({}, "transnormer-1b").model.num_parameters()
    assert abs(2 * one_b / 1e9 - 2.04) <= 0.005
    seven_b = build_config({}, "transnormer-7b").model.num_parameters()
    assert abs(4 * seven_b / 1e9 - (9.88 + 9.91 + 7.55)) <= 0.015
    small = build_config({}, "transnormer-385m").model
    assert 0.39e9 <= small.num_parameters() < 0.40e9
    for name, (layers, hidden, heads) in {"transnormer-385m": (24, 1024, 8), "transnormer-1b": (16, 2048, 16),
                                          "transnormer-7b": (30, 4096, 32)}.items():
        m = build_config({}, name).model
        assert (m.num_layers, m.hidden_size, m.num_attention_heads, m.lrpe_layers) == (layers, hidden, heads, [0])
        assert m.architecture == "transnormer" and not m.untie_embeddings_and_output_weights


def test_transnormer_flags_are_checked():
    base = {"architecture": "transnormer", "mock_data": True, "vocab_size": 128, "num_layers": 2}
    with pytest.raises(ConfigError, match="--num-query-groups"):
        validate(build_config({**base, "num_query_groups": 2}), 1)
    with pytest.raises(ConfigError, match="--lrpe-layers 5"):
        validate(build_config({**base, "lrpe_layers": [0, 5]}), 1)
    with pytest.raises(ConfigError, match="transnormer only"):
        validate(build_config({"mock_data": True, "vocab_size": 128, "lrpe_layers": [0]}), 1)


def test_hf_config_round_trip_and_refusals():
    m = ModelConfig(architecture="transnormer", num_layers=3, hidden_size=64, num_attention_heads=4,
                    ffn_hidden_size=96, vocab_size=300, lrpe_layers=[0, 2], untie_embeddings_and_output_weights=False)
    hf = hf_config_from_model(m)
    assert hf["linear_use_lrpe_list"] == [1, 0, 1]
    back = model_config_from_hf(json.loads(json.dumps(hf)))
    for f in ("num_layers", "hidden_size", "num_attention_heads", "ffn_hidden_size", "vocab_size", "lrpe_layers",
              "untie_embeddings_and_output_weights"):
        assert getattr(back, f) == getattr(m, f), f
    with pytest.raises(HFLayoutError, match="norm_type"):
        model_config_from_hf({**hf, "norm_type": "layernorm"})
    with pytest.raises(HFLayoutError, match="linear_use_lrpe_list has 2"):
        model_config_from_hf({**hf, "linear_use_lrpe_list": [1, 0]})


def reference_forward(hf, cfg, ids):
    """TransnormerForCausalLM's forward, from the published code's structure (HF names, [b, n, h] activations,
    quadratic decayed attention), float64."""
    import torch

    h, heads, layers = cfg["decoder_embed_dim"], cfg["decoder_attention_heads"], cfg["decoder_layers"]
    d = h // heads
    w = {k: t.double() for k, t in hf.items()}

    def srms(x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)

    start = 2.0 ** (-8.0 / heads)  # power-of-two head count: start, start^2, ...
    base = torch.tensor([start ** (i + 1) for i in range(heads)], dtype=torch.float64).view(heads, 1, 1)
    b, n = ids.shape
    dist = (torch.arange(n).view(-1, 1) - torch.arange(n).view(1, -1)).double()
    x = math.sqrt(h) * w["model.embed_tokens.weight"][ids]
    for i in range(layers):
        p = f"model.layers.{i}."
        slope = base * (1 - i / (layers - 1) + 1e-5)
        r = x
        q, k, v, u = (srms(x) @ w[p + "token_mixer.qkvu_proj.weight"].T).chunk(4, dim=-1)
        q, k, v = (t.reshape(b, n, heads, d).transpose(1, 2) for t in (q, k, v))
        q, k = torch.nn.functional.silu(q), torch.nn.functional.silu(k)
        if cfg["linear_use_lrpe_list"][i]:
            theta = w[p + "token_mixer.lrpe.theta"] * torch.arange(n).double().view(1, -1, 1)
            q = torch.cat([q * torch.cos(theta), q * torch.sin(theta)], dim=-1)
            k = torch.cat([k * torch.cos(theta), k * torch.sin(theta)], dim=-1)
        mask = torch.where(dist >= 0, torch.exp(-slope * dist), torch.zeros(()))
        o = ((q @ k.transpose(-1, -2)) * mask) @ v
        o = srms(o.transpose(1, 2).reshape(b, n, h)) * u
        x = r + o @ w[p + "token_mixer.out_proj.weight"].T
        y = srms(x)
        y = (y @ w[p + "channel_mixer.l1.weight"].T) * (y @ w[p + "channel_mixer.l2.weight"].T)
        x = x + y @ w[p + "channel_mixer.l3.weight"].T
    return srms(x) @ w["lm_head.weight"].T


def test_megatron_model_matches_reference_forward_and_hf_round_trip(tmp_path):
    # One CPU process: build the real megatron-core model, count it, export it to the HF layout, compare logits with
    # the reference forward, and import the export back.
    code = textwrap.dedent(f"""
        import os, json, torch
        from megatron_llm.launch.local import free_port  # a fixed port collides with concurrent runs
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
        from megatron_llm.config.arguments import build_config
        from megatron_llm.training.initialize import initialize
        from megatron_llm.models.build import build_model_chunks, transformer_config
        from megatron_llm.models.init import init_weights
        from megatron_llm.models.llama import padded_vocab_size
        from megatron_llm.models.transnormer_hf import hf_config_from_model, hf_to_megatron, megatron_to_hf
        cfg = build_config(dict(device="cpu", mock_data=True, architecture="transnormer", num_layers=3,
                                hidden_size=64, num_attention_heads=4, ffn_hidden_size=96, vocab_size=300,
                                lrpe_layers=[0, 2], untie_embeddings_and_output_weights=False, norm_epsilon=1e-6,
                                max_position_embeddings=64, seq_length=40))
        initialize(cfg)
        tc = transformer_config(cfg, "cpu")
        vocab = padded_vocab_size(300, 1)
        (model,) = build_model_chunks(cfg, tc, vocab)
        init_weights([model], 7, 0.2, 3)
        with torch.no_grad():  # make the LRPE angles differ from their initial values, as trained ones do
            model.decoder.layers[2].self_attention.theta.mul_(1.7)
            model.embedding.word_embeddings.weight[300:] = 0  # padding rows: not part of the HF layout
        ours = {{k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}}
        hf = megatron_to_hf(ours, cfg.model)
        back = hf_to_megatron(hf, cfg.model, vocab)
        assert sorted(back) == sorted(ours), sorted(set(back) ^ set(ours))
        assert all(torch.equal(back[k], ours[k]) for k in ours)
        ids = torch.randint(0, 300, (2, 40), generator=torch.Generator().manual_seed(0))
        pos = torch.arange(40).view(1, -1).expand(2, -1)
        with torch.no_grad():
            logits = model(ids, pos, None)[..., :300]
        # Generation with the recurrent state (inference context) = greedy decoding by full forwards.
        from megatron_llm.inference.generate import generate
        prompt = ids[0, :9].tolist()
        fast = generate(model, prompt, 6, 300)
        seq = list(prompt)
        for _ in range(6):
            with torch.no_grad():
                full = model(torch.tensor([seq]), torch.arange(len(seq)).view(1, -1), None)
            seq.append(int(full[0, -1, :300].argmax()))
        assert fast == seq[9:], (fast, seq[9:])
        torch.save(dict(hf=hf, config=hf_config_from_model(cfg.model), ids=ids, logits=logits,
                        count=sum(t.numel() for n, t in model.state_dict().items() if not n.endswith("_extra_state")),
                        formula=cfg.model.num_parameters(vocab)),
                   {str(tmp_path / "out.pt")!r})
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import torch

    out = torch.load(tmp_path / "out.pt")
    assert out["count"] == out["formula"]  # every tensor a checkpoint stores (weights and LRPE angles)
    ref = reference_forward(out["hf"], out["config"], out["ids"])
    torch.testing.assert_close(out["logits"].double(), ref, rtol=1e-4, atol=1e-4)
    # Round trip HF -> ours -> HF is exact as well.
    from megatron_llm.models.transnormer_hf import hf_to_megatron, megatron_to_hf

    m = model_config_from_hf(out["config"])
    again = megatron_to_hf(hf_to_megatron(out["hf"], m, 384), m)
    assert sorted(again) == sorted(out["hf"]) and all(torch.equal(again[k], out["hf"][k]) for k in again)


def test_linear_attention_flops_formula_counts_the_lightning_matmuls():
    # Independent count: torch's FlopCounterMode over the block-wise torch implementation (2mnk per matmul; the
    # csrc/ kernel does the same arithmetic out of the counter's sight).
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from megatron_llm.config.model import LIGHTNING_BLOCK_SIZE
    from megatron_llm.ops.linear_attention import linear_attention_lightning_torch
    from megatron_llm.perf import flops

    m = ModelConfig(architecture="transnormer", num_layers=2, hidden_size=64, num_attention_heads=4,
                    ffn_hidden_size=96, lrpe_layers=[0])
    b, n = 2, 3 * LIGHTNING_BLOCK_SIZE
    for layer, dk in ((0, 32), (1, 16)):  # layer 0 has LRPE: queries and keys twice as wide
        q, k = torch.randn(b, 4, n, dk), torch.randn(b, 4, n, dk)
        v = torch.randn(b, 4, n, 16)
        with FlopCounterMode(display=False) as counter:
            linear_attention_lightning_torch(q, k, v, torch.full((4,), 0.1))
        per_token = flops.layer_forward_flops(m, n, layer=layer).attention_core
        assert counter.get_total_flops() == per_token * b * n
    # Linear in the sequence length: per-token FLOPs stop growing once s exceeds the block.
    short, long = (flops.training_flops_per_token(m, s, 1000) for s in (2048, 32768))
    assert short == long
    llama = ModelConfig(num_layers=2, hidden_size=64, num_attention_heads=4, ffn_hidden_size=96)
    assert flops.training_flops_per_token(llama, 32768, 1000) > 4 * flops.training_flops_per_token(llama, 2048, 1000)
