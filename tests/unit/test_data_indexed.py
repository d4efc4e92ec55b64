"""Our .bin/.idx writer vs megatron-core's IndexedDatasetBuilder/IndexedDataset, the load-time checker, merging."""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest
import torch
from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

from megatron_llm.data.indexed_check import verify_indexed_dataset
from megatron_llm.data.indexed_writer import IndexedWriter
from megatron_llm.data.merge import find_prefixes, main as merge_main, merge_datasets


def _docs(seed: int, n: int, vocab: int):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, size=int(rng.integers(1, 300))) for _ in range(n)]


def _core_build(prefix: str, docs, dtype) -> None:
    b = IndexedDatasetBuilder(prefix + ".bin", dtype=dtype)
    for d in docs:
        b.add_document(torch.tensor(d), [len(d)])
    b.finalize(prefix + ".idx")


def _ours(prefix: str, docs, dtype, batches: int = 3) -> None:
    with IndexedWriter(prefix, dtype) as w:
        for part in np.array_split(np.arange(len(docs)), batches):  # several add calls, as the pipeline does
            sel = [docs[i] for i in part]
            w.add_documents(np.concatenate(sel) if sel else np.zeros(0), np.array([len(d) for d in sel]))


def _bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@pytest.mark.parametrize("dtype,vocab", [(np.uint16, 32000), (np.int32, 150000)])
def test_byte_identical_to_megatron_core_builder(tmp_path, dtype, vocab):
    docs = _docs(1, 500, vocab)
    _core_build(str(tmp_path / "core"), docs, dtype)
    _ours(str(tmp_path / "ours"), docs, dtype)
    for ext in (".bin", ".idx"):
        assert _bytes(str(tmp_path / ("ours" + ext))) == _bytes(str(tmp_path / ("core" + ext)))
    ds = IndexedDataset(str(tmp_path / "ours"))
    assert len(ds) == len(docs)
    for i in (0, 17, len(docs) - 1):
        np.testing.assert_array_equal(ds[i], docs[i].astype(dtype))
    assert verify_indexed_dataset(str(tmp_path / "ours")).sequence_count == len(docs)


def test_empty_dataset_matches_core(tmp_path):
    _core_build(str(tmp_path / "core"), [], np.uint16)
    with IndexedWriter(str(tmp_path / "ours"), np.uint16):
        pass
    for ext in (".bin", ".idx"):
        assert _bytes(str(tmp_path / ("ours" + ext))) == _bytes(str(tmp_path / ("core" + ext)))


def test_exception_leaves_no_output_and_no_temporaries(tmp_path):
    prefix = str(tmp_path / "x")
    with pytest.raises(RuntimeError):
        with IndexedWriter(prefix, np.uint16) as w:
            w.add_documents(np.arange(10), np.array([4, 6]))
            raise RuntimeError("interrupted")
    assert os.listdir(tmp_path) == []


def test_temporaries_never_carry_final_names(tmp_path):
    prefix = str(tmp_path / "x")
    w = IndexedWriter(prefix, np.uint16)
    w.add_documents(np.arange(10), np.array([4, 6]))
    names = os.listdir(tmp_path)  # mid-run (e.g. process killed now): nothing named x.bin / x.idx
    assert names and not any(n in ("x.bin", "x.idx") for n in names)
    w.abort()


def test_rewrite_removes_old_idx_before_new_bin(tmp_path, monkeypatch):
    prefix = str(tmp_path / "x")
    _ours(prefix, _docs(2, 20, 100), np.uint16)
    # crash between moving the new .bin into place and the new .idx: the old .idx must already be gone
    real_replace = os.replace

    def replace(src, dst):
        if dst.endswith(".idx"):
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        _ours(prefix, _docs(3, 50, 100), np.uint16)
    assert not os.path.exists(prefix + ".idx")


# ----------------------------------------------------------------------------------------------------------------
# refusing mismatched pairs
# ----------------------------------------------------------------------------------------------------------------

@pytest.fixture
def good(tmp_path):
    prefix = str(tmp_path / "good")
    _ours(prefix, _docs(4, 100, 32000), np.uint16)
    return prefix


