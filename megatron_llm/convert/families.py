"""Model families we convert: HF config.json <-> ModelConfig fields, and HF tensor names <-> megatron-core's.

All supported families are Llama-shaped decoders (RMSNorm, RoPE with rotate-half, SwiGLU, optional GQA); they
differ in names, QKV packing and a few config keys:
  llama   LlamaForCausalLM (Llama 1/2/3, TinyLlama, HammerLLM, Tiny-LLM, OpenLLaMA, SmolLM)
  mistral MistralForCausalLM (without a sliding window)
  qwen2   Qwen2ForCausalLM: biases on q/k/v (megatron-core's add_qkv_bias)
  baichuan  BaiChuanForCausalLM / BaichuanForCausalLM (Baichuan-7B): q, k, v fused in one W_pack matrix
  open-llama  OpenLlamaForCausalLM (s-JoL's Open-Llama; transformers <= 4.31): stable embedding (LayerNorm after
            the embedding) and shared input/output embedding
and one linear-attention family, mapped by megatron_llm/models/transnormer_hf.py:
  transnormer  TransnormerForCausalLM (OpenNLPLab's TransNormerLLM-385M/1B/7B, trust_remote_code)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterator, Tuple

import torch

from megatron_llm.convert.hf_io import ConversionError


@dataclass(frozen=True)
class Family:
    name: str
    architectures: Tuple[str, ...]
    w_pack: bool = False  # Baichuan-7B: one [q; k; v] matrix
    qkv_bias: bool = False  # Qwen2
    sliding_window_key: str = ""  # Mistral/Qwen2: a config key that must be unset (no sliding-window attention)
    model_types: Tuple[str, ...] = ()  # config.json's model_type, used when it has no "architectures"
    stable_embedding: bool = False  # Open-Llama: LayerNorm after the embedding (config use_stable_embedding)


FAMILIES = (
    Family("llama", ("LlamaForCausalLM",), model_types=("llama",)),
    Family("mistral", ("MistralForCausalLM",), sliding_window_key="sliding_window", model_types=("mistral",)),
    Family("qwen2", ("Qwen2ForCausalLM",), qkv_bias=True, sliding_window_key="use_sliding_window",
           model_types=("qwen2",)),
    Family("baichuan", ("BaiChuanForCausalLM", "BaichuanForCausalLM"), w_pack=True, model_types=("baichuan",)),
    Family("open-llama", ("OpenLlamaForCausalLM",), model_types=("open-llama",), stable_embedding=True),
    Family("transnormer", ("TransnormerForCausalLM",), model_types=("transnormer",)),
)
_TRANSNORMER_FIELDS = ("architecture", "num_layers", "hidden_size", "num_attention_heads", "num_query_groups",
                       "ffn_hidden_size", "kv_channels", "vocab_size", "norm_epsilon",
                       "untie_embeddings_and_output_weights", "lrpe_layers", "init_method_std")


def _transnormer_config(m: Dict[str, Any]):
    from megatron_llm.config.model import ModelConfig

    return ModelConfig(**{k: m[k] for k in _TRANSNORMER_FIELDS if k in m})


def weight_tensors(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """The model's converted tensors by name (TransNormer's LRPE angles are parameters too, as in the public code)."""
    return dict(model.named_parameters())


SUPPORTED = ", ".join(a for f in FAMILIES for a in f.architectures)


def family_of(hf_config: Dict[str, Any], where: str) -> Family:
    archs = hf_config.get("architectures") or []
    for fam in FAMILIES:
        if any(a in fam.architectures for a in archs) or (not archs and hf_config.get("model_type") in
                                                          fam.model_types):
            return fam
    raise ConversionError(f"{where}: architecture {archs or hf_config.get('model_type')!r} is not supported; "
                          f"supported: {SUPPORTED}")


def by_name(name: str) -> Family:
    for fam in FAMILIES:
        if fam.name == name:
            return fam
    raise ConversionError(f"unknown family {name!r}; known: {', '.join(f.name for f in FAMILIES)}")


def model_fields(fam: Family, c: Dict[str, Any], where: str) -> Dict[str, Any]:
    """ModelConfig fields (Megatron-LM flag names) for a HF config, refusing what we would convert wrongly."""
    if fam.name == "transnormer":
        from megatron_llm.models.transnormer_hf import HFLayoutError, model_config_from_hf

        try:
            m = model_config_from_hf(c, where)
        except HFLayoutError as e:
            raise ConversionError(str(e)) from None
        fields = {k: getattr(m, k) for k in _TRANSNORMER_FIELDS}
        return {**fields, "max_position_embeddings": int(c.get("max_position_embeddings", 2048)),
                "rotary_base": m.rotary_base, "add_qkv_bias": False, "use_stable_embedding": False}

    def refuse(what: str) -> None:
        raise ConversionError(f"{where}: {what} is not supported by the converter (architecture "
                              f"{fam.architectures[0]})")

    act = c.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        refuse(f"hidden_act {act!r} (only SwiGLU with silu)")
    # transformers < 5 writes rope_theta + rope_scaling, >= 5 one rope_parameters mapping
    rope = dict(c.get("rope_parameters") or {})
    scaling = c.get("rope_scaling") or rope
    if scaling and (scaling.get("rope_type") or scaling.get("type")) not in (None, "default"):
        refuse(f"RoPE scaling {scaling!r} (Llama-3.1 / linear / dynamic / yarn)")
    rope_theta = c.get("rope_theta", rope.get("rope_theta", 10000.0))
    if fam.sliding_window_key and c.get(fam.sliding_window_key) not in (None, False):
        if fam.name != "qwen2" or c.get("use_sliding_window"):
            refuse(f"{fam.sliding_window_key}={c.get(fam.sliding_window_key)!r} (sliding-window attention)")
    if c.get("mlp_bias"):
        refuse("mlp_bias=true")
    if c.get("attention_bias") and not fam.qkv_bias:
        refuse("attention_bias=true (biases on q/k/v and the output projection)")
    heads = int(c["num_attention_heads"])
    hidden = int(c["hidden_size"])
    tied = c.get("shared_input_output_embedding" if fam.stable_embedding else "tie_word_embeddings", False)
    return {
        "num_layers": int(c["num_hidden_layers"]),
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "num_query_groups": int(c.get("num_key_value_heads") or heads),
        "ffn_hidden_size": int(c["intermediate_size"]),
        "kv_channels": int(c.get("head_dim") or hidden // heads),
        "vocab_size": int(c["vocab_size"]),
        "max_position_embeddings": int(c.get("max_position_embeddings", 2048)),
        "rotary_base": float(rope_theta),
        "norm_epsilon": float(c.get("rms_norm_eps", 1e-6)),
        "untie_embeddings_and_output_weights": not bool(tied),
        "add_qkv_bias": fam.qkv_bias,
        "use_stable_embedding": bool(fam.stable_embedding and c.get("use_stable_embedding", True)),
    }


def hf_config_for(model: Dict[str, Any]) -> Dict[str, Any]:
    """config.json of a LlamaForCausalLM (or TransnormerForCausalLM) for a model trained here (no HF config to
    restore)."""
    if model.get("architecture") == "transnormer":
        from megatron_llm.models.transnormer_hf import hf_config_from_model

        return hf_config_from_model(_transnormer_config(model))
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "num_hidden_layers": model["num_layers"], "hidden_size": model["hidden_size"],
        "num_attention_heads": model["num_attention_heads"], "num_key_value_heads": model["num_query_groups"],
        "intermediate_size": model["ffn_hidden_size"], "head_dim": model["kv_channels"],
        "vocab_size": model["vocab_size"], "max_position_embeddings": model["max_position_embeddings"],
        "rope_theta": model["rotary_base"], "rms_norm_eps": model["norm_epsilon"],
        "tie_word_embeddings": not model["untie_embeddings_and_output_weights"],
        "attention_bias": False, "mlp_bias": False, "torch_dtype": "float32",
    }


# ---- tensors ----------------------------------------------------------------------------------------------------

# (megatron-core name under decoder.layers.{i}., HF name under model.layers.{i}.) copied as they are
_LAYER_COPIES = (
    ("input_layernorm.weight", "input_layernorm.weight"),
    ("pre_mlp_layernorm.weight", "post_attention_layernorm.weight"),
    ("self_attention.linear_proj.weight", "self_attn.o_proj.weight"),
    ("mlp.linear_fc2.weight", "mlp.down_proj.weight"),
)


def _qkv_pack(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, groups: int) -> torch.Tensor:
    """megatron-core's fused QKV: per query group, its query heads then its key head then its value head."""
    tail = q.shape[1:]
    return torch.cat([q.reshape(groups, -1, *tail), k.reshape(groups, -1, *tail), v.reshape(groups, -1, *tail)],
                     dim=1).reshape(-1, *tail)


