"""`megatron-llm preprocess` end to end on real corpora: round trip through megatron-core's IndexedDataset, byte
identity with megatron-core's builder, every input format, several keys, workers/partitions, streaming memory."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
import torch
import zstandard
from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

from megatron_llm.data.preprocess import PreprocessConfig, run_preprocess
from megatron_llm.data.preprocess_cli import main as cli_main
from megatron_llm.data.tokenizers import build_tokenizer
from test_data_corpora import (kjv_path, kjv_texts, mistral_sp_model, peoples_daily_sentences, sanguo_chapters,
                               write_jsonl)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(inputs, prefix, **kw):
    kw.setdefault("tokenizer_type", "SentencePieceTokenizer")
    if kw["tokenizer_type"] == "SentencePieceTokenizer":
        kw.setdefault("tokenizer_model", mistral_sp_model())
    kw.setdefault("workers", 0)
    kw.setdefault("quiet", True)
    return run_preprocess(PreprocessConfig(inputs=list(inputs), output_prefix=str(prefix), **kw))


def _read_all(prefix):
    ds = IndexedDataset(str(prefix))
    return [ds[i].copy() for i in range(len(ds))]  # copies: the views die with ds's mmap


def test_round_trip_english_and_chinese(tmp_path):
    """Tokenise real English + Chinese text, read back through megatron-core, detokenise: equal after the
    tokenizer's own normalisation (Chinese characters outside the vocabulary go through byte fallback)."""
    texts = list(kjv_texts()[:3000]) + list(peoples_daily_sentences()[:1500]) + list(sanguo_chapters()[:5])
    path = write_jsonl(str(tmp_path / "mixed.jsonl"), texts)
    summary = _run([path], tmp_path / "out", append_eod=True)
    assert summary.documents == len(texts) and summary.problems.total == 0
    tok = build_tokenizer("SentencePieceTokenizer", mistral_sp_model())
    docs = _read_all(tmp_path / "out_text_document")
    assert len(docs) == len(texts)
    for text, ids in zip(texts, docs):
        assert ids.dtype == np.uint16 and int(ids[-1]) == tok.eod
        assert tok.detokenize(ids[:-1].tolist()) == tok.normalize(text)
    assert summary.tokens == sum(len(d) for d in docs)


