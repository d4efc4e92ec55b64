"""--partitions N on ONE big file: cut at line boundaries, processed in parallel, merged in document order."""

from __future__ import annotations

import os

from megatron_llm.data.corpus import expand_inputs, split_file
from test_data_corpora import kjv_texts, peoples_daily_sentences, write_jsonl
from test_data_preprocess import _run


def test_split_file_ranges_are_whole_lines_in_order(tmp_path):
    path = write_jsonl(str(tmp_path / "big.jsonl"), list(kjv_texts()[:3000]) + list(peoples_daily_sentences()[:500]))
    data = open(path, "rb").read()
    (inp,) = expand_inputs([path])
    parts = split_file(inp, 4)
    assert len(parts) == 4
    assert parts[0].start == 0 and parts[-1].end == len(data)
    for a, b in zip(parts, parts[1:]):
        assert a.end == b.start and data[b.start - 1:b.start] == b"\n"  # contiguous, each starts a line
    for p in parts:
        assert p.size == p.end - p.start and abs(p.size - len(data) / 4) < 2000  # about equal (lines < 2 kB)
        assert p.first_line == data[:p.start].count(b"\n") + 1
    assert split_file(inp, 1) == [inp]


def test_one_file_in_partitions_is_byte_identical_to_single_process(tmp_path, capsys):
    texts = list(kjv_texts()[:4000]) + list(peoples_daily_sentences()[:1500])
    path = write_jsonl(str(tmp_path / "big.jsonl"), texts)
    with open(path, "ab") as f:  # a bad line late in the file: its reported line number must survive the cut
        f.write(b'{"text": "unterminated\n')
        f.write(b'{"text": "last"}\n')
    outs, problems = {}, {}
    for name, kw in {"single": dict(workers=0), "p3": dict(workers=3, partitions=3)}.items():
        s = _run([path], tmp_path / name, append_eod=True, chunk_bytes=64 << 10, **kw)
        assert s.documents == len(texts) + 1
        problems[name] = s.problems.examples
        outs[name] = [open(str(tmp_path / f"{name}_text_document{e}"), "rb").read() for e in (".bin", ".idx")]
    assert outs["single"] == outs["p3"]
    assert problems["p3"] == problems["single"] == {"malformed_json": [(f"{path}:{len(texts) + 1}",
                                                                          problems["single"]["malformed_json"][0][1])]}
    assert not [n for n in os.listdir(tmp_path) if "tmp" in n]  # shards removed