def _patch(path: str, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_truncated_bin_is_refused(good):
    os.truncate(good + ".bin", os.path.getsize(good + ".bin") - 2)
    with pytest.raises(ValueError, match=r"good\.bin.*truncated.*re-run `megatron-llm preprocess`"):
        verify_indexed_dataset(good)


def test_truncated_idx_is_refused(good):
    os.truncate(good + ".idx", os.path.getsize(good + ".idx") - 8)
    with pytest.raises(ValueError, match=r"good\.idx.*truncated"):
        verify_indexed_dataset(good)
    os.truncate(good + ".idx", 20)
    with pytest.raises(ValueError, match=r"good\.idx.*truncated"):
        verify_indexed_dataset(good)


def test_wrong_dtype_is_refused(good):
    _patch(good + ".idx", 17, struct.pack("<B", 4))  # header says int32, data was written as uint16
    with pytest.raises(ValueError, match=r"good\.idx.*another dtype"):
        verify_indexed_dataset(good)


def test_wrong_version_is_refused(good):
    _patch(good + ".idx", 9, struct.pack("<Q", 2))
    with pytest.raises(ValueError, match=r"good\.idx.*version 2"):
        verify_indexed_dataset(good)


def test_bad_magic_and_missing_files_are_refused(good, tmp_path):
    _patch(good + ".idx", 0, b"NOTANIDX!")
    with pytest.raises(ValueError, match="not a megatron-core index file"):
        verify_indexed_dataset(good)
    with pytest.raises(ValueError, match=r"nothere\.idx: index file missing"):
        verify_indexed_dataset(str(tmp_path / "nothere"))


def test_pair_from_different_runs_is_refused(good, tmp_path):
    other = str(tmp_path / "other")
    _ours(other, _docs(5, 100, 32000), np.uint16)
    os.replace(other + ".bin", good + ".bin")
    with pytest.raises(ValueError, match=r"good\.bin.*different runs"):
        verify_indexed_dataset(good)


def test_vocabulary_too_large_for_dtype_is_refused(good):
    verify_indexed_dataset(good, vocab_size=32000)
    with pytest.raises(ValueError, match="cannot hold ids of a 100000-token vocabulary"):
        verify_indexed_dataset(good, vocab_size=100000)


# ----------------------------------------------------------------------------------------------------------------
# merging
# ----------------------------------------------------------------------------------------------------------------

def test_merge_is_byte_identical_to_core_add_index(tmp_path):
    shards = [str(tmp_path / "shards" / f"s{i}") for i in range(3)]
    os.makedirs(tmp_path / "shards")
    all_docs = []
    for i, s in enumerate(shards):
        docs = _docs(10 + i, 50 + 10 * i, 32000)
        all_docs += docs
        _ours(s, docs, np.uint16)
    core = IndexedDatasetBuilder(str(tmp_path / "core.bin"), dtype=np.uint16)
    for s in shards:
        core.add_index(s)
    core.finalize(str(tmp_path / "core.idx"))
    assert merge_main(["--input", str(tmp_path / "shards"), "--output-prefix", str(tmp_path / "merged")]) == 0
    for ext in (".bin", ".idx"):
        assert _bytes(str(tmp_path / ("merged" + ext))) == _bytes(str(tmp_path / ("core" + ext)))
    ds = IndexedDataset(str(tmp_path / "merged"))
    assert len(ds) == len(all_docs)
    np.testing.assert_array_equal(ds[len(all_docs) - 1], all_docs[-1])


def test_merge_refuses_mixed_dtypes_and_damaged_inputs(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    _ours(a, _docs(1, 10, 100), np.uint16)
    _ours(b, _docs(2, 10, 100), np.int32)
    with pytest.raises(ValueError, match="different token dtypes"):
        merge_datasets([a, b], str(tmp_path / "m"))
    os.truncate(a + ".bin", 3)
    with pytest.raises(ValueError, match=r"a\.bin.*truncated"):
        merge_datasets([a], str(tmp_path / "m"))
    assert not os.path.exists(str(tmp_path / "m.idx"))
    with pytest.raises(ValueError, match="no .*nope.idx"):
        find_prefixes([str(tmp_path / "nope")])
