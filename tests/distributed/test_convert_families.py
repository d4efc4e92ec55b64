"""Each supported family, as a small random model: converted to megatron_llm it gives the reference logits, and
converted back it gives the same tensors. References: transformers' own classes for Llama (sharded safetensors),
Mistral (.bin) and Qwen2 (q/k/v biases, tied embeddings); for Baichuan-7B and Open-Llama (not in transformers
any more) a forward written here from their published modeling code: RMSNorm, rotate-half RoPE, SwiGLU, with
Baichuan's W_pack = [q; k; v] and Open-Llama's stable embedding (LayerNorm after the embedding) and shared
input/output embedding."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hf_reference import layout_logits, safetensors_dir

transformers = pytest.importorskip("transformers")

VOCAB = 256  # a multiple of 128 x TP2: no vocabulary padding
SHAPE = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             max_position_embeddings=64, rms_norm_eps=1e-5)


def _randomize(model, seed: int):
    """HF initialises biases to zero and norms to one; random values make every tensor's mapping visible."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (1.0 if p.dim() == 1 and p.shape[0] == 64 else 0.0))
    return model.eval()


def _bin_dir(model, d: Path):
    """A pytorch_model.bin checkpoint, as older releases ship."""
    d.mkdir(parents=True)
    model.config.to_json_file(d / "config.json")
    torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, d / "pytorch_model.bin")


def reference_forward(sd, cfg, tokens: torch.Tensor) -> torch.Tensor:
    """Baichuan-7B's (modeling_baichuan.py) or Open-Llama's (modeling_open_llama.py) forward on a state dict."""
    h_dim, heads, eps = cfg["hidden_size"], cfg["num_attention_heads"], cfg["rms_norm_eps"]
    d = h_dim // heads
    b, s = tokens.shape

    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    inv_freq = 1.0 / (10000 ** (torch.arange(0, d, 2).float() / d))
    freqs = torch.outer(torch.arange(s).float(), inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    cos, sin = emb.cos(), emb.sin()

    def rotate_half(x):
        x1, x2 = x[..., : d // 2], x[..., d // 2:]
        return torch.cat([-x2, x1], dim=-1)

    h = sd["model.embed_tokens.weight"][tokens]
    if cfg.get("use_stable_embedding"):
        h = torch.nn.functional.layer_norm(h, (h_dim,), sd["model.embed_layer_norm.weight"],
                                           sd["model.embed_layer_norm.bias"], eps=1e-5)
    mask = torch.full((s, s), float("-inf")).triu(1)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        x = rms(h, sd[p + "input_layernorm.weight"])
        if p + "self_attn.W_pack.weight" in sd:
            q, k, v = (x @ sd[p + "self_attn.W_pack.weight"].T).split(h_dim, dim=-1)
        else:
            q, k, v = (x @ sd[f"{p}self_attn.{n}_proj.weight"].T for n in "qkv")
        q, k, v = (t.view(b, s, heads, d).transpose(1, 2) for t in (q, k, v))
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d) + mask, dim=-1)
        o = (att @ v).transpose(1, 2).reshape(b, s, h_dim)
        h = h + o @ sd[p + "self_attn.o_proj.weight"].T
        x = rms(h, sd[p + "post_attention_layernorm.weight"])
        gate, up = x @ sd[p + "mlp.gate_proj.weight"].T, x @ sd[p + "mlp.up_proj.weight"].T
        h = h + (torch.nn.functional.silu(gate) * up) @ sd[p + "mlp.down_proj.weight"].T
    head = sd["model.embed_tokens.weight"] if cfg.get("shared_input_output_embedding") else sd["lm_head.weight"]
    return rms(h, sd["model.norm.weight"]) @ head.T


