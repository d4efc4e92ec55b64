"""Progress lines on stderr (documents, a rate, ETA) for preprocess's companions: merge and tokenizer train."""

from __future__ import annotations

import re

from megatron_llm.data.merge import main as merge_main
from megatron_llm.data.tokenizer_cli import main as tokenizer_main
from test_data_corpora import kjv_texts, write_jsonl
from test_data_preprocess import _run


def test_merge_prints_documents_tokens_per_s_and_eta(tmp_path, capsys):
    prefixes = []
    for i in range(3):
        corpus = write_jsonl(str(tmp_path / f"in{i}.jsonl"), kjv_texts()[i * 200:(i + 1) * 200])
        _run([corpus], tmp_path / f"s{i}", tokenizer_type="ByteTokenizer", append_eod=True)
        prefixes.append(str(tmp_path / f"s{i}_text_document"))
    capsys.readouterr()
    assert merge_main(["--input", *prefixes, "--output-prefix", str(tmp_path / "m"), "--log-interval", "200"]) == 0
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("merge: Processed")]
    assert [int(re.search(r"Processed ([\d,]+) documents", ln).group(1).replace(",", "")) for ln in lines] == \
        [200, 400, 600]  # one line per interval crossed, the last at the total
    assert all(re.search(r"[\d,]+ tokens/s, ETA [\d,]+ s\)", ln) for ln in lines)
    assert merge_main(["--input", *prefixes, "--output-prefix", str(tmp_path / "q"), "--quiet"]) == 0
    assert "Processed" not in capsys.readouterr().err


def test_tokenizer_train_prints_reading_progress(tmp_path, capsys):
    corpus = write_jsonl(str(tmp_path / "kjv.jsonl"), kjv_texts()[:3000])
    assert tokenizer_main(["train", "--input", corpus, "--output-prefix", str(tmp_path / "t"), "--vocab-size", "400",
                           "--log-interval", "1000", "--num-threads", "1"]) == 0
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("tokenizer train: reading: Processed")]
    assert lines and all(re.search(r"sentences/s, ETA [\d,]+ s\)", ln) for ln in lines)
    assert "read 3,000 documents, 3,000 sentences" in err