def test_byte_identical_to_megatron_core_builder_on_real_corpus(tmp_path):
    """Reference built independently: sentencepiece's own encoder + megatron-core's IndexedDatasetBuilder, the way
    Megatron-LM's preprocess_data.py does it (--append-eod, one key)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=mistral_sp_model())
    ref = str(tmp_path / "ref")
    b = IndexedDatasetBuilder(ref + ".bin", dtype=np.uint16)
    for text in kjv_texts():
        ids = sp.encode_as_ids(text) + [sp.eos_id()]
        b.add_document(torch.tensor(ids), [len(ids)])
    b.finalize(ref + ".idx")
    _run([kjv_path()], tmp_path / "ours", append_eod=True, workers=2)
    for ext in (".bin", ".idx"):
        with open(ref + ext, "rb") as f1, open(str(tmp_path / "ours_text_document") + ext, "rb") as f2:
            assert f1.read() == f2.read(), ext


def test_worker_counts_and_partitions_give_identical_output(tmp_path):
    texts = kjv_texts()[:6000]
    files = [write_jsonl(str(tmp_path / f"in{i}.jsonl"), texts[i * 1500:(i + 1) * 1500]) for i in range(4)]
    outs = {}
    for name, kw in {"w0": dict(workers=0), "w2": dict(workers=2), "p2": dict(workers=2, partitions=2)}.items():
        s = _run(files, tmp_path / name, append_eod=True, chunk_bytes=64 << 10, **kw)
        assert s.documents == 6000
        outs[name] = [open(str(tmp_path / f"{name}_text_document{e}"), "rb").read() for e in (".bin", ".idx")]
    assert outs["w0"] == outs["w2"] == outs["p2"]
    assert not [n for n in os.listdir(tmp_path) if "tmp" in n]  # partition shards cleaned up


def test_every_json_key_is_finalised(tmp_path):
    path = str(tmp_path / "two.jsonl")
    with open(path, "w") as f:
        for i, t in enumerate(kjv_texts()[:500]):
            f.write(json.dumps({"text": t, "title": f"Verse {i}"}) + "\n")
    s = _run([path], tmp_path / "o", json_keys=["text", "title"], tokenizer_type="ByteTokenizer")
    assert sorted(s.outputs) == [str(tmp_path / "o_text_document"), str(tmp_path / "o_title_document")]
    assert bytes(_read_all(tmp_path / "o_title_document")[7].tolist()) == b"Verse 7"
    assert bytes(_read_all(tmp_path / "o_text_document")[0].tolist()).decode() == kjv_texts()[0]


def test_all_input_formats_give_the_same_documents(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = list(kjv_texts()[:400]) + list(peoples_daily_sentences()[:100])
    raw = "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts).encode()
    d = tmp_path / "in"
    d.mkdir()
    (d / "a.jsonl").write_bytes(raw)
    (d / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(raw))
    (d / "c.jsonl.gz").write_bytes(gzip.compress(raw))
    pq.write_table(pa.table({"text": texts, "id": list(range(len(texts)))}), str(d / "d.parquet"),
                   row_group_size=128)
    (d / "e.txt").write_text("\n".join(texts), encoding="utf-8")  # per-line mode
    expected = [t.encode() for t in texts]
    for name in ("a.jsonl", "b.jsonl.zst", "c.jsonl.gz", "d.parquet"):
        s = _run([str(d / name)], tmp_path / name, tokenizer_type="ByteTokenizer")
        got = [bytes(x.tolist()) for x in _read_all(tmp_path / f"{name}_text_document")]
        assert got == expected, name
        assert s.problems.total == 0
    _run([str(d / "e.txt")], tmp_path / "lines", tokenizer_type="ByteTokenizer", txt_mode="line")
    assert [bytes(x.tolist()) for x in _read_all(tmp_path / "lines_text_document")] == expected
    # a directory and a glob: all five files in sorted order; .txt as one document per file
    s = _run([str(d)], tmp_path / "dir", tokenizer_type="ByteTokenizer")
    assert s.documents == 4 * len(texts) + 1
    whole = _read_all(tmp_path / "dir_text_document")
    assert bytes(whole[-1].tolist()).decode() == "\n".join(texts)
    s = _run([str(d / "*.jsonl*")], tmp_path / "glob", tokenizer_type="ByteTokenizer")
    assert s.documents == 3 * len(texts)


# ----------------------------------------------------------------------------------------------------------------
# bad input: counted by kind with file:line, good documents kept, non-zero exit only with --strict
# ----------------------------------------------------------------------------------------------------------------

GOOD = ["In the beginning God created the heaven and the earth.", "And the earth was without form, and void."]


def _cli(tmp_path, inputs, *extra):
    argv = ["--input", *inputs, "--output-prefix", str(tmp_path / "out"), "--tokenizer-type", "ByteTokenizer",
            "--no-progress-bar", "--quiet", *extra]
    return cli_main(argv)


def _kept(tmp_path):
    return [bytes(x.tolist()).decode() for x in _read_all(tmp_path / "out_text_document")]


BAD_LINES = {
    "malformed_json": b'{"text": "unterminated\n',
    "invalid_utf8": b'{"text": "caf\xe9"}\n',
    "missing_key": b'{"body": "no text key here"}\n',
    "non_string_value": b'{"text": 42}\n',
    "empty_document": b'{"text": ""}\n',
    "not_a_json_object": b'["a", "list"]\n',
}


@pytest.mark.parametrize("kind", sorted(BAD_LINES))
def test_bad_line_is_counted_located_and_skipped(tmp_path, kind, capsys):
    path = tmp_path / "in.jsonl"
    path.write_bytes(json.dumps({"text": GOOD[0]}).encode() + b"\n" + BAD_LINES[kind]
                     + json.dumps({"text": GOOD[1]}).encode() + b"\n")
    assert _cli(tmp_path, [str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{kind}" in out and f"{path}:2" in out
    assert _kept(tmp_path) == GOOD
    assert _cli(tmp_path, [str(path)], "--strict") == 1
    assert _kept(tmp_path) == GOOD  # outputs are still written under --strict


def test_lone_surrogate_escape_counts_as_invalid_utf8(tmp_path, capsys):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "bad \\ud800 half"}\n')
    assert _cli(tmp_path, [str(path)]) == 0
    assert f"invalid_utf8" in capsys.readouterr().out and _kept(tmp_path) == ["ok"]


def test_truncated_zst_keeps_complete_lines(tmp_path, capsys):
    texts = list(kjv_texts()[:5000])
    raw = "".join(json.dumps({"text": t}) + "\n" for t in texts).encode()
    blob = zstandard.ZstdCompressor().compress(raw)
    path = tmp_path / "cut.jsonl.zst"
    path.write_bytes(blob[: len(blob) // 2])
    assert _cli(tmp_path, [str(path)]) == 0
    out = capsys.readouterr().out
    assert "truncated_input" in out and str(path) in out
    kept = _kept(tmp_path)
    assert 0 < len(kept) < len(texts) and kept == texts[: len(kept)]
    assert _cli(tmp_path, [str(path)], "--strict") == 1


def test_unreadable_file_is_counted_and_others_kept(tmp_path, capsys):
    good = write_jsonl(str(tmp_path / "a.jsonl"), GOOD)
    bad = tmp_path / "b.jsonl"
    bad.write_text('{"text": "secret"}\n')
    os.chmod(bad, 0)
    if os.access(bad, os.R_OK):  # running as root: make it unreadable another way (a dangling symlink)
        bad.unlink()
        os.symlink(str(tmp_path / "missing-target"), bad)
    assert _cli(tmp_path, [good, str(bad)]) == 0
    out = capsys.readouterr().out
    assert "unreadable_file" in out and str(bad) in out
    assert _kept(tmp_path) == GOOD
    assert _cli(tmp_path, [good, str(bad)], "--strict") == 1


def test_bad_arguments_fail_before_writing(tmp_path, capsys):
    assert _cli(tmp_path, [str(tmp_path / "nothing*.jsonl")]) == 2
    assert "no such file, directory, or matching glob" in capsys.readouterr().err
    argv = ["--input", kjv_path(), "--output-prefix", str(tmp_path / "o"), "--tokenizer-type",
            "SentencePieceTokenizer", "--tokenizer-model", str(tmp_path / "none.model")]
    assert cli_main(argv) == 2
    assert "--tokenizer-model" in capsys.readouterr().err and not list(tmp_path.glob("o*"))


def test_interrupted_run_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    import megatron_llm.data.preprocess as pp

    real = pp.iter_chunks

    def chunks_then_interrupt(*a, **k):
        for i, ch in enumerate(real(*a, **k)):
            if i == 2:
                raise KeyboardInterrupt
            yield ch

    monkeypatch.setattr(pp, "iter_chunks", chunks_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        _run([kjv_path()], tmp_path / "o", workers=1, chunk_bytes=256 << 10)
    assert os.listdir(tmp_path) == []


def test_killed_process_leaves_no_final_names(tmp_path):
    """SIGKILL mid-run (nothing can clean up): only temporary names may exist."""
    big = tmp_path / "big.jsonl"
    with open(big, "wb") as f:
        for _ in range(6):
            f.write(open(kjv_path(), "rb").read())
    cmd = [sys.executable, os.path.join(REPO, "tools", "preprocess_data.py"), "--input", str(big),
           "--output-prefix", str(tmp_path / "o"), "--tokenizer-type", "ByteTokenizer", "--workers", "1",
           "--no-progress-bar", "--log-interval", "1000"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    proc.stderr.readline()  # first progress line: the writers are open and data is flowing
    proc.kill()
    proc.wait()
    names = os.listdir(tmp_path)
    assert not {"o_text_document.bin", "o_text_document.idx"} & set(names)


def test_peak_memory_does_not_grow_with_corpus_size(tmp_path):
    one = tmp_path / "x1.jsonl"
    shutil.copy(kjv_path(), one)
    four = tmp_path / "x4.jsonl"
    with open(four, "wb") as f:
        for _ in range(4):
            f.write(open(kjv_path(), "rb").read())
    peaks = []
    for path in (one, four):
        tracemalloc.start()
        _run([str(path)], tmp_path / path.stem, tokenizer_type="ByteTokenizer", chunk_bytes=256 << 10)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    # 4x the corpus (27 MB): Python + numpy peak within 25% of the 1x run (bounded by chunk size, not corpus)
    assert peaks[1] < 1.25 * peaks[0], peaks


def test_null_tokenizer_pretokenised_ids(tmp_path):
    path = write_jsonl(str(tmp_path / "ids.jsonl"), ["5 6 7", "1 2", "100000", "3 x"])
    s = _run([path], tmp_path / "o", tokenizer_type="NullTokenizer", vocab_size=100000, append_eod=True)
    docs = _read_all(tmp_path / "o_text_document")
    assert [d.tolist() for d in docs] == [[5, 6, 7, 99999], [1, 2, 99999]]
    assert docs[0].dtype == np.int32 and s.problems.counts == {"tokenizer_error": 2}  # out of range; not an id


def test_tools_script_runs_without_megatron_core_import(tmp_path):
    """The Megatron-LM-style script works and never imports torch/megatron-core (DESIGN.md section 7)."""
    code = ("import sys, runpy; sys.argv=['preprocess_data.py','--input',%r,'--output-prefix',%r,"
            "'--tokenizer-type','SentencePieceTokenizer','--tokenizer-model',%r,'--append-eod','--workers','1',"
            "'--quiet'];\ntry: runpy.run_path(%r, run_name='__main__')\nexcept SystemExit as e: assert e.code == 0\n"
            "assert 'torch' not in sys.modules and 'megatron.core' not in sys.modules, 'heavy import'\n"
            % (kjv_path(), str(tmp_path / "o"), mistral_sp_model(), os.path.join(REPO, "tools", "preprocess_data.py")))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "documents 31,103" in r.stdout
