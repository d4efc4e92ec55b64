"""`megatron-llm convert` on the TransNormerLLM layout: HF -> megatron -> HF is bitwise, and the converted model
trains (its recipe names the architecture)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch


def run_cli(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "megatron_llm.cli", *args], capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert proc.returncode == 0, f"{args}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_hf_megatron_hf_round_trip_is_bitwise(tmp_path):
    from safetensors.torch import load_file, save_file

    from megatron_llm.config.model import ModelConfig
    from megatron_llm.models.transnormer_hf import hf_config_from_model, tensor_pairs

    m = ModelConfig(architecture="transnormer", num_layers=2, hidden_size=64, num_attention_heads=4,
                    ffn_hidden_size=96, vocab_size=300, lrpe_layers=[1], untie_embeddings_and_output_weights=False)
    g = torch.Generator().manual_seed(0)
    shapes = {"model.embed_tokens.weight": (300, 64)}
    for i in range(2):
        p = f"model.layers.{i}."
        shapes.update({p + "token_mixer.qkvu_proj.weight": (256, 64), p + "token_mixer.out_proj.weight": (64, 64),
                       p + "channel_mixer.l1.weight": (96, 64), p + "channel_mixer.l2.weight": (96, 64),
                       p + "channel_mixer.l3.weight": (64, 96)})
    shapes["model.layers.1.token_mixer.lrpe.theta"] = (4, 1, 16)
    assert sorted(shapes) == sorted(n for _, names in tensor_pairs(m) for n in names)
    hf = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    src = tmp_path / "hf"
    src.mkdir()
    save_file(hf, str(src / "model.safetensors"))
    (src / "config.json").write_text(json.dumps({**hf_config_from_model(m), "max_position_embeddings": 64}))
    run_cli("convert", "--from", "hf", "--to", "megatron", str(src), str(tmp_path / "mg"))
    assert "architecture: transnormer" in (tmp_path / "mg" / "recipe.yaml").read_text()
    run_cli("convert", "--from", "megatron", "--to", "hf", str(tmp_path / "mg"), str(tmp_path / "back"))
    back = {}
    for name in os.listdir(tmp_path / "back"):
        if name.endswith(".safetensors"):
            back.update(load_file(str(tmp_path / "back" / name)))
    assert torch.equal(back.pop("lm_head.weight"), hf["model.embed_tokens.weight"])  # tied: written for HF
    assert sorted(back) == sorted(hf)
    for k in hf:
        assert torch.equal(back[k], hf[k]), k
    assert json.loads((tmp_path / "back" / "config.json").read_text())["linear_use_lrpe_list"] == [0, 1]
