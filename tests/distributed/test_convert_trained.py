"""A checkpoint trained here (TP2 x PP2, untied, GQA; no HF config recorded) converts to a HF directory that
transformers loads as a LlamaForCausalLM giving the checkpoint's own logits; `generate` on one process and split
over TP2 greedy-decodes the tokens HF's generate picks."""

from __future__ import annotations

import pytest
import torch

from hf_reference import layout_logits, run_cli
from trainrun import VOCAB, check, train

transformers = pytest.importorskip("transformers")


def test_trained_tp2pp2_checkpoint_to_hf(tmp_path):
    ckpt = tmp_path / "ckpt"
    check(train(tmp_path, None, 4, ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2",
                                    "--save", str(ckpt)], iters=2, gbs=4, mbs=1))
    run_cli("convert", "--from", "megatron", "--to", "hf", str(ckpt), str(tmp_path / "hf"))
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_key_value_heads == 2
    tokens = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))
    ours = layout_logits(ckpt, tokens, "1x1", 1, tmp_path)[(1, 1)]
    with torch.no_grad():
        theirs = model(tokens).logits.float()
    assert (ours - theirs).abs().max().item() < 1e-4

    prompt = [5, 17, 42, 7, 99, 3]
    with torch.no_grad():
        hf_new = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False)[0, 6:].tolist()
    args = ["generate", "--load", str(ckpt), "--tokenizer-type", "NullTokenizer", "--prompt",
            " ".join(map(str, prompt)), "--max-new-tokens", "12", "--ids", "--device", "cpu"]
    for extra in ([], ["--tensor-model-parallel-size", "2"]):
        out = run_cli(*args, *extra)
        assert [int(x) for x in out.split()] == hf_new, (extra, out, hf_new)
