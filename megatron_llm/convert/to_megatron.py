"""HF checkpoint directory -> megatron_llm distributed checkpoint (weights only) + recipe.yaml + tokenizer/.

The megatron-core model is built once at TP1/PP1 in this process (its parameters allocated but never
initialised) and filled tensor by tensor from the lazily read HF files; dist_checkpointing then writes it in the
layout-independent format, so the target TP/PP only decides the recipe, the vocabulary padding and the checks.
Peak memory is about one copy of the model (measured and printed).
"""

from __future__ import annotations

import os
import shutil
from typing import Any, Dict, List, Optional

import torch
import yaml

from megatron_llm.convert import families
from megatron_llm.convert.hf_io import ConversionError, HFReader, copy_tokenizer, read_json

RECIPE = "recipe.yaml"
TOKENIZER_DIR = "tokenizer"


def check_layout(m: Dict[str, Any], tp: int, pp: int, vp: Optional[int], where: str) -> None:
    """Refuse a target layout the model cannot be split into (naming the flag), before writing anything."""
    for value, name in ((m["num_attention_heads"], "num_attention_heads"),
                        (m["num_query_groups"], "num_key_value_heads (query groups)"),
                        (m["ffn_hidden_size"], "intermediate_size")):
        if value % tp:
            raise ConversionError(f"{where}: {name} = {value} is not divisible by "
                                  f"--tensor-model-parallel-size {tp}")
    if vp and pp < 2:
        raise ConversionError("--num-layers-per-virtual-pipeline-stage needs --pipeline-model-parallel-size >= 2")
    per = pp * (vp or 1)
    if m["num_layers"] % per:
        flag = ("--pipeline-model-parallel-size x --num-layers-per-virtual-pipeline-stage" if vp
                else "--pipeline-model-parallel-size")
        raise ConversionError(f"{where}: num_hidden_layers = {m['num_layers']} is not divisible by {flag} = {per}")
    if vp and m["num_layers"] // pp % vp:
        raise ConversionError(f"{where}: {m['num_layers'] // pp} layers per pipeline stage are not divisible by "
                              f"--num-layers-per-virtual-pipeline-stage {vp}")


def _recipe(m: Dict[str, Any], tp: int, pp: int, vp: Optional[int], dtype: torch.dtype, out: str,
            tokenizer: List[str]) -> Dict[str, Any]:
    r: Dict[str, Any] = {k: m[k] for k in ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups",
                                           "ffn_hidden_size", "kv_channels", "vocab_size",
                                           "max_position_embeddings", "rotary_base", "norm_epsilon",
                                           "untie_embeddings_and_output_weights", "add_qkv_bias",
                                           "use_stable_embedding")}
    r.update({k: m[k] for k in ("architecture", "lrpe_layers") if k in m})  # TransNormerLLM
    r.update(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
             load=os.path.abspath(out), finetune=True)
    if vp:
        r["num_layers_per_virtual_pipeline_stage"] = vp
    if dtype == torch.bfloat16:
        r["bf16"] = True
    elif dtype == torch.float16:
        r["fp16"] = True
    tok_dir = os.path.join(os.path.abspath(out), TOKENIZER_DIR)
    if "tokenizer.json" in tokenizer:
        r.update(tokenizer_type="HuggingFaceTokenizer", tokenizer_model=tok_dir)
    elif "tokenizer.model" in tokenizer:
        r.update(tokenizer_type="SentencePieceTokenizer", tokenizer_model=os.path.join(tok_dir, "tokenizer.model"))
    return r


def _fill(model: torch.nn.Module, fam, m: Dict[str, Any], reader: HFReader) -> None:
    """Copy every parameter from the HF tensors, checking each shape; the padded vocabulary rows are zero."""
    params = families.weight_tensors(model)
    filled = set()
    read: List[str] = []  # the HF tensors behind the current parameter, for messages

    def get(hf_name: str) -> torch.Tensor:
        read.append(hf_name)
        return reader.get(hf_name)

    for name, make in families.hf_to_megatron(fam, m, get):
        if name not in params:
            raise ConversionError(f"internal: {name} is not a parameter of the megatron-core model")
        read.clear()
        t, p = make(), params[name].data
        if name in ("embedding.word_embeddings.weight", "output_layer.weight"):
            if t.shape[1:] != p.shape[1:] or t.shape[0] > p.shape[0]:
                raise ConversionError(f"{reader.directory}: tensor {read[0]} has shape {tuple(t.shape)}, expected "
                                      f"({m['vocab_size']}, {p.shape[1]}) from config.json")
            p[t.shape[0]:].zero_()
            p = p[: t.shape[0]]
        if t.shape != p.shape:
            raise ConversionError(f"{reader.directory}: tensor {' + '.join(read)} gives {name} the shape "
                                  f"{tuple(t.shape)}, expected {tuple(p.shape)} from config.json (a tensor of "
                                  f"another model, or a config that does not match the weights)")
        p.copy_(t)
        filled.add(name)
        del t
    missing = sorted(set(params) - filled)
    if missing:
        raise ConversionError(f"internal: no HF tensor mapped to {', '.join(missing)}")


@torch.no_grad()
def convert(src: str, out: str, tp: int = 1, pp: int = 1, vp: Optional[int] = None,
            tokenizer: Optional[str] = None, log=print) -> str:
    """Convert; returns `out`. `out` appears only when complete (written as out.partial, then renamed)."""
    from megatron_llm.inference import session
    from megatron_llm.models.llama import padded_vocab_size
    from megatron_llm.perf.throughput import host_rss_gb
    from megatron_llm.training.checkpointing import save_weights

    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise ConversionError(f"{out}: already exists; choose a new output directory or remove it")
    reader = HFReader(src)
    where = os.path.join(src, "config.json")
    fam = families.family_of(reader.config, where)
    m = families.model_fields(fam, reader.config, where)
    check_layout(m, tp, pp, vp, where)
    dtype = reader.dtype()
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ConversionError(f"{src}: weights of dtype {dtype} (quantized?) are not supported; give float32, "
                              f"bfloat16 or float16 weights")
    rows = padded_vocab_size(m["vocab_size"], tp)  # what a TP-`tp` run builds (default divisible-by)
    tmp = out.rstrip("/") + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        cfg = session.run_config(m, dtype=dtype)
        with session.single_process(cfg):
            model = session.build_model(cfg, rows, "cpu", m["vocab_size"])[0]
            _fill(model, fam, m, reader)
            model_gb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2 ** 30
            gen_path = os.path.join(src, "generation_config.json")
            extra = {"hf": {"family": fam.name, "config": reader.config, "vocab_size": m["vocab_size"],
                            "generation_config": read_json(gen_path) if os.path.isfile(gen_path) else None}}
            save_weights(cfg, [model], tmp, 0, extra=extra)
            del model
        copied = copy_tokenizer(tokenizer or src, os.path.join(tmp, TOKENIZER_DIR))
        recipe = _recipe(m, tp, pp, vp, dtype, out, copied)
        with open(os.path.join(tmp, RECIPE), "w") as f:
            yaml.safe_dump(recipe, f, sort_keys=False)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"[megatron-llm] converted {src} ({fam.name}) -> {out}: TP{tp} x PP{pp}"
        f"{f' x VP{vp}' if vp else ''}, vocab {m['vocab_size']} padded to {rows}; "
        f"model {model_gb:.2f} GiB, peak RSS {host_rss_gb():.2f} GiB; "
        f"continue with: megatron-llm train --recipe {os.path.join(out, RECIPE)} --data-path ...")
    return out
