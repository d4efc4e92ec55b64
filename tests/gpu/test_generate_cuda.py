"""`generate --device cuda` (NCCL, no emulation, KV cache on the GPU) picks the same greedy tokens as the CPU run
of the same converted checkpoint (run on the lent GPU; skipped without CUDA)."""

import json
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _cli(*args):
    proc = subprocess.run([sys.executable, "-m", "megatron_llm.cli", *args], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_cuda_greedy_equals_cpu(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    tokenizers = pytest.importorskip("tokenizers")
    hf = tmp_path / "hf"
    hf.mkdir()
    h, f, v, layers = 128, 256, 256, 2
    g = torch.Generator().manual_seed(0)
    sd = {"model.embed_tokens.weight": torch.randn(v, h, generator=g), "model.norm.weight": torch.ones(h),
          "lm_head.weight": torch.randn(v, h, generator=g) * 0.1}
    for i in range(layers):
        p = f"model.layers.{i}."
        for name, shape in (("self_attn.q_proj.weight", (h, h)), ("self_attn.k_proj.weight", (h // 2, h)),
                            ("self_attn.v_proj.weight", (h // 2, h)), ("self_attn.o_proj.weight", (h, h)),
                            ("mlp.gate_proj.weight", (f, h)), ("mlp.up_proj.weight", (f, h)),
                            ("mlp.down_proj.weight", (h, f))):
            sd[p + name] = torch.randn(*shape, generator=g) * 0.1
        sd[p + "input_layernorm.weight"] = torch.ones(h)
        sd[p + "post_attention_layernorm.weight"] = torch.ones(h)
    safetensors.save_file(sd, hf / "model.safetensors", metadata={"format": "pt"})
    (hf / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "hidden_size": h, "intermediate_size": f, "num_hidden_layers": layers,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": v, "max_position_embeddings": 128}))
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(["In the beginning God created the heaven and the earth."],
                            tokenizers.trainers.BpeTrainer(vocab_size=v, special_tokens=["<|endoftext|>"]))
    tok.save(str(hf / "tokenizer.json"))
    _cli("convert", "--from", "hf", "--to", "megatron", str(hf), str(tmp_path / "mg"))
    args = ["generate", "--load", str(tmp_path / "mg"), "--prompt", "In the beginning", "--max-new-tokens", "16",
            "--ids"]
    assert _cli(*args, "--device", "cuda").split() == _cli(*args, "--device", "cpu").split()
