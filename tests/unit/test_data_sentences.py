"""--split-sentences: the built-in English+Chinese splitter, and Megatron-LM's per-sentence sequence layout."""

from __future__ import annotations

import numpy as np
from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

from megatron_llm.data.preprocess_cli import main as cli_main
from megatron_llm.data.sentences import build_splitter, builtin_split
from megatron_llm.data.tokenizers import build_tokenizer
from test_data_corpora import kjv_texts, mistral_sp_model, peoples_daily_sentences, write_jsonl
from test_data_preprocess import _run


def test_builtin_splitter_english():
    text = ("Mr. Smith went to Washington.  He met Dr. Brown, e.g. at noon! Did J. R. R. Tolkien come? "
            "\"Yes.\" It was 3.5 miles away.\nThe end")
    assert builtin_split(text) == ["Mr. Smith went to Washington.", "He met Dr. Brown, e.g. at noon!",
                                   "Did J. R. R. Tolkien come?", "\"Yes.\"", "It was 3.5 miles away.", "The end"]
    assert builtin_split("One. two stays. Three.\nFour.", keep_newlines=True) == [
        "One. two stays.", "Three.\n", "Four."]
    assert builtin_split("   ") == [] and builtin_split("no end") == ["no end"]


def test_builtin_splitter_chinese_and_mixed():
    assert builtin_split("今天天气很好。我们去公园吧！你去吗？“好的。”他说……然后走了") == [
        "今天天气很好。", "我们去公园吧！", "你去吗？", "“好的。”", "他说……", "然后走了"]
    assert builtin_split("中文句子。English follows. 再来一句!好") == [
        "中文句子。", "English follows.", "再来一句!", "好"]
    # a real People's Daily paragraph: every piece ends with a sentence ender except possibly the last
    para = next(p for p in peoples_daily_sentences() if p.count("。") >= 3)
    parts = builtin_split(para)
    assert "".join(parts) == para.replace(" ", "") or "".join(parts) == "".join(para.split())
    assert len(parts) >= 3 and all(p[-1] in "。！？”’」』）》" for p in parts[:-1])


def test_split_sentences_layout_matches_megatron_core_builder(tmp_path, capsys):
    docs = [" ".join(kjv_texts()[i:i + 4]) for i in range(0, 400, 4)] + list(peoples_daily_sentences()[:100])
    docs.append("")  # an empty document: counted, not written
    corpus = write_jsonl(str(tmp_path / "in.jsonl"), docs)
    split, which = build_splitter()
    tok = build_tokenizer("SentencePieceTokenizer", mistral_sp_model())
    sp = tok.processor
    ref = str(tmp_path / "ref")
    b = IndexedDatasetBuilder(ref + ".bin", dtype=np.uint16)
    for d in docs:  # Megatron-LM's Encoder.encode with split sentences, written out by hand
        ids, lens = [], []
        for s in split(d):
            s_ids = sp.encode_as_ids(s)
            if s_ids:
                ids.extend(s_ids)
                lens.append(len(s_ids))
        if ids:
            ids.append(sp.eos_id())
            lens[-1] += 1
            b.add_document(ids, lens)
    b.finalize(ref + ".idx")
    assert cli_main(["--input", corpus, "--output-prefix", str(tmp_path / "ours"), "--tokenizer-type",
                     "SentencePieceTokenizer", "--tokenizer-model", mistral_sp_model(), "--append-eod",
                     "--split-sentences", "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert f"split by {which}" in out
    for ext in (".bin", ".idx"):
        assert open(ref + ext, "rb").read() == open(str(tmp_path / "ours_text_document") + ext, "rb").read(), ext
    ds = IndexedDataset(str(tmp_path / "ours_text_document"))
    assert len(ds.document_indices) - 1 == len(docs) - 1 and len(ds.sequence_lengths) > 2 * len(docs)
    # partitions of one file: the same bytes
    _run([corpus], tmp_path / "p2", append_eod=True, split_sentences=True, workers=2, partitions=2,
         chunk_bytes=16 << 10)
    for ext in (".bin", ".idx"):
        assert open(ref + ext, "rb").read() == open(str(tmp_path / "p2_text_document") + ext, "rb").read(), ext
