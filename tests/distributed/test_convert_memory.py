"""Conversion streams: a 0.85B-parameter bf16 Llama (random-free constant weights, written shard by shard so this
test process stays small) converts with a peak RSS below twice the model's size, as the converter measures and
prints it."""

from __future__ import annotations

import json
import re

import torch

from hf_reference import run_cli

# TinyLlama-like width (GQA), 16 layers: 0.85B parameters, 1.7 GB in bf16
H, FFN, LAYERS, HEADS, KV, VOCAB = 2048, 5632, 16, 16, 4, 32000


def _write_hf(d):
    from safetensors.torch import save_file

    d.mkdir()
    kv = H // HEADS * KV

    def t(*shape):
        return torch.full(shape, 0.01, dtype=torch.bfloat16)

    weight_map = {}

    def shard(name, tensors):
        save_file(tensors, d / name, metadata={"format": "pt"})
        weight_map.update({k: name for k in tensors})

    shard("model-embed.safetensors", {"model.embed_tokens.weight": t(VOCAB, H), "lm_head.weight": t(VOCAB, H),
                                      "model.norm.weight": t(H)})
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        shard(f"model-layer{i:02d}.safetensors", {
            p + "self_attn.q_proj.weight": t(H, H), p + "self_attn.k_proj.weight": t(kv, H),
            p + "self_attn.v_proj.weight": t(kv, H), p + "self_attn.o_proj.weight": t(H, H),
            p + "mlp.gate_proj.weight": t(FFN, H), p + "mlp.up_proj.weight": t(FFN, H),
            p + "mlp.down_proj.weight": t(H, FFN), p + "input_layernorm.weight": t(H),
            p + "post_attention_layernorm.weight": t(H)})
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (d / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": H, "intermediate_size": FFN,
        "num_hidden_layers": LAYERS, "num_attention_heads": HEADS, "num_key_value_heads": KV, "vocab_size": VOCAB,
        "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "torch_dtype": "bfloat16"}))


def test_peak_rss_below_twice_the_model(tmp_path):
    _write_hf(tmp_path / "hf")
    out = run_cli("convert", "--from", "hf", "--to", "megatron", str(tmp_path / "hf"), str(tmp_path / "mg"),
                  timeout=1200)
    m = re.search(r"model ([\d.]+) GiB, peak RSS ([\d.]+) GiB", out)
    assert m, out
    model_gb, peak_gb = float(m.group(1)), float(m.group(2))
    print(f"model {model_gb:.2f} GiB, conversion peak RSS {peak_gb:.2f} GiB ({peak_gb / model_gb:.2f}x)")
    kv = H // HEADS * KV
    params = LAYERS * (2 * H * H + 2 * kv * H + 3 * H * FFN + 2 * H) + 2 * VOCAB * H + H
    assert abs(model_gb - params * 2 / 2 ** 30) < 0.01, (model_gb, params)
    assert peak_gb < 2 * model_gb, (peak_gb, model_gb)