def _qkv_unpack(qkv: torch.Tensor, groups: int, heads: int, d: int):
    tail = qkv.shape[1:]
    per = qkv.reshape(groups, (heads // groups + 2) * d, *tail)
    q, k, v = per.split([heads // groups * d, d, d], dim=1)
    return q.reshape(-1, *tail), k.reshape(-1, *tail), v.reshape(-1, *tail)


def hf_to_megatron(fam: Family, m: Dict[str, Any], get) -> Iterator[Tuple[str, Any]]:
    """(megatron-core parameter name at TP1/PP1, a function returning its tensor from `get(hf_name)`)."""
    if fam.name == "transnormer":
        from megatron_llm.models.transnormer_hf import join, tensor_pairs

        for ours, names in tensor_pairs(_transnormer_config(m)):
            yield ours, (lambda names=names: join([get(n) for n in names]))
        return
    groups = m["num_query_groups"]
    yield "embedding.word_embeddings.weight", lambda: get("model.embed_tokens.weight")
    if m.get("use_stable_embedding"):
        for part in ("weight", "bias"):
            yield f"embedding.stable_norm.{part}", (lambda part=part: get(f"model.embed_layer_norm.{part}"))
    for i in range(m["num_layers"]):
        pre, hf = f"decoder.layers.{i}.", f"model.layers.{i}."
        for ours, theirs in _LAYER_COPIES:
            yield pre + ours, (lambda n=hf + theirs: get(n))
        if fam.w_pack:
            def qkv(hf=hf):
                q, k, v = get(hf + "self_attn.W_pack.weight").chunk(3, dim=0)
                return _qkv_pack(q, k, v, groups)
        else:
            def qkv(hf=hf, part="weight"):
                return _qkv_pack(*(get(f"{hf}self_attn.{x}_proj.{part}") for x in "qkv"), groups)
        yield pre + "self_attention.linear_qkv.weight", qkv
        if fam.qkv_bias:
            yield pre + "self_attention.linear_qkv.bias", (lambda hf=hf: qkv(hf, "bias"))
        yield pre + "mlp.linear_fc1.weight", (
            lambda hf=hf: torch.cat([get(hf + "mlp.gate_proj.weight"), get(hf + "mlp.up_proj.weight")], dim=0))
    yield "decoder.final_layernorm.weight", lambda: get("model.norm.weight")
    if m["untie_embeddings_and_output_weights"]:
        yield "output_layer.weight", lambda: get("lm_head.weight")


def megatron_to_hf(fam: Family, m: Dict[str, Any], get) -> Iterator[Tuple[str, torch.Tensor]]:
    """(HF name, tensor) from `get(megatron-core name)`, in HF's usual order."""
    if fam.name == "transnormer":
        from megatron_llm.models.transnormer_hf import split, tensor_pairs

        tm = _transnormer_config(m)
        for ours, names in tensor_pairs(tm):
            yield from zip(names, split(get(ours), len(names)))
        if not tm.untie_embeddings_and_output_weights:
            yield "lm_head.weight", get("embedding.word_embeddings.weight").clone()  # its own tensor in the file
        return
    groups, heads, d = m["num_query_groups"], m["num_attention_heads"], m["kv_channels"]
    yield "model.embed_tokens.weight", get("embedding.word_embeddings.weight")
    if m.get("use_stable_embedding"):
        for part in ("weight", "bias"):
            yield f"model.embed_layer_norm.{part}", get(f"embedding.stable_norm.{part}")
    for i in range(m["num_layers"]):
        pre, hf = f"decoder.layers.{i}.", f"model.layers.{i}."
        q, k, v = _qkv_unpack(get(pre + "self_attention.linear_qkv.weight"), groups, heads, d)
        if fam.w_pack:
            yield hf + "self_attn.W_pack.weight", torch.cat([q, k, v], dim=0)
        else:
            yield from ((f"{hf}self_attn.{x}_proj.weight", t) for x, t in zip("qkv", (q, k, v)))
        if fam.qkv_bias:
            qb, kb, vb = _qkv_unpack(get(pre + "self_attention.linear_qkv.bias"), groups, heads, d)
            yield from ((f"{hf}self_attn.{x}_proj.bias", t) for x, t in zip("qkv", (qb, kb, vb)))
        yield hf + "self_attn.o_proj.weight", get(pre + "self_attention.linear_proj.weight")
        gate, up = get(pre + "mlp.linear_fc1.weight").chunk(2, dim=0)
        yield hf + "mlp.gate_proj.weight", gate
        yield hf + "mlp.up_proj.weight", up
        yield hf + "mlp.down_proj.weight", get(pre + "mlp.linear_fc2.weight")
        yield hf + "input_layernorm.weight", get(pre + "input_layernorm.weight")
        yield hf + "post_attention_layernorm.weight", get(pre + "pre_mlp_layernorm.weight")
    yield "model.norm.weight", get("decoder.final_layernorm.weight")
    if m["untie_embeddings_and_output_weights"]:
        yield "lm_head.weight", get("output_layer.weight")
