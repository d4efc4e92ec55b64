"""data/input_checks.py: the torch-free file checks that submit runs on a login node."""

from __future__ import annotations

import numpy as np
import pytest

from megatron_llm.config.arguments import ConfigError, build_config
from megatron_llm.data.indexed_writer import IndexedWriter
from megatron_llm.data.input_checks import check_input_files, split_bounds


@pytest.mark.parametrize("split", ["969,30,1", "99,1,0", "100,0,0", "1,1,1", "0.9,0.1", "80", "0,100,0"])
def test_split_bounds_are_megatron_cores(split):
    from megatron.core.datasets.blended_megatron_dataset_config import (convert_split_vector_to_split_matrix,
                                                                         parse_and_normalize_split)

    expected = convert_split_vector_to_split_matrix(parse_and_normalize_split(split))
    ours = split_bounds(split)
    assert [p is None for p in ours] == [p is None for p in expected]
    for a, b in zip(ours, expected):
        if a is not None:
            assert a == pytest.approx(b, abs=1e-12)


def test_bad_split_names_the_flag():
    with pytest.raises(ConfigError, match="--split"):
        split_bounds("0,0,0")


def _dataset(tmp_path, docs: int) -> str:
    prefix = str(tmp_path / "c_text_document")
    lengths = np.full(docs, 40)
    with IndexedWriter(prefix, np.uint16) as w:
        w.add_documents(np.arange(int(lengths.sum())).astype(np.uint16) % 500, lengths)
    return prefix


def test_check_input_files(tmp_path):
    prefix = _dataset(tmp_path, 20)
    base = {"data_path": [prefix], "seq_length": 32, "max_position_embeddings": 32, "micro_batch_size": 1,
            "tokenizer_type": "NullTokenizer", "vocab_size": 512, "train_iters": 5, "eval_iters": 1}
    check_input_files(build_config(base), world_size=1)
    with pytest.raises(ConfigError, match="valid split .* gets no documents"):
        check_input_files(build_config({**base, "split": "99,1,0"}), world_size=1)  # 1% of 20 docs: none
    with pytest.raises(ConfigError, match="--data-path: .*missing"):
        check_input_files(build_config({**base, "data_path": [prefix + "_nope"]}), world_size=1)
    with pytest.raises(ConfigError, match="--tokenizer-model"):
        check_input_files(build_config({**base, "tokenizer_type": "SentencePieceTokenizer",
                                        "tokenizer_model": str(tmp_path / "none.model")}), world_size=1)
    with pytest.raises(ConfigError, match="--load"):
        check_input_files(build_config({**base, "load": str(tmp_path / "nodir")}), world_size=1)