def _reference_dir(d: Path, seed: int, open_llama: bool):
    """A Baichuan-7B or an Open-Llama checkpoint with random weights."""
    d.mkdir(parents=True)
    g = torch.Generator().manual_seed(seed)
    h, f, L = SHAPE["hidden_size"], SHAPE["intermediate_size"], SHAPE["num_hidden_layers"]
    sd = {"model.embed_tokens.weight": torch.randn(VOCAB, h, generator=g) * 0.1,
          "model.norm.weight": 1 + 0.1 * torch.randn(h, generator=g)}
    if open_llama:
        sd["model.embed_layer_norm.weight"] = 1 + 0.1 * torch.randn(h, generator=g)
        sd["model.embed_layer_norm.bias"] = 0.1 * torch.randn(h, generator=g)
        attn = [(f"self_attn.{n}_proj.weight", (h, h)) for n in "qkv"]
    else:
        sd["lm_head.weight"] = torch.randn(VOCAB, h, generator=g) * 0.1
        attn = [("self_attn.W_pack.weight", (3 * h, h))]
    for i in range(L):
        p = f"model.layers.{i}."
        for name, shape in (*attn, ("self_attn.o_proj.weight", (h, h)),
                            ("mlp.gate_proj.weight", (f, h)), ("mlp.up_proj.weight", (f, h)),
                            ("mlp.down_proj.weight", (h, f))):
            sd[p + name] = torch.randn(*shape, generator=g) * 0.1
        sd[p + "input_layernorm.weight"] = 1 + 0.1 * torch.randn(h, generator=g)
        sd[p + "post_attention_layernorm.weight"] = 1 + 0.1 * torch.randn(h, generator=g)
    if open_llama:
        cfg = {"architectures": ["OpenLlamaForCausalLM"], "model_type": "open-llama", "hidden_act": "silu",
               "use_stable_embedding": True, "shared_input_output_embedding": True, **SHAPE}
    else:
        cfg = {"architectures": ["BaiChuanForCausalLM"], "model_type": "baichuan", "hidden_act": "silu",
               "tie_word_embeddings": False, **SHAPE}
    (d / "config.json").write_text(json.dumps(cfg))
    from safetensors.torch import save_file

    save_file(sd, d / "model.safetensors", metadata={"format": "pt"})
    return sd, cfg


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    t = transformers
    refs = {}
    llama = _randomize(t.LlamaForCausalLM(t.LlamaConfig(num_key_value_heads=2, tie_word_embeddings=False,
                                                        **SHAPE)), 1)
    llama.save_pretrained(root / "llama" / "hf", max_shard_size="100KB")  # sharded, with an index
    refs["llama"] = llama
    mistral = _randomize(t.MistralForCausalLM(t.MistralConfig(num_key_value_heads=2, sliding_window=None,
                                                              **SHAPE)), 2)
    _bin_dir(mistral, root / "mistral" / "hf")
    refs["mistral"] = mistral
    qwen2 = _randomize(t.Qwen2ForCausalLM(t.Qwen2Config(num_key_value_heads=2, tie_word_embeddings=True,
                                                        use_sliding_window=False, **SHAPE)), 3)
    qwen2.save_pretrained(root / "qwen2" / "hf")
    refs["qwen2"] = qwen2
    written = {"baichuan": _reference_dir(root / "baichuan" / "hf", 4, open_llama=False),
               "open-llama": _reference_dir(root / "open-llama" / "hf", 6, open_llama=True)}
    tokens = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(5))
    torch.save(tokens, root / "tokens.pt")
    job = Path(__file__).with_name("convert_families_job.py")
    proc = subprocess.run([sys.executable, str(job), str(root), *refs, *written], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-5000:]
    with torch.no_grad():
        expected = {name: m(tokens).logits.float() for name, m in refs.items()}
        expected.update({name: reference_forward(sd, cfg, tokens) for name, (sd, cfg) in written.items()})
    return root, tokens, expected


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "baichuan", "open-llama"])
def test_logits_match_reference(converted, family):
    root, _, expected = converted
    got = torch.load(root / family / "logits.pt")
    diff = (got - expected[family]).abs().max().item()
    assert diff < 1e-4, f"{family}: max |logits - reference| = {diff}"


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "baichuan", "open-llama"])
def test_round_trip_same_tensors(converted, family):
    root, _, _ = converted
    src = root / family / "hf"
    a = safetensors_dir(src) if list(src.glob("*.safetensors")) else torch.load(src / "pytorch_model.bin")
    if family == "qwen2":
        a.pop("lm_head.weight", None)  # tied: HF writes it only when untied
    b = safetensors_dir(root / family / "back")
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    src_cfg = json.loads((src / "config.json").read_text())
    back_cfg = json.loads((root / family / "back" / "config.json").read_text())
    src_cfg.setdefault("architectures", back_cfg["architectures"])  # added where the source had none
    assert back_cfg == src_cfg


def test_qwen2_biases_split_over_tensor_parallel(converted, tmp_path):
    """q/k/v biases are sharded with their weights: the same logits at TP2 and PP2."""
    root, tokens, expected = converted
    got = layout_logits(root / "qwen2" / "mg", tokens, "2x1,1x2", 2, tmp_path)
    for layout, logits in got.items():
        assert (logits - expected["qwen2"]).abs().max().item() < 1e-4, layout
