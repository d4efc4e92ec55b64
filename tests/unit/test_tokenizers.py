"""build_tokenizer: every type, its errors, agreement with megatron-core's SentencePiece wrapper, and the exactness
of the per-word cache against SentencePiece's own encoder on real text and on adversarial strings."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from megatron_llm.data.tokenizers import (ByteTokenizer, NullTokenizer, TokenizerError, build_tokenizer,
                                          token_dtype)
from test_data_corpora import kjv_texts, mistral_sp_model, peoples_daily_sentences, sanguo_chapters


def test_sentencepiece_matches_megatron_core_wrapper():
    from megatron.core.tokenizers.text.libraries.sentencepiece_tokenizer import SentencePieceTokenizer as Core

    ours = build_tokenizer("SentencePieceTokenizer", mistral_sp_model())
    core = Core(mistral_sp_model())
    texts = list(kjv_texts()[:3000]) + list(peoples_daily_sentences()[:300])
    assert ours.tokenize_batch(texts) == [core.text_to_ids(t) for t in texts]
    assert (ours.vocab_size, ours.eod) == (core.vocab_size, core.eod) == (32000, 2)
    assert ours.detokenize(ours.tokenize(texts[0])) == core.ids_to_text(core.text_to_ids(texts[0]))


ADVERSARIAL = ["", " ", "a", " leading", "trailing ", "double  space", "tab\there", "new\nline", "ctrl\x01char",
               "x" * 5000, "digits 1234567890 3.14159", "mixed 中文 and English", "emoji 😀 ok", "a  b  c ",
               "   ", "\u00a0nbsp", "café", "end.", "(paren) [brack] {brace}", "tokens▁with▁marker"]


def test_word_cache_is_exact_on_real_and_adversarial_text():
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=mistral_sp_model())
    tok = build_tokenizer("SentencePieceTokenizer", mistral_sp_model())
    assert tok._fast_ok  # the cache path is actually exercised for this model
    texts = list(kjv_texts()) + ADVERSARIAL + list(sanguo_chapters()[:2])
    got = []
    for i in range(0, len(texts), 997):  # several batches: cache hits and misses
        got += tok.tokenize_batch(texts[i:i + 997])
    assert got == [sp.encode_as_ids(t) for t in texts]


def test_word_cache_is_exact_for_a_normalising_model(tmp_path):
    """A model with NFKC and whitespace removal (not the identity normaliser): the probe must still keep it exact."""
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(sentence_iterator=iter(kjv_texts()[:5000]), model_prefix=str(tmp_path / "n"),
                                   vocab_size=800, model_type="bpe", normalization_rule_name="nmt_nfkc",
                                   minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "n.model"))
    tok = build_tokenizer("SentencePieceTokenizer", str(tmp_path / "n.model"))
    texts = list(kjv_texts()[5000:8000]) + ADVERSARIAL + ["ｆｕｌｌｗｉｄｔｈ text", "ﬁ ligature"]
    assert tok.tokenize_batch(texts) == [sp.encode_as_ids(t) for t in texts]


def _train_hf_tokenizer(path: str) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers

    t = Tokenizer(models.BPE(unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator(kjv_texts()[:5000], trainers.BpeTrainer(vocab_size=1000,
                          special_tokens=["<unk>", "<|endoftext|>"], show_progress=False))
    t.save(path)


def test_huggingface_tokenizer_json_file_and_directory(tmp_path):
    d = tmp_path / "hf"
    d.mkdir()
    _train_hf_tokenizer(str(d / "tokenizer.json"))
    for arg in (str(d / "tokenizer.json"), str(d)):
        tok = build_tokenizer("HuggingFaceTokenizer", arg)
        assert tok.eod == 1 and tok.vocab_size == 1000
        text = kjv_texts()[100]
        assert tok.detokenize(tok.tokenize(text)) == text
        assert tok.tokenize_batch([text, "x"]) == [tok.tokenize(text), tok.tokenize("x")]
    (d / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": "<unk>"}}))
    assert build_tokenizer("HuggingFaceTokenizer", str(d)).eod == 0  # eos_token from the config wins


def test_null_and_byte_tokenizers():
    null = build_tokenizer("NullTokenizer", vocab_size=1000)
    assert isinstance(null, NullTokenizer) and (null.vocab_size, null.eod) == (1000, 999)
    assert null.tokenize("3 1  4\n1") == [3, 1, 4, 1] and null.detokenize([3, 1]) == "3 1"
    with pytest.raises(ValueError, match="outside"):
        null.tokenize("1000")
    byte = build_tokenizer("ByteTokenizer")
    assert isinstance(byte, ByteTokenizer) and byte.eod == 256
    assert byte.tokenize("é") == [0xC3, 0xA9] and byte.detokenize(byte.tokenize("中文")) == "中文"


def test_token_dtype_from_vocab_size():
    assert token_dtype(32000) is np.uint16 and token_dtype(65535) is np.uint16
    assert token_dtype(65536) is np.int32 and token_dtype(151936) is np.int32


def test_errors_name_the_argument_and_file(tmp_path):
    with pytest.raises(TokenizerError, match="--tokenizer-type 'GPT2' is not supported"):
        build_tokenizer("GPT2", "x")
    with pytest.raises(TokenizerError, match="needs --tokenizer-model"):
        build_tokenizer("SentencePieceTokenizer")
    with pytest.raises(TokenizerError, match="--tokenizer-model .*missing.model: no such file"):
        build_tokenizer("SentencePieceTokenizer", str(tmp_path / "missing.model"))
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(TokenizerError, match="bad.model: not a valid SentencePiece model"):
        build_tokenizer("SentencePieceTokenizer", str(bad))
    with pytest.raises(TokenizerError, match="is a directory"):
        build_tokenizer("SentencePieceTokenizer", str(tmp_path))
    with pytest.raises(TokenizerError, match="no tokenizer.json there"):
        build_tokenizer("HuggingFaceTokenizer", str(tmp_path))
    (tmp_path / "tokenizer.json").write_text("{broken")
    with pytest.raises(TokenizerError, match="not a valid HuggingFace tokenizer.json"):
        build_tokenizer("HuggingFaceTokenizer", str(tmp_path))
    with pytest.raises(TokenizerError, match="needs --vocab-size"):
        build_tokenizer("NullTokenizer")
