"""Continued pretraining of a converted model: `train --recipe OUT/recipe.yaml` (data flags only) starts from the
HF weights, with the HF tokenizer shipped beside them, and its first-iteration loss is the HF model's loss on that
batch. Every document is the same real-text verse of exactly --seq-length tokens, so every sample (whatever the
shuffle) is that verse followed by its first token. The target is interleaved (PP2 x 2 virtual stages) and the
vocabulary (500) is padded (to 512): the loss is exact only if the chunks load in order and padded logits are
masked."""

from __future__ import annotations

import json

import pytest
import torch

from hf_reference import kjv_text, run_cli
from trainrun import losses

transformers = pytest.importorskip("transformers")

VOCAB = 500  # not a multiple of 128: padded


def _tokenizer(d, text: str):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator([text], trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|endoftext|>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    d.mkdir(parents=True, exist_ok=True)
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    return tok


def test_first_iteration_loss_equals_hf(tmp_path):
    hf_dir = tmp_path / "hf"
    tok = _tokenizer(hf_dir, kjv_text(0, 400))
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   tie_word_embeddings=False, eos_token_id=tok.token_to_id("<|endoftext|>"))
    model = transformers.LlamaForCausalLM(cfg).eval()
    model.save_pretrained(hf_dir)
    run_cli("convert", "--from", "hf", "--to", "megatron", str(hf_dir), str(tmp_path / "mg"),
            "--pipeline-model-parallel-size", "2", "--num-layers-per-virtual-pipeline-stage", "1")

    eod = tok.token_to_id("<|endoftext|>")
    # the first verse from 500 on that is 12..48 tokens long (with the eod that preprocess --append-eod adds)
    verse, ids = next((v, tok.encode(v).ids + [eod]) for v in (kjv_text(i, 1) for i in range(500, 600))
                      if 12 <= len(tok.encode(v).ids) + 1 <= 48)
    seq = len(ids)
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps({"text": verse}) + "\n" for _ in range(64)))
    prefix = tmp_path / "data" / "verse"
    run_cli("preprocess", "--input", str(tmp_path / "corpus.jsonl"), "--output-prefix", str(prefix),
            "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", str(tmp_path / "mg" / "tokenizer"),
            "--append-eod", "--workers", "0", "--quiet")
    out = run_cli("train", "--recipe", str(tmp_path / "mg" / "recipe.yaml"), "--device", "cpu", "--nproc-per-node", "2",
            "--data-path", f"{prefix}_text_document", "--split", "100,0,0", "--seq-length", str(seq),
            "--micro-batch-size", "2", "--global-batch-size", "4", "--train-iters", "1", "--eval-interval", "0",
            "--tensorboard-dir", str(tmp_path / "tb"))
    assert f"loaded checkpoint {tmp_path / 'mg'}" in out, out[-2000:]
    got = losses(tmp_path)[1]

    tokens = torch.tensor([ids])
    labels = torch.tensor([ids[1:] + ids[:1]])  # the next document starts with the same token
    with torch.no_grad():
        logits = model(tokens).logits.float()
    expected = torch.nn.functional.cross_entropy(logits.view(-1, VOCAB), labels.view(-1)).item()
    print(f"first-iteration loss {got:.7f}, HF {expected:.7f}")
    assert abs(got - expected) < 1e-5 * expected, (got, expected)
