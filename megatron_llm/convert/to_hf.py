"""megatron_llm checkpoint (any layout) -> HF directory that transformers' AutoModelForCausalLM loads:
config.json, safetensors shards (+ index), generation_config.json, tokenizer files."""

from __future__ import annotations

import os
import shutil
from typing import Optional

import torch

from megatron_llm.convert import families
from megatron_llm.convert.hf_io import ConversionError, ShardWriter, copy_tokenizer, write_json


@torch.no_grad()
def convert(src: str, out: str, tokenizer: Optional[str] = None, max_shard_bytes: int = 5 * 10 ** 9,
            log=print) -> str:
    from megatron_llm.inference import session
    from megatron_llm.perf.throughput import host_rss_gb

    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise ConversionError(f"{out}: already exists; choose a new output directory or remove it")
    info = session.checkpoint_info(src)
    hf = info.common.get("hf") or {}
    fam = families.by_name(hf.get("family", "llama"))
    m = dict(info.model)
    tmp = out.rstrip("/") + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        cfg = session.run_config(m, dtype=info.dtype, load=os.path.dirname(info.path))
        with session.single_process(cfg):
            model = session.build_model(cfg, info.vocab_rows, "cpu", info.vocab_size)[0]
            session.load_weights(cfg, [model])
            params = families.weight_tensors(model)

            def get(name: str) -> torch.Tensor:
                t = params[name].detach()
                if name in ("embedding.word_embeddings.weight", "output_layer.weight"):
                    t = t[: info.vocab_size]  # drop the vocabulary padding
                return t

            writer = ShardWriter(tmp, max_shard_bytes)
            for name, tensor in families.megatron_to_hf(fam, m, get):
                writer.add(name, tensor)
            writer.close()
            del model, params
        config = dict(hf.get("config") or families.hf_config_for(m))
        config.setdefault("architectures", [fam.architectures[0]])  # vLLM picks the model class by it
        write_json(os.path.join(tmp, "config.json"), config)
        gen = hf.get("generation_config") or {k: config[k] for k in ("bos_token_id", "eos_token_id") if k in config}
        write_json(os.path.join(tmp, "generation_config.json"), gen)
        tok_src = tokenizer or os.path.join(src, "tokenizer")
        if os.path.isdir(tok_src):
            copy_tokenizer(tok_src, tmp)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"[megatron-llm] converted {info.path} -> {out} ({config['architectures'][0]}, "
        f"{len(writer.files)} shard(s)); peak RSS {host_rss_gb():.2f} GiB")
    return out
