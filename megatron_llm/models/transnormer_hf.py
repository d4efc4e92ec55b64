"""The released TransNormerLLM checkpoint layout (Hugging Face, trust_remote_code "transnormer") <-> our model.

config.json keys (OpenNLPLab/TransNormerLLM-*): decoder_embed_dim, decoder_layers, decoder_attention_heads, glu_dim,
hidden_dim, vocab_size, linear_use_lrpe_list (one 0/1 per layer), norm_type "simplermsnorm", linear_act_fun "silu",
bias false, no_scale_embedding false. Parameters (no norm weights: SRMSNorm has none):

    model.embed_tokens.weight                          embedding.word_embeddings.weight (vocabulary padded)
    model.layers.L.token_mixer.qkvu_proj.weight        decoder.layers.L.self_attention.linear_qkvu.weight
    model.layers.L.token_mixer.out_proj.weight         decoder.layers.L.self_attention.linear_proj.weight
    model.layers.L.token_mixer.lrpe.theta              decoder.layers.L.self_attention.theta   (LRPE layers)
    model.layers.L.channel_mixer.l1 / l2 .weight       decoder.layers.L.mlp.linear_fc1.weight = [l1; l2]
    model.layers.L.channel_mixer.l3.weight             decoder.layers.L.mlp.linear_fc2.weight
    lm_head.weight                                     output_layer.weight (the embedding when tied)

Our side is the unsharded (TP1, whole-model) state dict; torch-free apart from tensor slicing, so the convert verb
can use it on gathered weights.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

from megatron_llm.config.model import ModelConfig

ACTIVATIONS = ("silu", "swish")


class HFLayoutError(ValueError):
    """A config.json or state dict this mapping cannot represent; the message names the key."""


def model_config_from_hf(hf: Dict[str, Any], source: str = "config.json") -> ModelConfig:
    def need(key):
        if key not in hf:
            raise HFLayoutError(f"{source}: missing key {key!r} (not a TransNormerLLM config?)")
        return hf[key]

    if hf.get("model_type", "transnormer") != "transnormer":
        raise HFLayoutError(f"{source}: model_type is {hf['model_type']!r}, expected 'transnormer'")
    for key, ok, what in (("norm_type", lambda v: v == "simplermsnorm", "'simplermsnorm'"),
                          ("linear_act_fun", lambda v: v in ACTIVATIONS, "'silu'"),
                          ("bias", lambda v: not v, "false"),
                          ("no_scale_embedding", lambda v: not v, "false")):
        if key in hf and not ok(hf[key]):
            raise HFLayoutError(f"{source}: {key} = {hf[key]!r} is not supported (only {what})")
    h, layers = int(need("decoder_embed_dim")), int(need("decoder_layers"))
    if int(hf.get("hidden_dim", h)) != h:
        raise HFLayoutError(f"{source}: hidden_dim {hf['hidden_dim']} != decoder_embed_dim {h} is not supported")
    lrpe = list(hf.get("linear_use_lrpe_list") or [])
    if lrpe and len(lrpe) != layers:
        raise HFLayoutError(f"{source}: linear_use_lrpe_list has {len(lrpe)} entries for {layers} layers")
    heads = int(need("decoder_attention_heads"))
    return ModelConfig(architecture="transnormer", num_layers=layers, hidden_size=h, num_attention_heads=heads,
                       ffn_hidden_size=int(need("glu_dim")), vocab_size=int(need("vocab_size")),
                       lrpe_layers=[i for i, on in enumerate(lrpe) if on],
                       untie_embeddings_and_output_weights=not hf.get("tie_word_embeddings", True),
                       norm_epsilon=1e-6, init_method_std=float(hf.get("init_std", 0.02)))


def hf_config_from_model(m: ModelConfig) -> Dict[str, Any]:
    lrpe = set(m.lrpe_layers or [])
    return {
        "architectures": ["TransnormerForCausalLM"], "model_type": "transnormer",
        "decoder_embed_dim": m.hidden_size, "decoder_layers": m.num_layers,
        "decoder_attention_heads": m.num_attention_heads, "hidden_dim": m.num_attention_heads * m.head_dim,
        "glu_dim": m.ffn_hidden_size, "vocab_size": m.vocab_size,
        "linear_use_lrpe_list": [1 if i in lrpe else 0 for i in range(m.num_layers)],
        "norm_type": "simplermsnorm", "linear_act_fun": "silu", "bias": False, "no_scale_embedding": False,
        "tie_word_embeddings": not m.untie_embeddings_and_output_weights, "init_std": m.init_method_std,
        "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "use_cache": True,
    }


VOCAB_TENSORS = ("embedding.word_embeddings.weight", "output_layer.weight")


def tensor_pairs(m: ModelConfig) -> List[Tuple[str, Tuple[str, ...]]]:
    """(our tensor, the HF tensors it is made of, stacked along dim 0), in HF's order. The tied lm_head is not
    listed: it is the embedding."""
    pairs = [("embedding.word_embeddings.weight", ("model.embed_tokens.weight",))]
    lrpe = set(m.lrpe_layers or [])
    for i in range(m.num_layers):
        ours, hf = f"decoder.layers.{i}.", f"model.layers.{i}."
        pairs.append((ours + "self_attention.linear_qkvu.weight", (hf + "token_mixer.qkvu_proj.weight",)))
        pairs.append((ours + "self_attention.linear_proj.weight", (hf + "token_mixer.out_proj.weight",)))
        if i in lrpe:
            pairs.append((ours + "self_attention.theta", (hf + "token_mixer.lrpe.theta",)))
        pairs.append((ours + "mlp.linear_fc1.weight", (hf + "channel_mixer.l1.weight", hf + "channel_mixer.l2.weight")))
        pairs.append((ours + "mlp.linear_fc2.weight", (hf + "channel_mixer.l3.weight",)))
    if m.untie_embeddings_and_output_weights:
        pairs.append(("output_layer.weight", ("lm_head.weight",)))
    return pairs


def join(parts):
    import torch

    return parts[0].clone() if len(parts) == 1 else torch.cat(parts, dim=0)


def split(t, n: int):
    return [p.clone() for p in t.chunk(n, dim=0)] if n > 1 else [t.clone()]


def _pad_rows(t, rows: int):
    if t.shape[0] > rows:
        raise HFLayoutError(f"vocabulary of {t.shape[0]} rows does not fit the padded model's {rows}")
    out = t.new_zeros((rows,) + tuple(t.shape[1:]))
    out[: t.shape[0]] = t
    return out


def hf_to_megatron(hf_sd: Dict[str, Any], m: ModelConfig, padded_vocab: int) -> Dict[str, Any]:
    """HF state dict -> our whole-model state dict (vocabulary rows zero-padded to `padded_vocab`)."""
    def take(key):
        if key not in hf_sd:
            raise HFLayoutError(f"checkpoint has no tensor {key!r}")
        return hf_sd[key]

    out = {}
    for ours, names in tensor_pairs(m):
        t = join([take(n) for n in names])
        out[ours] = _pad_rows(t, padded_vocab) if ours in VOCAB_TENSORS else t
    return out


def megatron_to_hf(sd: Dict[str, Any], m: ModelConfig) -> Dict[str, Any]:
    """Our whole-model state dict -> the HF layout (padding rows dropped; lm_head = the embedding when tied)."""
    out = {}
    for ours, names in tensor_pairs(m):
        t = sd[ours][: m.vocab_size] if ours in VOCAB_TENSORS else sd[ours]
        out.update(zip(names, split(t, len(names))))
    if not m.untie_embeddings_and_output_weights:
        out["lm_head.weight"] = out["model.embed_tokens.weight"].clone()
    return out
